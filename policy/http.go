package policy

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// HTTPRequest is what a waypoint knows about one request when it authorizes it.
type HTTPRequest struct {
	// SrcPrincipal and SrcNamespace are the ORIGINAL caller's, from its certificate, as in
	// Request.
	SrcPrincipal, SrcNamespace string
	// Waypoint is the waypoint deciding: the policies that Target it apply.
	Waypoint struct{ Namespace, Name string }
	// DstPort is the destination port as the caller addressed it (a service port).
	DstPort uint16
	// Host is the request's Host (:authority), with or without a port; Method and Path (no
	// query) are the request's.
	Host, Method, Path string
	Headers            http.Header
}

// Targets reports whether p is a policy of the waypoint namespace/name: it lives in that
// namespace and one of its TargetRefs names the waypoint's Service or Gateway. (Istio's
// targetRefs are namespace-local: a root-namespace policy targets root-namespace waypoints.)
func (p Policy) Targets(namespace, name string) bool {
	if p.Namespace != namespace {
		return false
	}
	for _, r := range p.TargetRefs {
		if r.Name == name && ((r.Kind == "Service" && (r.Group == "" || r.Group == "core")) ||
			(r.Kind == "Gateway" && r.Group == "gateway.networking.k8s.io")) {
			return true
		}
	}
	return false
}

// EvaluateHTTP decides req against the policies that target req.Waypoint, in Istio's order:
// a matching DENY denies; with no ALLOW policy the request is allowed; a matching ALLOW allows;
// else it is denied. Every other policy is ignored. Like Evaluate, an action other than ALLOW
// is treated as DENY (fail closed).
func EvaluateHTTP(policies []Policy, req HTTPRequest, rootNS string) Decision {
	src := peer{principal: normalizePrincipal(req.SrcPrincipal)}
	if src.principal != "" {
		src.namespace = principalNamespace(src.principal)
		if src.namespace == "" {
			src.namespace = req.SrcNamespace
		}
	}
	var allows []*Policy
	for i := range policies {
		p := &policies[i]
		if !p.Targets(req.Waypoint.Namespace, req.Waypoint.Name) {
			continue
		}
		if p.Action == Allow || p.Action == "" {
			allows = append(allows, p)
			continue
		}
		if r, ok := p.matchHTTP(src, &req); ok {
			return Decision{Policy: p.Key(), Reason: fmt.Sprintf("denied by DENY policy %s (rule %d)", p.Key(), r)}
		}
	}
	if len(allows) == 0 {
		return Decision{Allowed: true, Reason: "no ALLOW policy targets the waypoint"}
	}
	names := make([]string, 0, len(allows))
	for _, p := range allows {
		if r, ok := p.matchHTTP(src, &req); ok {
			return Decision{Allowed: true, Policy: p.Key(), Reason: fmt.Sprintf("allowed by ALLOW policy %s (rule %d)", p.Key(), r)}
		}
		names = append(names, p.Key())
	}
	return Decision{Reason: "no ALLOW policy matched (applicable: " + strings.Join(names, ", ") + ")"}
}

func (p *Policy) matchHTTP(src peer, req *HTTPRequest) (int, bool) {
	for i := range p.Rules {
		if p.Rules[i].matchesHTTP(src, req) {
			return i, true
		}
	}
	return 0, false
}

func (r *Rule) matchesHTTP(src peer, req *HTTPRequest) bool {
	from := len(r.From) == 0
	for i := range r.From {
		if r.From[i].matches(src) {
			from = true
			break
		}
	}
	if !from {
		return false
	}
	to := len(r.To) == 0
	for i := range r.To {
		if r.To[i].matchesHTTP(req) {
			to = true
			break
		}
	}
	if !to {
		return false
	}
	for i := range r.When {
		if !r.When[i].holds(src, req) {
			return false
		}
	}
	return true
}

// matchesHTTP ANDs the fields of o that are set; within one, any entry may match.
func (o *Operation) matchesHTTP(req *HTTPRequest) bool {
	if !o.matches(req.DstPort) {
		return false
	}
	host := strings.ToLower(req.Host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	hostMatch := func(patterns []string) bool {
		for _, p := range patterns {
			if matchPattern(strings.ToLower(p), host) {
				return true
			}
		}
		return false
	}
	pathMatch := func(patterns []string) bool {
		for _, p := range patterns {
			if matchPattern(p, req.Path) {
				return true
			}
		}
		return false
	}
	switch {
	case len(o.Hosts) > 0 && !hostMatch(o.Hosts),
		len(o.NotHosts) > 0 && hostMatch(o.NotHosts),
		len(o.Methods) > 0 && !slices.Contains(o.Methods, req.Method),
		len(o.NotMethods) > 0 && slices.Contains(o.NotMethods, req.Method),
		len(o.Paths) > 0 && !pathMatch(o.Paths),
		len(o.NotPaths) > 0 && pathMatch(o.NotPaths):
		return false
	}
	return true
}

// holds reports whether c holds for the request; an unknown key never holds (fail closed for
// ALLOW; Validate refuses such keys).
func (c *Condition) holds(src peer, req *HTTPRequest) bool {
	var values []string
	match := matchPattern
	switch key := c.Key; {
	case strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]"):
		values = req.Headers.Values(key[len("request.headers[") : len(key)-1])
	case key == "source.principal":
		values = []string{src.principal}
		match = func(p, v string) bool { return matchPattern(normalizePrincipal(p), v) }
	case key == "source.namespace":
		values = []string{src.namespace}
	case key == "destination.port":
		values = []string{strconv.Itoa(int(req.DstPort))}
	default:
		return false
	}
	any := func(patterns []string) bool {
		for _, p := range patterns {
			for _, v := range values {
				if match(p, v) {
					return true
				}
			}
		}
		return false
	}
	if len(c.Values) > 0 && !any(c.Values) {
		return false
	}
	return len(c.NotValues) == 0 || !any(c.NotValues)
}
