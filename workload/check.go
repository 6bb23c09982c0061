package workload

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/policy"
)

// The sections of a Spec, named as in the state file.
const (
	secTop       = ""
	secNodes     = "nodes"
	secWorkloads = "workloads"
	secServices  = "services"
	secPolicies  = "policies"
)

// A locator returns the line of the YAML node at path (e.g. "ips[1]") inside item i of section, or
// 0 when it does not know.
type locator func(section string, i int, path string) int

// problems collects validation errors. With a file name each error reads
// "file:line: what: problem", like a compiler's, and they are reported in line order; without,
// "what: problem", in the order found.
type problems struct {
	file string
	loc  locator
	errs []lineError
}

type lineError struct {
	line int
	err  error
}

func (p *problems) line(section string, i int, path string) int {
	if p.loc == nil {
		return 0
	}
	return p.loc(section, i, path)
}

func (p *problems) add(section string, i int, path, what string, err error) {
	if p.file == "" {
		p.errs = append(p.errs, lineError{err: fmt.Errorf("%s: %w", what, err)})
		return
	}
	p.addLine(p.line(section, i, path), fmt.Errorf("%s: %w", what, err))
}

func (p *problems) addf(section string, i int, path, what, format string, args ...any) {
	p.add(section, i, path, what, fmt.Errorf(format, args...))
}

// addLine records err at line of the file (line 1 when unknown).
func (p *problems) addLine(line int, err error) {
	line = max(line, 1)
	p.errs = append(p.errs, lineError{line: line, err: fmt.Errorf("%s:%d: %w", p.file, line, err)})
}

// where names another item, for "duplicate" messages: "line 12" or "workloads[3]".
func (p *problems) where(section string, i int, path string) string {
	if l := p.line(section, i, path); l > 0 && p.file != "" {
		return fmt.Sprintf("line %d", l)
	}
	return fmt.Sprintf("%s[%d]", section, i)
}

// err returns nil or every problem, under one heading.
func (p *problems) err(heading string) error {
	slices.SortStableFunc(p.errs, func(a, b lineError) int { return cmp.Compare(a.line, b.line) })
	errs := make([]error, len(p.errs))
	for i, e := range p.errs {
		errs[i] = e.err
	}
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("workload: %s: %w", heading, errs[0])
	}
	return fmt.Errorf("workload: %s: %d errors:\n%w", heading, len(errs), errors.Join(errs...))
}

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

