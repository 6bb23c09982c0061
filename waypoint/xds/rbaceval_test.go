package xds

import (
	"regexp"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// This file interprets the subset of Envoy's RBAC the translation generates, as Envoy
// evaluates it, so that tests can ask the generated config for decisions instead of comparing
// its shape only. It fails the test on any matcher outside that subset.

// request is what main_internal's RBAC sees of a request.
type request struct {
	// principal is the PeerPrincipalKey filter state; noPrincipal means the object is absent.
	principal          string
	noPrincipal        bool
	method, path, host string
	headers            map[string]string
}

// rbacFilter is one RBAC filter of a chain, in order.
type rbacFilter struct {
	name  string
	rules *rbacconfigv3.RBAC
}

// chainFilters returns the RBAC filters of main_internal's chain name.
func chainFilters(t *testing.T, tr *Translation, name string) []rbacFilter {
	t.Helper()
	var mi *listenerv3.Listener
	for _, l := range tr.Listeners {
		if l.Name == MainInternal {
			mi = l
		}
	}
	if mi == nil {
		t.Fatalf("no %s listener", MainInternal)
	}
	for _, fc := range mi.FilterChains {
		if fc.Name != name {
			continue
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if err := fc.Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
		var out []rbacFilter
		for _, f := range hcm.HttpFilters {
			r := &rbachttpv3.RBAC{}
			if f.GetTypedConfig().MessageIs(r) {
				if err := f.GetTypedConfig().UnmarshalTo(r); err != nil {
					t.Fatal(err)
				}
				out = append(out, rbacFilter{name: f.Name, rules: r.Rules})
			}
		}
		return out
	}
	t.Fatalf("no chain %s in %s", name, MainInternal)
	return nil
}

// allowed runs q through filters as Envoy's HTTP RBAC filters would, and names the filter that
// denied it.
func allowed(t *testing.T, filters []rbacFilter, q request) (bool, string) {
	t.Helper()
	for _, f := range filters {
		matched := false
		for _, p := range f.rules.Policies {
			if policyMatches(t, p, q) {
				matched = true
				break
			}
		}
		switch f.rules.Action {
		case rbacconfigv3.RBAC_DENY:
			if matched {
				return false, f.name
			}
		case rbacconfigv3.RBAC_ALLOW:
			if !matched {
				return false, f.name
			}
		default:
			t.Fatalf("filter %s: action %v", f.name, f.rules.Action)
		}
	}
	return true, ""
}

func policyMatches(t *testing.T, p *rbacconfigv3.Policy, q request) bool {
	perm := false
	for _, x := range p.Permissions {
		perm = perm || permMatches(t, x, q)
	}
	id := false
	for _, x := range p.Principals {
		id = id || idMatches(t, x, q)
	}
	return perm && id
}

func permMatches(t *testing.T, p *rbacconfigv3.Permission, q request) bool {
	switch r := p.Rule.(type) {
	case *rbacconfigv3.Permission_Any:
		return r.Any
	case *rbacconfigv3.Permission_AndRules:
		for _, x := range r.AndRules.Rules {
			if !permMatches(t, x, q) {
				return false
			}
		}
		return true
	case *rbacconfigv3.Permission_OrRules:
		for _, x := range r.OrRules.Rules {
			if permMatches(t, x, q) {
				return true
			}
		}
		return false
	case *rbacconfigv3.Permission_NotRule:
		return !permMatches(t, r.NotRule, q)
	case *rbacconfigv3.Permission_Header:
		return headerMatches(t, r.Header, q)
	case *rbacconfigv3.Permission_UrlPath:
		path, _, _ := strings.Cut(q.path, "?")
		return stringMatches(t, r.UrlPath.GetPath(), path)
	}
	t.Fatalf("permission %v is outside the interpreted subset", p)
	return false
}

func headerMatches(t *testing.T, h *routev3.HeaderMatcher, q request) bool {
	var v string
	var ok bool
	switch h.Name {
	case ":method":
		v, ok = q.method, q.method != ""
	case ":authority":
		v, ok = q.host, q.host != ""
	case ":path":
		v, ok = q.path, q.path != ""
	default:
		v, ok = q.headers[h.Name]
	}
	if h.InvertMatch || h.TreatMissingHeaderAsEmpty {
		t.Fatalf("header matcher %v is outside the interpreted subset", h)
	}
	switch m := h.HeaderMatchSpecifier.(type) {
	case *routev3.HeaderMatcher_PresentMatch:
		return ok == m.PresentMatch
	case *routev3.HeaderMatcher_StringMatch:
		return ok && stringMatches(t, m.StringMatch, v)
	}
	t.Fatalf("header matcher %v is outside the interpreted subset", h)
	return false
}

func idMatches(t *testing.T, p *rbacconfigv3.Principal, q request) bool {
	switch r := p.Identifier.(type) {
	case *rbacconfigv3.Principal_Any:
		return r.Any
	case *rbacconfigv3.Principal_AndIds:
		for _, x := range r.AndIds.Ids {
			if !idMatches(t, x, q) {
				return false
			}
		}
		return true
	case *rbacconfigv3.Principal_OrIds:
		for _, x := range r.OrIds.Ids {
			if idMatches(t, x, q) {
				return true
			}
		}
		return false
	case *rbacconfigv3.Principal_NotId:
		return !idMatches(t, r.NotId, q)
	case *rbacconfigv3.Principal_FilterState:
		if r.FilterState.Key != PeerPrincipalKey {
			t.Fatalf("filter state key %q", r.FilterState.Key)
		}
		if q.noPrincipal {
			return false // absent object: Envoy's matcher does not match
		}
		return stringMatches(t, r.FilterState.GetStringMatch(), q.principal)
	}
	t.Fatalf("principal %v is outside the interpreted subset", p)
	return false
}

func stringMatches(t *testing.T, m *matcherv3.StringMatcher, v string) bool {
	if m == nil {
		t.Fatal("nil string matcher")
	}
	s := v
	fold := func(x string) string {
		if m.IgnoreCase {
			return strings.ToLower(x)
		}
		return x
	}
	switch p := m.MatchPattern.(type) {
	case *matcherv3.StringMatcher_Exact:
		return fold(s) == fold(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(fold(s), fold(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(fold(s), fold(p.Suffix))
	case *matcherv3.StringMatcher_SafeRegex:
		// Envoy's safe_regex string matcher matches the whole value (RE2).
		return regexp.MustCompile(`^(?:` + p.SafeRegex.Regex + `)$`).MatchString(s)
	}
	t.Fatalf("string matcher %v is outside the interpreted subset", m)
	return false
}
