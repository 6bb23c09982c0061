package file

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// convert turns the decoded file into a workload.Spec, checking the syntax of the values it
// converts, section by section in the file's order.
func convert(doc *fileDoc, p *workload.Problems) workload.Spec {
	spec := workload.Spec{TrustDomain: trustDomain(doc.TrustDomain, p), RootNamespace: doc.RootNamespace}
	spec.Nodes = convertNodes(doc.Nodes, p)
	spec.Workloads = convertWorkloads(doc.Workloads, p)
	spec.Services = convertServices(doc.Services, p)
	spec.Policies = convertPolicies(doc.Policies, p)
	spec.Routes = convertRoutes(doc.Routes, p)
	return spec
}

func trustDomain(s string, p *workload.Problems) spiffeid.TrustDomain {
	if s == "" {
		return spiffeid.TrustDomain{}
	}
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		p.Addf(workload.SectionTop, 0, "trustDomain", "trustDomain", "%q is not a SPIFFE trust domain: %w", s, err)
	}
	return td
}

// addr parses the address s (of kind "ip", "vip") at path in item i of section; the invalid
// address when s is empty.
func addr(p *workload.Problems, section string, i int, path, what, kind, s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		p.Addf(section, i, path, what, "%s %q is not an IP address", kind, s)
	}
	return a
}

func convertNodes(in []nodeYAML, p *workload.Problems) []workload.Node {
	var out []workload.Node
	for i, n := range in {
		what := "node " + n.Name
		if n.IP == "" {
			p.Add(workload.SectionNodes, i, "ip", what, errors.New("ip is not set"))
		}
		out = append(out, workload.Node{Name: n.Name, IP: addr(p, workload.SectionNodes, i, "ip", what, "ip", n.IP)})
	}
	return out
}

func convertWorkloads(in []workloadYAML, p *workload.Problems) []workload.Workload {
	var out []workload.Workload
	for i, w := range in {
		what := "workload " + w.Namespace + "/" + w.Name
		wl := workload.Workload{
			UID: w.UID, Name: w.Name, WorkloadName: w.WorkloadName, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
			Node: w.Node, Netns: w.Netns, Labels: w.Labels, Waypoint: w.Waypoint,
			AllowWaypointBypass: w.AllowBypass,
		}
		for k, s := range w.IPs {
			wl.IPs = append(wl.IPs, addr(p, workload.SectionWorkloads, i, fmt.Sprintf("ips[%d]", k), what, "ip", s))
		}
		for k, v := range w.ProbePorts {
			if v < 1 || v > 65535 {
				p.Addf(workload.SectionWorkloads, i, fmt.Sprintf("probePorts[%d]", k), what, "probe port %d is out of range 1..65535", v)
				continue
			}
			wl.ProbePorts = append(wl.ProbePorts, uint16(v))
		}
		switch strings.ToLower(w.Mode) {
		case "", "ambient":
			wl.Mode = workload.ModeAmbient
		case "none":
			wl.Mode = workload.ModeNone
		default:
			p.Addf(workload.SectionWorkloads, i, "mode", what, "mode %q is not ambient or none", w.Mode)
		}
		switch strings.ToLower(w.InboundMode) {
		case "", "strict":
			wl.InboundMode = workload.InboundStrict
		case "permissive":
			wl.InboundMode = workload.InboundPermissive
		default:
			p.Addf(workload.SectionWorkloads, i, "inboundMode", what, "inboundMode %q is not strict or permissive", w.InboundMode)
		}
		out = append(out, wl)
	}
	return out
}

func convertServices(in []serviceYAML, p *workload.Problems) []workload.Service {
	var out []workload.Service
	for i, s := range in {
		what := "service " + s.Namespace + "/" + s.Name
		svc := workload.Service{Name: s.Name, Namespace: s.Namespace, Selector: s.Selector, Waypoint: s.Waypoint}
		if s.WaypointFor != "" {
			t, ok := workload.ParseWaypointTraffic(s.WaypointFor)
			if !ok {
				p.Addf(workload.SectionServices, i, "waypointFor", what, "waypointFor %q is not service, workload, all or none", s.WaypointFor)
			}
			svc.WaypointFor = t
		}
		for k, v := range s.VIPs {
			svc.VIPs = append(svc.VIPs, addr(p, workload.SectionServices, i, fmt.Sprintf("vips[%d]", k), what, "vip", v))
		}
		for k, sp := range s.Ports {
			port := func(field string, v int) uint16 {
				if v < 0 || v > 65535 {
					p.Addf(workload.SectionServices, i, fmt.Sprintf("ports[%d].%s", k, field), what, "%s %d is out of range 1..65535", field, v)
					return 0
				}
				return uint16(v)
			}
			svc.Ports = append(svc.Ports, workload.ServicePort{Port: port("port", sp.Port), TargetPort: port("targetPort", sp.TargetPort)})
		}
		out = append(out, svc)
	}
	return out
}

