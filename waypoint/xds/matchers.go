package xds

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// This file turns Istio's string patterns into Envoy RBAC matchers, and holds the boolean
// algebra the rules are built with.

// patternKind is the shape of an Istio string pattern.
type patternKind int

const (
	exactPattern  patternKind = iota
	anyPattern                // "*"
	prefixPattern             // "abc*"
	suffixPattern             // "*abc"
)

// parsePattern splits an exact, "*", "prefix*" or "*suffix" pattern, as policy.Validate accepts.
func parsePattern(p string) (patternKind, string, error) {
	switch n := strings.Count(p, "*"); {
	case p == "":
		return 0, "", errors.New("empty pattern")
	case p == "*":
		return anyPattern, "", nil
	case n == 0:
		return exactPattern, p, nil
	case n == 1 && strings.HasSuffix(p, "*"):
		return prefixPattern, strings.TrimSuffix(p, "*"), nil
	case n == 1 && strings.HasPrefix(p, "*"):
		return suffixPattern, strings.TrimPrefix(p, "*"), nil
	default:
		return 0, "", fmt.Errorf("pattern %q: '*' may appear once, only at the start or the end", p)
	}
}

const spiffeScheme = "spiffe://"

// The characters of a SPIFFE ID after its scheme; "," could never be part of one, which the
// guard relies on.
var (
	principalChars = regexp.MustCompile(`^[A-Za-z0-9._/-]*$`)
	namespaceChars = regexp.MustCompile(`^[a-z0-9-]*$`)
)

// peer matches the caller's SPIFFE ID as connect_terminate carried it.
func peer(m *matcherv3.StringMatcher) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{
		Key:     PeerPrincipalKey,
		Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: m},
	}}}
}

func regexMatcher(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// guard denies a request unless its carried identity is exactly one SPIFFE ID: absent (no
// peer certificate reached main_internal) or a list of URI SANs ("a,b") both fail the match.
func guard() *rbacconfigv3.Policy {
	return &rbacconfigv3.Policy{
		Permissions: []*rbacconfigv3.Permission{anyPermission()},
		Principals:  []*rbacconfigv3.Principal{notID(peer(regexMatcher(`spiffe://[^/,]+(/[^,]*)?`)))},
	}
}

// principalMatch matches the caller against a principal pattern, in Istio form
// ("td/ns/x/sa/y") or SPIFFE form, exactly as policy.Evaluate does: on the ID without its scheme.
func principalMatch(p string) (*rbacconfigv3.Principal, error) {
	kind, v, err := parsePattern(strings.TrimPrefix(p, spiffeScheme))
	if err != nil {
		return nil, err
	}
	if !principalChars.MatchString(v) {
		return nil, fmt.Errorf("principal %q has characters a SPIFFE ID cannot hold", p)
	}
	switch kind {
	case anyPattern:
		return peer(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: spiffeScheme}}), nil
	case prefixPattern:
		return peer(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: spiffeScheme + v}}), nil
	case suffixPattern:
		return peer(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v}}), nil
	default:
		return peer(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: spiffeScheme + v}}), nil
	}
}

// namespaceMatch matches the namespace the caller's ID names (td/ns/<ns>/sa/<sa>); an ID of
// another shape has no namespace and matches no pattern, as in policy.Evaluate.
func namespaceMatch(p string) (*rbacconfigv3.Principal, error) {
	kind, v, err := parsePattern(p)
	if err != nil {
		return nil, err
	}
	if !namespaceChars.MatchString(v) {
		return nil, fmt.Errorf("namespace %q has characters a namespace cannot hold", p)
	}
	var ns string
	switch kind {
	case anyPattern:
		ns = `[^/]+`
	case prefixPattern:
		ns = regexp.QuoteMeta(v) + `[^/]*`
	case suffixPattern:
		ns = `[^/]*` + regexp.QuoteMeta(v)
	default:
		ns = regexp.QuoteMeta(v)
	}
	// RE2, matched against the whole value.
	return peer(regexMatcher(`spiffe://[^/]+/ns/` + ns + `/sa/[^/]+`)), nil
}

// stringMatch is a pattern as an Envoy string matcher; nil for "*".
func stringMatch(p string, ignoreCase bool) (*matcherv3.StringMatcher, error) {
	kind, v, err := parsePattern(p)
	if err != nil {
		return nil, err
	}
	m := &matcherv3.StringMatcher{IgnoreCase: ignoreCase}
	switch kind {
	case anyPattern:
		return nil, nil
	case prefixPattern:
		m.MatchPattern = &matcherv3.StringMatcher_Prefix{Prefix: v}
	case suffixPattern:
		m.MatchPattern = &matcherv3.StringMatcher_Suffix{Suffix: v}
	default:
		m.MatchPattern = &matcherv3.StringMatcher_Exact{Exact: v}
	}
	return m, nil
}

// headerMatch matches a request header against a pattern; "*" means present.
func headerMatch(name, p string, ignoreCase bool) (*rbacconfigv3.Permission, error) {
	m, err := stringMatch(p, ignoreCase)
	if err != nil {
		return nil, err
	}
	h := &routev3.HeaderMatcher{Name: name}
	if m == nil {
		h.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
	} else {
		h.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: m}
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{Header: h}}, nil
}

