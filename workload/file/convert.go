package file

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// convert turns the decoded file into a Spec, checking the syntax of the values it converts.
func convert(doc *fileDoc, p *workload.Problems) workload.Spec {
	spec := workload.Spec{RootNamespace: doc.RootNamespace}
	if doc.TrustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(doc.TrustDomain)
		if err != nil {
			p.Addf(workload.SectionTop, 0, "trustDomain", "trustDomain", "%q is not a SPIFFE trust domain: %w", doc.TrustDomain, err)
		}
		spec.TrustDomain = td
	}

	addr := func(section string, i int, path, what, kind, s string) netip.Addr {
		if s == "" {
			return netip.Addr{}
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			p.Addf(section, i, path, what, "%s %q is not an IP address", kind, s)
		}
		return a
	}

	for i, n := range doc.Nodes {
		what := "node " + n.Name
		if n.IP == "" {
			p.Add(workload.SectionNodes, i, "ip", what, errors.New("ip is not set"))
		}
		spec.Nodes = append(spec.Nodes, workload.Node{Name: n.Name, IP: addr(workload.SectionNodes, i, "ip", what, "ip", n.IP)})
	}

	for i, w := range doc.Workloads {
		what := "workload " + w.Namespace + "/" + w.Name
		out := workload.Workload{
			UID: w.UID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
			Node: w.Node, Netns: w.Netns, Labels: w.Labels, Waypoint: w.Waypoint,
		}
		for k, s := range w.IPs {
			out.IPs = append(out.IPs, addr(workload.SectionWorkloads, i, fmt.Sprintf("ips[%d]", k), what, "ip", s))
		}
		for k, v := range w.ProbePorts {
			if v < 1 || v > 65535 {
				p.Addf(workload.SectionWorkloads, i, fmt.Sprintf("probePorts[%d]", k), what, "probe port %d is out of range 1..65535", v)
				continue
			}
			out.ProbePorts = append(out.ProbePorts, uint16(v))
		}
		switch strings.ToLower(w.Mode) {
		case "", "ambient":
			out.Mode = workload.ModeAmbient
		case "none":
			out.Mode = workload.ModeNone
		default:
			p.Addf(workload.SectionWorkloads, i, "mode", what, "mode %q is not ambient or none", w.Mode)
		}
		switch strings.ToLower(w.InboundMode) {
		case "", "strict":
			out.InboundMode = workload.InboundStrict
		case "permissive":
			out.InboundMode = workload.InboundPermissive
		default:
			p.Addf(workload.SectionWorkloads, i, "inboundMode", what, "inboundMode %q is not strict or permissive", w.InboundMode)
		}
		spec.Workloads = append(spec.Workloads, out)
	}

	for i, s := range doc.Services {
		what := "service " + s.Namespace + "/" + s.Name
		out := workload.Service{Name: s.Name, Namespace: s.Namespace, Selector: s.Selector, Waypoint: s.Waypoint}
		for k, v := range s.VIPs {
			out.VIPs = append(out.VIPs, addr(workload.SectionServices, i, fmt.Sprintf("vips[%d]", k), what, "vip", v))
		}
		for k, sp := range s.Ports {
			port := func(field string, v int) uint16 {
				if v < 0 || v > 65535 {
					p.Addf(workload.SectionServices, i, fmt.Sprintf("ports[%d].%s", k, field), what, "%s %d is out of range 1..65535", field, v)
					return 0
				}
				return uint16(v)
			}
			out.Ports = append(out.Ports, workload.ServicePort{Port: port("port", sp.Port), TargetPort: port("targetPort", sp.TargetPort)})
		}
		spec.Services = append(spec.Services, out)
	}

	for i, pol := range doc.Policies {
		what := "policy " + pol.Namespace + "/" + pol.Name
		out := policy.Policy{Name: pol.Name, Namespace: pol.Namespace, Selector: pol.Selector, Action: policy.Action(pol.Action)}
		if pol.Rules != nil {
			out.Rules = make([]policy.Rule, 0, len(pol.Rules))
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
				ports := func(field string, in []string) []uint16 {
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
				nr.To = append(nr.To, policy.Operation{
					Ports:    ports("ports", to.Operation.Ports),
					NotPorts: ports("notPorts", to.Operation.NotPorts),
				})
			}
			out.Rules = append(out.Rules, nr)
		}
		spec.Policies = append(spec.Policies, out)
	}
	return spec
}