func convertPolicies(in []policyYAML, p *workload.Problems) []policy.Policy {
	var out []policy.Policy
	for i, pol := range in {
		what := "policy " + pol.Namespace + "/" + pol.Name
		np := policy.Policy{Name: pol.Name, Namespace: pol.Namespace, Selector: pol.Selector, Action: policy.Action(pol.Action)}
		for _, ref := range pol.TargetRefs {
			np.TargetRefs = append(np.TargetRefs, policy.TargetRef{Group: ref.Group, Kind: ref.Kind, Name: ref.Name})
		}
		if pol.Rules != nil {
			np.Rules = make([]policy.Rule, 0, len(pol.Rules))
		}
		for r, rule := range pol.Rules {
			var nr policy.Rule
			for _, from := range rule.From {
				s := from.Source
				nr.From = append(nr.From, policy.Source{
					Principals: s.Principals, NotPrincipals: s.NotPrincipals,
					Namespaces: s.Namespaces, NotNamespaces: s.NotNamespaces,
				})
			}
			for t, to := range rule.To {
				o := to.Operation
				nr.To = append(nr.To, policy.Operation{
					Ports:    operationPorts(p, i, r, t, what, "ports", o.Ports),
					NotPorts: operationPorts(p, i, r, t, what, "notPorts", o.NotPorts),
					Hosts:    o.Hosts, NotHosts: o.NotHosts, Methods: o.Methods, NotMethods: o.NotMethods,
					Paths: o.Paths, NotPaths: o.NotPaths,
				})
			}
			for _, c := range rule.When {
				nr.When = append(nr.When, policy.Condition{Key: c.Key, Values: c.Values, NotValues: c.NotValues})
			}
			np.Rules = append(np.Rules, nr)
		}
		out = append(out, np)
	}
	return out
}

// operationPorts parses field ("ports", "notPorts") of the operation of to[t] in rule r of policy
// i.
func operationPorts(p *workload.Problems, i, r, t int, what, field string, in []string) []uint16 {
	var out []uint16
	for k, s := range in {
		v, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			p.Addf(workload.SectionPolicies, i, fmt.Sprintf("rules[%d].to[%d].operation.%s[%d]", r, t, field, k), what,
				"port %q is not a number in 1..65535", s)
		}
		out = append(out, uint16(v))
	}
	return out
}

// convertRoutes converts the routes: the subset of HTTPRoute amesh implements, anything else
// refused at its field.
func convertRoutes(in []routeYAML, p *workload.Problems) []workload.Route {
	var out []workload.Route
	port := func(i int, field, what string, v int) uint16 {
		if v < 0 || v > 65535 {
			p.Addf(workload.SectionRoutes, i, field, what, "port %d is out of range 1..65535", v)
			return 0
		}
		return uint16(v)
	}
	for i, r := range in {
		what := "route " + r.Namespace + "/" + r.Name
		wr := workload.Route{Name: r.Name, Namespace: r.Namespace}
		for k, ref := range r.ParentRefs {
			at := fmt.Sprintf("parentRefs[%d]", k)
			if ref.Kind != "Service" || (ref.Group != "" && ref.Group != "core") {
				p.Addf(workload.SectionRoutes, i, at+".kind", what, "parentRef %s %q: only kind Service (Gateway API's GAMMA form) is supported", ref.Kind, ref.Name)
			}
			wr.Parents = append(wr.Parents, workload.RouteParent{Service: ref.Name, Port: port(i, at+".port", what, ref.Port)})
		}
		for k, rule := range r.Rules {
			at := fmt.Sprintf("rules[%d]", k)
			var wrule workload.RouteRule
			if rule.Timeouts.Request != "" {
				d, err := time.ParseDuration(rule.Timeouts.Request)
				if err != nil {
					p.Addf(workload.SectionRoutes, i, at+".timeouts.request", what, "timeout %q is not a duration (e.g. 5s)", rule.Timeouts.Request)
				}
				wrule.Timeout = d
			}
			for m, match := range rule.Matches {
				mat := fmt.Sprintf("%s.matches[%d]", at, m)
				wm := workload.RouteMatch{Method: match.Method}
				if match.Path != nil {
					switch match.Path.Type {
					case "", "PathPrefix":
					case "Exact":
						wm.PathType = workload.PathExact
					default:
						p.Addf(workload.SectionRoutes, i, mat+".path.type", what, "path match type %q is not supported (PathPrefix or Exact)", match.Path.Type)
					}
					wm.Path = match.Path.Value
				}
				for h, hm := range match.Headers {
					if hm.Type != "" && hm.Type != "Exact" {
						p.Addf(workload.SectionRoutes, i, fmt.Sprintf("%s.headers[%d].type", mat, h), what, "header match type %q is not supported (Exact)", hm.Type)
					}
					wm.Headers = append(wm.Headers, workload.HeaderMatch{Name: hm.Name, Value: hm.Value})
				}
				wrule.Matches = append(wrule.Matches, wm)
			}
			for b, be := range rule.BackendRefs {
				bat := fmt.Sprintf("%s.backendRefs[%d]", at, b)
				if (be.Kind != "" && be.Kind != "Service") || (be.Group != "" && be.Group != "core") {
					p.Addf(workload.SectionRoutes, i, bat+".kind", what, "backendRef %s %q: only kind Service is supported", be.Kind, be.Name)
				}
				w := int32(1) // Gateway API's default
				if be.Weight != nil {
					if *be.Weight < 0 || *be.Weight > 1000000 {
						p.Addf(workload.SectionRoutes, i, bat+".weight", what, "weight %d is out of range 0..1000000", *be.Weight)
					}
					w = int32(min(max(*be.Weight, -1), 1000001))
				}
				wrule.Backends = append(wrule.Backends, workload.RouteBackend{Service: be.Name, Port: port(i, bat+".port", what, be.Port), Weight: w})
			}
			wr.Rules = append(wr.Rules, wrule)
		}
		out = append(out, wr)
	}
	return out
}