// check validates spec (already cloned, defaults filled) and records every problem in p.
func check(spec *Spec, p *problems) {
	if spec.TrustDomain.IsZero() {
		p.add(secTop, 0, "trustDomain", "trustDomain", errors.New("is required"))
	}
	if spec.RootNamespace != "" {
		if err := checkName(dnsLabel, 63, "namespace", spec.RootNamespace); err != nil {
			p.add(secTop, 0, "rootNamespace", "rootNamespace", err)
		}
	}

	nodes := make(map[string]int)
	nodeIPs := make(map[netip.Addr]int)
	for i, n := range spec.Nodes {
		what := "node " + n.Name
		if n.Name == "" {
			what = fmt.Sprintf("node #%d", i+1)
		}
		if err := checkName(dnsSubdomain, 253, "name", n.Name); err != nil {
			p.add(secNodes, i, "name", what, err)
		} else if j, dup := nodes[n.Name]; dup {
			p.addf(secNodes, i, "name", what, "duplicate node name (also at %s)", p.where(secNodes, j, ""))
		} else {
			nodes[n.Name] = i
		}
		if !n.IP.IsValid() {
			// Optional in a Spec (a Kubernetes node whose pods have no status.hostIP yet); the
			// state file requires it (convert).
		} else if err := checkAddr("ip", n.IP); err != nil {
			p.add(secNodes, i, "ip", what, err)
		} else if j, dup := nodeIPs[n.IP]; dup {
			p.addf(secNodes, i, "ip", what, "ip %s is also node %s's (at %s)", n.IP, spec.Nodes[j].Name, p.where(secNodes, j, "ip"))
		} else {
			nodeIPs[n.IP] = i
		}
	}

	names := make(map[string]int) // namespace/name
	uids := make(map[string]int)
	ips := make(map[netip.Addr]int) // → workload index
	for i := range spec.Workloads {
		w := &spec.Workloads[i]
		what := "workload " + w.Namespace + "/" + w.Name
		if err := checkName(dnsSubdomain, 253, "name", w.Name); err != nil {
			p.add(secWorkloads, i, "name", what, err)
		}
		if !spec.TrustDomain.IsZero() {
			// Check the namespace alone first (with a service account known to be valid), so the
			// error points at the right line.
			if _, err := identity.WorkloadID(spec.TrustDomain, w.Namespace, "default"); err != nil {
				p.add(secWorkloads, i, "namespace", what, err)
			} else if _, err := identity.WorkloadID(spec.TrustDomain, w.Namespace, w.ServiceAccount); err != nil {
				p.add(secWorkloads, i, "serviceAccount", what, err)
			}
		}
		key := w.Namespace + "/" + w.Name
		if j, dup := names[key]; dup {
			p.addf(secWorkloads, i, "name", what, "duplicate workload %s (also at %s)", key, p.where(secWorkloads, j, ""))
		} else {
			names[key] = i
			if j, dup := uids[w.UID]; dup {
				p.addf(secWorkloads, i, "uid", what, "duplicate uid %q (also at %s)", w.UID, p.where(secWorkloads, j, ""))
			}
		}
		if _, dup := uids[w.UID]; !dup {
			uids[w.UID] = i
		}
		if w.Node == "" {
			p.add(secWorkloads, i, "node", what, errors.New("node is required"))
		} else if _, ok := nodes[w.Node]; !ok {
			p.addf(secWorkloads, i, "node", what, "node %q is not in nodes", w.Node)
		}
		for k, ip := range w.IPs {
			path := fmt.Sprintf("ips[%d]", k)
			if err := checkAddr("ip", ip); err != nil {
				p.add(secWorkloads, i, path, what, err)
				continue
			}
			if j, dup := ips[ip]; dup && j == i {
				p.addf(secWorkloads, i, path, what, "ip %s is listed twice", ip)
				continue
			} else if dup {
				o := &spec.Workloads[j]
				p.addf(secWorkloads, i, path, what, "ip %s is also workload %s's (at %s)", ip, o.UID, p.where(secWorkloads, j, ""))
				continue
			}
			ips[ip] = i
		}
		if w.Netns != "" && !filepath.IsAbs(w.Netns) {
			p.addf(secWorkloads, i, "netns", what, "netns %q is not an absolute path", w.Netns)
		}
		if w.Mode > ModeNone {
			p.addf(secWorkloads, i, "mode", what, "mode %s is not ambient or none", w.Mode)
		}
		if w.InboundMode > InboundPermissive {
			p.addf(secWorkloads, i, "inboundMode", what, "inboundMode %s is not strict or permissive", w.InboundMode)
		}
		if err := policy.ValidateLabels(w.Labels); err != nil {
			p.add(secWorkloads, i, "labels", what, err)
		}
		if w.Waypoint != "" {
			if err := checkName(dnsSubdomain, 253, "waypoint", w.Waypoint); err != nil {
				p.add(secWorkloads, i, "waypoint", what, err)
			}
		}
	}

	svcs := make(map[string]int)
	vips := make(map[netip.Addr]int)
	for i := range spec.Services {
		svc := &spec.Services[i]
		what := "service " + svc.Key()
		if err := checkName(dns1035Label, 63, "name", svc.Name); err != nil {
			p.add(secServices, i, "name", what, err)
		}
		if err := checkName(dnsLabel, 63, "namespace", svc.Namespace); err != nil {
			p.add(secServices, i, "namespace", what, err)
		}
		if j, dup := svcs[svc.Key()]; dup {
			p.addf(secServices, i, "name", what, "duplicate service (also at %s)", p.where(secServices, j, ""))
		} else {
			svcs[svc.Key()] = i
		}
		for k, vip := range svc.VIPs {
			path := fmt.Sprintf("vips[%d]", k)
			if err := checkAddr("vip", vip); err != nil {
				p.add(secServices, i, path, what, err)
				continue
			}
			if j, dup := vips[vip]; dup {
				p.addf(secServices, i, path, what, "vip %s is also service %s's (at %s)", vip, spec.Services[j].Key(), p.where(secServices, j, ""))
				continue
			}
			if j, dup := ips[vip]; dup {
				p.addf(secServices, i, path, what, "vip %s is workload %s's ip (at %s)", vip, spec.Workloads[j].UID, p.where(secWorkloads, j, ""))
				continue
			}
			vips[vip] = i
		}
		seen := make(map[uint16]bool)
		for k, sp := range svc.Ports {
			path := fmt.Sprintf("ports[%d]", k)
			if sp.Port == 0 {
				p.add(secServices, i, path+".port", what, errors.New("port 0 is out of range 1..65535"))
				continue
			}
			if seen[sp.Port] {
				p.addf(secServices, i, path+".port", what, "port %d is listed twice", sp.Port)
			}
			seen[sp.Port] = true
		}
		if err := policy.ValidateLabels(svc.Selector); err != nil {
			p.add(secServices, i, "selector", what, err)
		}
		if svc.Waypoint != "" {
			if err := checkName(dnsSubdomain, 253, "waypoint", svc.Waypoint); err != nil {
				p.add(secServices, i, "waypoint", what, err)
			}
		}
	}

	pols := make(map[string]int)
	for i, pol := range spec.Policies {
		what := "policy " + pol.Key()
		if err := policy.Validate(pol); err != nil {
			for _, e := range unjoin(err) {
				var fe *policy.FieldError
				if errors.As(e, &fe) {
					p.addf(secPolicies, i, fe.Field, what, "%s: %w", fe.Field, fe.Err)
				} else {
					p.add(secPolicies, i, "", what, e)
				}
			}
		}
		if j, dup := pols[pol.Key()]; dup {
			p.addf(secPolicies, i, "name", what, "duplicate policy (also at %s)", p.where(secPolicies, j, ""))
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