// hostMatch matches the request's host (":authority" in Envoy, for HTTP/1.1 too), ignoring case.
func hostMatch(p string) (*rbacconfigv3.Permission, error) { return headerMatch(":authority", p, true) }

var methodToken = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// methodMatch matches the request method exactly.
func methodMatch(p string) (*rbacconfigv3.Permission, error) {
	if !methodToken.MatchString(p) || strings.Contains(p, "*") {
		return nil, fmt.Errorf("%q is not an HTTP method", p)
	}
	return headerMatch(":method", p, false)
}

// pathMatch matches the request path without its query (url_path), after the HCM normalized it.
func pathMatch(p string) (*rbacconfigv3.Permission, error) {
	m, err := stringMatch(p, false)
	if err != nil {
		return nil, err
	}
	if m == nil {
		return anyPermission(), nil
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
		Rule: &matcherv3.PathMatcher_Path{Path: m},
	}}}, nil
}

func anyOfIDs(patterns []string, match func(string) (*rbacconfigv3.Principal, error)) (*rbacconfigv3.Principal, error) {
	var alts []*rbacconfigv3.Principal
	for _, p := range patterns {
		id, err := match(p)
		if err != nil {
			return nil, err
		}
		alts = append(alts, id)
	}
	return orIDs(alts), nil
}

func anyOfPerms(patterns []string, match func(string) (*rbacconfigv3.Permission, error)) (*rbacconfigv3.Permission, error) {
	var alts []*rbacconfigv3.Permission
	for _, p := range patterns {
		perm, err := match(p)
		if err != nil {
			return nil, err
		}
		alts = append(alts, perm)
	}
	return orPerms(alts), nil
}

// The boolean algebra of RBAC matchers, simplified where one side is constant so that the
// generated config says what it means.

func anyPermission() *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}
}

func anyPrincipal() *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Any{Any: true}}
}

func neverPermission() *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_NotRule{NotRule: anyPermission()}}
}

func neverPrincipal() *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_NotId{NotId: anyPrincipal()}}
}

func isAnyPerm(p *rbacconfigv3.Permission) bool { return p.GetAny() }

func isNeverPerm(p *rbacconfigv3.Permission) bool { return p.GetNotRule().GetAny() }

func isAnyID(p *rbacconfigv3.Principal) bool { return p.GetAny() }

func isNeverID(p *rbacconfigv3.Principal) bool { return p.GetNotId().GetAny() }

func andPerms(in []*rbacconfigv3.Permission) *rbacconfigv3.Permission {
	var out []*rbacconfigv3.Permission
	for _, p := range in {
		if isNeverPerm(p) {
			return neverPermission()
		}
		if !isAnyPerm(p) {
			out = append(out, p)
		}
	}
	switch len(out) {
	case 0:
		return anyPermission()
	case 1:
		return out[0]
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{Rules: out}}}
}

func orPerms(in []*rbacconfigv3.Permission) *rbacconfigv3.Permission {
	var out []*rbacconfigv3.Permission
	for _, p := range in {
		if isAnyPerm(p) {
			return anyPermission()
		}
		if !isNeverPerm(p) {
			out = append(out, p)
		}
	}
	switch len(out) {
	case 0:
		return neverPermission()
	case 1:
		return out[0]
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_OrRules{OrRules: &rbacconfigv3.Permission_Set{Rules: out}}}
}

func notPerm(p *rbacconfigv3.Permission) *rbacconfigv3.Permission {
	switch {
	case isAnyPerm(p):
		return neverPermission()
	case isNeverPerm(p):
		return anyPermission()
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_NotRule{NotRule: p}}
}

func andIDs(in []*rbacconfigv3.Principal) *rbacconfigv3.Principal {
	var out []*rbacconfigv3.Principal
	for _, p := range in {
		if isNeverID(p) {
			return neverPrincipal()
		}
		if !isAnyID(p) {
			out = append(out, p)
		}
	}
	switch len(out) {
	case 0:
		return anyPrincipal()
	case 1:
		return out[0]
	}
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_AndIds{AndIds: &rbacconfigv3.Principal_Set{Ids: out}}}
}

func orIDs(in []*rbacconfigv3.Principal) *rbacconfigv3.Principal {
	var out []*rbacconfigv3.Principal
	for _, p := range in {
		if isAnyID(p) {
			return anyPrincipal()
		}
		if !isNeverID(p) {
			out = append(out, p)
		}
	}
	switch len(out) {
	case 0:
		return neverPrincipal()
	case 1:
		return out[0]
	}
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_OrIds{OrIds: &rbacconfigv3.Principal_Set{Ids: out}}}
}

func notID(p *rbacconfigv3.Principal) *rbacconfigv3.Principal {
	switch {
	case isAnyID(p):
		return neverPrincipal()
	case isNeverID(p):
		return anyPrincipal()
	}
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_NotId{NotId: p}}
}
