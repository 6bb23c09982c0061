// Package policy decides whether an L4 connection is authorized, with the semantics of Istio's
// AuthorizationPolicy restricted to what an L4 proxy can see: the peer's SPIFFE identity (and the
// namespace it names) and the destination port.
//
// Everything here is a pure function of its arguments: no I/O, no clock, no global state. The
// evaluation order is Istio's (https://istio.io/latest/docs/concepts/security/#authorization-policies):
//
//  1. if any applicable DENY policy matches the request, deny;
//  2. if no ALLOW policy applies to the destination workload, allow;
//  3. if any applicable ALLOW policy matches the request, allow;
//  4. deny.
//
// A policy applies to a workload when it lives in the workload's namespace, or in the root namespace
// (mesh-wide), and its selector's labels are a subset of the workload's labels.
//
// A policy with TargetRefs is a waypoint's (Istio's targetRefs): it never applies to a workload
// at L4, may use L7 fields (hosts, methods, paths, when conditions), and is decided per HTTP
// request by EvaluateHTTP in the waypoint it targets (package waypoint), against the original
// caller. L7 fields on any other policy are refused by Validate.
package policy

import (
	"maps"
	"slices"
)

// DefaultRootNamespace is the namespace whose policies apply to every namespace of the mesh when
// the caller passes an empty root namespace.
const DefaultRootNamespace = "amesh-system"

// Action is what a policy does with a request it matches.
type Action string

// The actions amesh enforces at L4. The empty Action is ALLOW, as in Istio, where action may be
// omitted.
const (
	Allow Action = "ALLOW"
	Deny  Action = "DENY"
)

// Policy is an L4 AuthorizationPolicy.
type Policy struct {
	// Name and Namespace name the policy; Namespace also scopes it (see AppliesTo).
	Name      string
	Namespace string
	// Selector selects the destination workloads by label; nil or empty selects every workload of
	// the namespace (of the whole mesh for a root-namespace policy).
	Selector map[string]string
	// Action is ALLOW or DENY; empty means ALLOW.
	Action Action
	// TargetRefs, when set, make the policy a waypoint's: it applies to the traffic of the
	// waypoints it names (Istio's targetRefs), which may use L7 fields, and never to workloads by
	// selector at L4 (AppliesTo is false for it; Selector must then be empty).
	TargetRefs []TargetRef
	// Rules: the policy matches a request if any rule matches. A policy with no rules matches
	// nothing, so an ALLOW policy without rules denies every request to the workloads it selects
	// and a DENY policy without rules has no effect. A rule with neither From nor To matches
	// everything.
	Rules []Rule
}

// TargetRef names what a waypoint policy applies to, as Istio's targetRefs: the waypoint's
// Service (Kind "Service", Group "") or its Gateway (Kind "Gateway", Group
// "gateway.networking.k8s.io"), in the policy's namespace.
type TargetRef struct {
	Group string
	Kind  string
	Name  string
}

// Rule matches a request when From matches, To matches and every When condition holds.
type Rule struct {
	// From matches if any of its sources matches; an empty From matches every source.
	From []Source
	// To matches if any of its operations matches; an empty To matches every operation.
	To []Operation
	// When: conditions, all of which must hold (L7: waypoint policies only).
	When []Condition
}

// Condition is one of Istio's "when" conditions: Key names an attribute
// ("request.headers[<name>]", "source.principal", "source.namespace", "destination.port"), and
// the condition holds when the attribute matches any of Values (if set) and none of NotValues.
// Values use the patterns of Source (exact, "*", "prefix*", "*suffix").
type Condition struct {
	Key       string
	Values    []string
	NotValues []string
}

// Source describes the peer of a connection. Every field that is set must match (AND); within a
// field any entry may match (OR).
//
// Principals are accepted in Istio form ("cluster.local/ns/default/sa/sleep") and in SPIFFE form
// ("spiffe://cluster.local/ns/default/sa/sleep"). A pattern is an exact value, "*" (any
// authenticated peer / any known namespace), "prefix*" or "*suffix"; the same holds for namespaces.
type Source struct {
	Principals    []string
	NotPrincipals []string
	Namespaces    []string
	NotNamespaces []string
}

// Operation describes the destination side of a connection: at L4, only its port. Ports and
// NotPorts are the destination workload's ports (a Service's targetPort), as in Istio.
//
// The L7 fields are for waypoint policies (TargetRefs set) only: Hosts (the request's Host or
// :authority, case-insensitive), Methods (exact, e.g. "GET") and Paths (the request path without
// its query; exact, "prefix*", "*suffix" or "*"), each with its Not form. Every field that is
// set must match (AND); within a field any entry may match (OR).
type Operation struct {
	Ports    []uint16
	NotPorts []uint16

	Hosts      []string
	NotHosts   []string
	Methods    []string
	NotMethods []string
	Paths      []string
	NotPaths   []string
}

// Key returns "namespace/name", the name a Decision reports.
func (p Policy) Key() string { return p.Namespace + "/" + p.Name }

// AppliesTo reports whether p applies to a workload of namespace with the given labels: p lives in
// that namespace or in rootNS (DefaultRootNamespace when empty), and every label of p.Selector is
// among labels.
func (p Policy) AppliesTo(namespace string, labels map[string]string, rootNS string) bool {
	if len(p.TargetRefs) > 0 {
		return false // a waypoint's policy (Targets), never a workload's by selector
	}
	if rootNS == "" {
		rootNS = DefaultRootNamespace
	}
	if p.Namespace != namespace && p.Namespace != rootNS {
		return false
	}
	for k, v := range p.Selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// Applicable returns the policies that apply to a workload of namespace with labels (see
// AppliesTo), in their original order.
func Applicable(policies []Policy, namespace string, labels map[string]string, rootNS string) []Policy {
	var out []Policy
	for _, p := range policies {
		if p.AppliesTo(namespace, labels, rootNS) {
			out = append(out, p)
		}
	}
	return out
}

// Clone returns a deep copy of p, sharing no slice or map with it.
func (p Policy) Clone() Policy {
	c := p
	c.Selector = maps.Clone(p.Selector)
	c.TargetRefs = slices.Clone(p.TargetRefs)
	if p.Rules != nil {
		c.Rules = make([]Rule, len(p.Rules))
		for i, r := range p.Rules {
			c.Rules[i] = r.clone()
		}
	}
	return c
}

func (r Rule) clone() Rule {
	c := Rule{}
	if r.From != nil {
		c.From = make([]Source, len(r.From))
		for i, s := range r.From {
			c.From[i] = Source{
				Principals:    slices.Clone(s.Principals),
				NotPrincipals: slices.Clone(s.NotPrincipals),
				Namespaces:    slices.Clone(s.Namespaces),
				NotNamespaces: slices.Clone(s.NotNamespaces),
			}
		}
	}
	if r.To != nil {
		c.To = make([]Operation, len(r.To))
		for i, o := range r.To {
			c.To[i] = Operation{Ports: slices.Clone(o.Ports), NotPorts: slices.Clone(o.NotPorts),
				Hosts: slices.Clone(o.Hosts), NotHosts: slices.Clone(o.NotHosts),
				Methods: slices.Clone(o.Methods), NotMethods: slices.Clone(o.NotMethods),
				Paths: slices.Clone(o.Paths), NotPaths: slices.Clone(o.NotPaths)}
		}
	}
	if r.When != nil {
		c.When = make([]Condition, len(r.When))
		for i, w := range r.When {
			c.When[i] = Condition{Key: w.Key, Values: slices.Clone(w.Values), NotValues: slices.Clone(w.NotValues)}
		}
	}
	return c
}
