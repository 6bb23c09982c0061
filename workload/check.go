package workload

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/policy"
)

var (
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dns1035Label = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`) // Service names
)

func checkName(re *regexp.Regexp, maxLen int, kind, s string) error {
	if s == "" {
		return fmt.Errorf("%s is required", kind)
	}
	if len(s) > maxLen || !re.MatchString(s) {
		return fmt.Errorf("%s %q is not a valid Kubernetes name", kind, s)
	}
	return nil
}

// checkAddr checks an address a workload, a VIP or a node may have.
func checkAddr(kind string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("%s is not set", kind)
	case a.Zone() != "":
		return fmt.Errorf("%s %s has a zone", kind, a)
	case a.IsUnspecified(), a.IsMulticast():
		return fmt.Errorf("%s %s is not a unicast address", kind, a)
	case a.IsLoopback():
		// Inside every enrolled pod the redirected client is 127.0.0.1: a workload there would
		// capture every lookup by source address.
		return fmt.Errorf("%s %s is a loopback address", kind, a)
	}
	return nil
}

// check validates spec (already cloned, defaults filled) and records every problem in p, section
// by section in the state file's order. Workloads refer to nodes, and a service's VIPs must be no
// workload's IP, so the sections before hand their indices on.
func check(spec *Spec, p *Problems) {
	checkTop(spec, p)
	nodes := checkNodes(spec, p)
	ips := checkWorkloads(spec, nodes, p)
	checkServices(spec, ips, p)
	checkPolicies(spec, p)
	checkRoutes(spec, p)
}

func checkTop(spec *Spec, p *Problems) {
	if spec.TrustDomain.IsZero() {
		p.Add(SectionTop, 0, "trustDomain", "trustDomain", errors.New("is required"))
	}
	if spec.RootNamespace != "" {
		if err := checkName(dnsLabel, 63, "namespace", spec.RootNamespace); err != nil {
			p.Add(SectionTop, 0, "rootNamespace", "rootNamespace", err)
		}
	}
}

// checkNodes returns the index of every node by name.
func checkNodes(spec *Spec, p *Problems) map[string]int {
	nodes := make(map[string]int)
	nodeIPs := make(map[netip.Addr]int)
	for i, n := range spec.Nodes {
		what := "node " + n.Name
		if n.Name == "" {
			what = fmt.Sprintf("node #%d", i+1)
		}
		if err := checkName(dnsSubdomain, 253, "name", n.Name); err != nil {
			p.Add(SectionNodes, i, "name", what, err)
		} else if j, dup := nodes[n.Name]; dup {
			p.Addf(SectionNodes, i, "name", what, "duplicate node name (also at %s)", p.where(SectionNodes, j, ""))
		} else {
			nodes[n.Name] = i
		}
		if !n.IP.IsValid() {
			// Optional in a Spec (a Kubernetes node whose pods have no status.hostIP yet); the
			// state file requires it (package workload/file).
		} else if err := checkAddr("ip", n.IP); err != nil {
			p.Add(SectionNodes, i, "ip", what, err)
		} else if j, dup := nodeIPs[n.IP]; dup {
			p.Addf(SectionNodes, i, "ip", what, "ip %s is also node %s's (at %s)", n.IP, spec.Nodes[j].Name, p.where(SectionNodes, j, "ip"))
		} else {
			nodeIPs[n.IP] = i
		}
	}
	return nodes
}

// checkWorkloads checks the workloads against the nodes (by name, from checkNodes) and returns
// the index of the workload of every IP.
func checkWorkloads(spec *Spec, nodes map[string]int, p *Problems) map[netip.Addr]int {
	names := make(map[string]int) // namespace/name
	uids := make(map[string]int)
	ips := make(map[netip.Addr]int) // → workload index
	for i := range spec.Workloads {
		w := &spec.Workloads[i]
		what := "workload " + w.Namespace + "/" + w.Name
		if err := checkName(dnsSubdomain, 253, "name", w.Name); err != nil {
			p.Add(SectionWorkloads, i, "name", what, err)
		}
		if !spec.TrustDomain.IsZero() {
			// Check the namespace alone first (with a service account known to be valid), so the
			// error points at the right line.
			if _, err := identity.WorkloadID(spec.TrustDomain, w.Namespace, "default"); err != nil {
				p.Add(SectionWorkloads, i, "namespace", what, err)
			} else if _, err := identity.WorkloadID(spec.TrustDomain, w.Namespace, w.ServiceAccount); err != nil {
				p.Add(SectionWorkloads, i, "serviceAccount", what, err)
			}
		}
		key := w.Namespace + "/" + w.Name
		if j, dup := names[key]; dup {
			p.Addf(SectionWorkloads, i, "name", what, "duplicate workload %s (also at %s)", key, p.where(SectionWorkloads, j, ""))
		} else {
			names[key] = i
			if j, dup := uids[w.UID]; dup {
				p.Addf(SectionWorkloads, i, "uid", what, "duplicate uid %q (also at %s)", w.UID, p.where(SectionWorkloads, j, ""))
			}
		}
		if _, dup := uids[w.UID]; !dup {
			uids[w.UID] = i
		}
		if w.Node == "" {
			p.Add(SectionWorkloads, i, "node", what, errors.New("node is required"))
		} else if _, ok := nodes[w.Node]; !ok {
			p.Addf(SectionWorkloads, i, "node", what, "node %q is not in nodes", w.Node)
		}
		for k, ip := range w.IPs {
			path := fmt.Sprintf("ips[%d]", k)
			if err := checkAddr("ip", ip); err != nil {
				p.Add(SectionWorkloads, i, path, what, err)
				continue
			}
			if j, dup := ips[ip]; dup && j == i {
				p.Addf(SectionWorkloads, i, path, what, "ip %s is listed twice", ip)
				continue
			} else if dup {
				o := &spec.Workloads[j]
				p.Addf(SectionWorkloads, i, path, what, "ip %s is also workload %s's (at %s)", ip, o.UID, p.where(SectionWorkloads, j, ""))
				continue
			}
			ips[ip] = i
		}
		if w.Netns != "" && !filepath.IsAbs(w.Netns) {
			p.Addf(SectionWorkloads, i, "netns", what, "netns %q is not an absolute path", w.Netns)
		}
		if w.Mode > ModeNone {
			p.Addf(SectionWorkloads, i, "mode", what, "mode %s is not ambient or none", w.Mode)
		}
		if w.InboundMode > InboundPermissive {
			p.Addf(SectionWorkloads, i, "inboundMode", what, "inboundMode %s is not strict or permissive", w.InboundMode)
		}
		checkLabelsWaypoint(p, SectionWorkloads, i, what, "labels", w.Labels, w.Waypoint)
	}
	return ips
}

// checkServices checks the services; ips are the workloads' (from checkWorkloads), which no VIP
// may be.
func checkServices(spec *Spec, ips map[netip.Addr]int, p *Problems) {
	svcs := make(map[string]int)
	vips := make(map[netip.Addr]int)
	for i := range spec.Services {
		svc := &spec.Services[i]
		what := "service " + svc.Key()
		if err := checkName(dns1035Label, 63, "name", svc.Name); err != nil {
			p.Add(SectionServices, i, "name", what, err)
		}
		if err := checkName(dnsLabel, 63, "namespace", svc.Namespace); err != nil {
			p.Add(SectionServices, i, "namespace", what, err)
		}
		if j, dup := svcs[svc.Key()]; dup {
			p.Addf(SectionServices, i, "name", what, "duplicate service (also at %s)", p.where(SectionServices, j, ""))
		} else {
			svcs[svc.Key()] = i
		}
		for k, vip := range svc.VIPs {
			path := fmt.Sprintf("vips[%d]", k)
			if err := checkAddr("vip", vip); err != nil {
				p.Add(SectionServices, i, path, what, err)
				continue
			}
			if j, dup := vips[vip]; dup {
				p.Addf(SectionServices, i, path, what, "vip %s is also service %s's (at %s)", vip, spec.Services[j].Key(), p.where(SectionServices, j, ""))
				continue
			}
			if j, dup := ips[vip]; dup {
				p.Addf(SectionServices, i, path, what, "vip %s is workload %s's ip (at %s)", vip, spec.Workloads[j].UID, p.where(SectionWorkloads, j, ""))
				continue
			}
			vips[vip] = i
		}
		seen := make(map[uint16]bool)
		for k, sp := range svc.Ports {
			path := fmt.Sprintf("ports[%d]", k)
			if sp.Port == 0 {
				p.Add(SectionServices, i, path+".port", what, errors.New("port 0 is out of range 1..65535"))
				continue
			}
			if seen[sp.Port] {
				p.Addf(SectionServices, i, path+".port", what, "port %d is listed twice", sp.Port)
			}
			seen[sp.Port] = true
		}
		checkLabelsWaypoint(p, SectionServices, i, what, "selector", svc.Selector, svc.Waypoint)
		if svc.WaypointFor > WaypointForNone {
			p.Addf(SectionServices, i, "waypointFor", what, "waypointFor %d is not service, workload, all or none", svc.WaypointFor)
		}
	}
}

// checkLabelsWaypoint checks what workloads and services share: labels (a workload's own, a service's
// selector, at field) and the name of a waypoint, if any.
func checkLabelsWaypoint(p *Problems, section string, i int, what, field string, labels map[string]string, waypoint string) {
	if err := policy.ValidateLabels(labels); err != nil {
		p.Add(section, i, field, what, err)
	}
	if waypoint != "" {
		if err := checkName(dnsSubdomain, 253, "waypoint", waypoint); err != nil {
			p.Add(section, i, "waypoint", what, err)
		}
	}
}

func checkPolicies(spec *Spec, p *Problems) {
	pols := make(map[string]int)
	for i, pol := range spec.Policies {
		what := "policy " + pol.Key()
		if err := policy.Validate(pol); err != nil {
			for _, e := range unjoin(err) {
				var fe *policy.FieldError
				if errors.As(e, &fe) {
					p.Addf(SectionPolicies, i, fe.Field, what, "%s: %w", fe.Field, fe.Err)
				} else {
					p.Add(SectionPolicies, i, "", what, e)
				}
			}
		}
		if j, dup := pols[pol.Key()]; dup {
			p.Addf(SectionPolicies, i, "name", what, "duplicate policy (also at %s)", p.where(SectionPolicies, j, ""))
		} else {
			pols[pol.Key()] = i
		}
	}
}

// unjoin returns the errors errors.Join joined, or err alone.
func unjoin(err error) []error {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		return u.Unwrap()
	}
	return []error{err}
}
