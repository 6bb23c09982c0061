package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Request is what an L4 proxy knows about a connection when it authorizes it.
type Request struct {
	// SrcPrincipal is the peer's verified SPIFFE ID, "spiffe://td/ns/x/sa/y" (the Istio form
	// "td/ns/x/sa/y" is accepted too); empty when the source is plaintext (unauthenticated).
	SrcPrincipal string
	// SrcNamespace is the source's namespace, empty when unknown. As in Istio, the namespace of a
	// source is what its certificate says: it is ignored when SrcPrincipal is empty, and when
	// SrcPrincipal has the workload shape .../ns/<ns>/sa/<sa> the namespace it names wins.
	SrcNamespace string
	// DstNamespace and DstLabels describe the destination workload; they decide which policies
	// apply.
	DstNamespace string
	DstLabels    map[string]string
	// DstPort is the destination workload's port (after Service port → targetPort translation).
	DstPort uint16
}

// Decision is the outcome of Evaluate.
type Decision struct {
	// Allowed reports whether the connection may proceed.
	Allowed bool
	// Policy is "namespace/name" of the policy that decided: the DENY policy that matched or the
	// ALLOW policy that matched. It is empty for the two defaults: allow because no ALLOW policy
	// applies, and deny because ALLOW policies apply but none matched (Reason lists them).
	Policy string
	// Reason says why, for logs and `ameshctl policy check`.
	Reason string
}

// Evaluate decides req against policies with Istio's semantics (see the package doc). rootNS is the
// mesh-wide namespace, DefaultRootNamespace when empty. Policies are examined in order, so among
// several matching policies the first one is reported.
//
// Evaluate expects policies that pass Validate. For safety a policy with an action other than ALLOW
// or DENY is treated as DENY (fail closed), and an empty Source or Operation matches everything,
// as the rule it sits in would without it.
func Evaluate(policies []Policy, req Request, rootNS string) Decision {
	src := peer{principal: normalizePrincipal(req.SrcPrincipal)}
	if src.principal != "" {
		src.namespace = principalNamespace(src.principal)
		if src.namespace == "" {
			src.namespace = req.SrcNamespace
		}
	}

	allows := 0
	for i := range policies {
		p := &policies[i]
		if !p.AppliesTo(req.DstNamespace, req.DstLabels, rootNS) {
			continue
		}
		if p.Action == Allow || p.Action == "" {
			allows++
			continue
		}
		if r, ok := p.match(src, req.DstPort); ok {
			return Decision{Policy: p.Key(), Reason: fmt.Sprintf("denied by DENY policy %s (rule %d)", p.Key(), r)}
		}
	}
	if allows == 0 {
		return Decision{Allowed: true, Reason: "no ALLOW policy applies"}
	}
	names := make([]string, 0, allows)
	for i := range policies {
		p := &policies[i]
		if (p.Action != Allow && p.Action != "") || !p.AppliesTo(req.DstNamespace, req.DstLabels, rootNS) {
			continue
		}
		if r, ok := p.match(src, req.DstPort); ok {
			return Decision{Allowed: true, Policy: p.Key(), Reason: fmt.Sprintf("allowed by ALLOW policy %s (rule %d)", p.Key(), r)}
		}
		names = append(names, p.Key())
	}
	return Decision{Reason: "no ALLOW policy matched (applicable: " + strings.Join(names, ", ") + ")"}
}

// peer is the source side of a request, normalized: principal in Istio form, namespace empty when
// unknown.
type peer struct {
	principal string
	namespace string
}

// match returns the index of the first rule of p that matches.
func (p *Policy) match(src peer, port uint16) (int, bool) {
	for i := range p.Rules {
		if p.Rules[i].matches(src, port) {
			return i, true
		}
	}
	return 0, false
}

func (r *Rule) matches(src peer, port uint16) bool {
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
	if len(r.To) == 0 {
		return true
	}
	for i := range r.To {
		if r.To[i].matches(port) {
			return true
		}
	}
	return false
}

// matches ANDs the fields of s that are set. An unknown principal or namespace (plaintext source)
// matches no entry of a list, so it fails Principals/Namespaces and passes NotPrincipals/
// NotNamespaces. This is what Istio does: notPrincipals compiles to an Envoy RBAC notId around an
// mTLS-authenticated principal match, and the inner match is false without a peer certificate.
// Hence "DENY notNamespaces: [foo]" also denies plaintext, which is the usual intent; to require
// mTLS in an ALLOW policy, use principals: ["*"].
func (s *Source) matches(src peer) bool {
	if len(s.Principals) > 0 && !anyPrincipal(s.Principals, src.principal) {
		return false
	}
	if len(s.NotPrincipals) > 0 && anyPrincipal(s.NotPrincipals, src.principal) {
		return false
	}
	if len(s.Namespaces) > 0 && !anyPattern(s.Namespaces, src.namespace) {
		return false
	}
	if len(s.NotNamespaces) > 0 && anyPattern(s.NotNamespaces, src.namespace) {
		return false
	}
	return true
}

func (o *Operation) matches(port uint16) bool {
	if len(o.Ports) > 0 && !slices.Contains(o.Ports, port) {
		return false
	}
	if len(o.NotPorts) > 0 && slices.Contains(o.NotPorts, port) {
		return false
	}
	return true
}

func anyPrincipal(patterns []string, principal string) bool {
	for _, p := range patterns {
		if matchPattern(normalizePrincipal(p), principal) {
			return true
		}
	}
	return false
}

func anyPattern(patterns []string, value string) bool {
	for _, p := range patterns {
		if matchPattern(p, value) {
			return true
		}
	}
	return false
}

// matchPattern matches value against an exact, "*", "prefix*" or "*suffix" pattern, as Istio's
// string matches do. An empty value is unknown and matches nothing, not even "*".
func matchPattern(pattern, value string) bool {
	switch {
	case value == "" || pattern == "":
		return false
	case pattern == "*":
		return true
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(value, pattern[1:])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(value, pattern[:len(pattern)-1])
	default:
		return value == pattern
	}
}

const spiffeScheme = "spiffe://"

// normalizePrincipal returns the Istio form of a principal or principal pattern: without the
// spiffe:// scheme.
func normalizePrincipal(s string) string { return strings.TrimPrefix(s, spiffeScheme) }

// principalNamespace returns the namespace an Istio-form principal td/ns/<ns>/sa/<sa> names, or "".
func principalNamespace(principal string) string {
	segs := strings.Split(principal, "/")
	if len(segs) != 5 || segs[1] != "ns" || segs[3] != "sa" {
		return ""
	}
	return segs[2]
}
