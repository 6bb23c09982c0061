package workload

import (
	"fmt"
	"slices"

	"github.com/amesh-dev/amesh/policy"
)

// Update is a change to a State, for Apply: objects replaced or removed by key, and the small
// sets (nodes, policies, routes) replaced whole.
type Update struct {
	// Workloads by UID: the new version, or nil to remove the workload. A new version's UID
	// must be its key (a UID left empty is namespace/name, as in a Spec).
	Workloads map[string]*Workload
	// Services by namespace/name: the new version, or nil to remove the service.
	Services map[string]*Service
	// Nodes replaces every node when SetNodes is true.
	Nodes    []Node
	SetNodes bool
	// Policies replaces every policy when SetPolicies is true.
	Policies    []policy.Policy
	SetPolicies bool
	// Routes replaces every route when SetRoutes is true.
	Routes    []Route
	SetRoutes bool
}

// Empty reports whether u changes nothing.
func (u Update) Empty() bool {
	return len(u.Workloads) == 0 && len(u.Services) == 0 && !u.SetNodes && !u.SetPolicies && !u.SetRoutes
}

// Apply returns the State that s becomes with u, sharing with s everything u leaves alone: a
// change of one workload costs its own entries and those of the services it is an endpoint of,
// not a rebuild. What u brings is deep-copied and checked as NewState checks a Spec, and its
// keys against the rest of s (an IP or VIP another object holds, a workload on a node that is
// not there); on any problem s is left as it is and the error lists them all. Apply does not
// check namespace/name uniqueness of workloads against the rest of s (the API server
// guarantees it; UIDs are the keys). s is not modified.
func (s *State) Apply(u Update) (*State, error) {
	if u.Empty() {
		return s, nil
	}
	spec, wKeys, sKeys, err := s.updateSpec(u)
	if err != nil {
		return nil, err
	}
	n := *s
	next := &n
	if u.SetNodes {
		next.setNodes(spec.Nodes)
	}
	if u.SetPolicies {
		next.setPolicies(spec.Policies)
	}
	if u.SetRoutes {
		next.setRoutes(spec.Routes)
	}
	p := &Problems{}
	olds, news := next.applyWorkloads(s, u, spec.Workloads, wKeys, p)
	if u.SetNodes {
		for _, old := range s.nodes {
			if _, ok := next.nodeByName[old.Name]; !ok && len(next.WorkloadsOnNode(old.Name)) > 0 {
				p.Addf(SectionNodes, 0, "name", "node "+old.Name, "is removed while workloads are on it")
			}
		}
	}
	affected := next.applyServices(s, spec.Services, sKeys, p)
	if err := p.Err("invalid update"); err != nil {
		return nil, err
	}
	next.refreshEndpoints(s, olds, news, affected)
	return next, nil
}

// updateSpec checks what u brings, alone, as a Spec (deep-copied, defaults filled), and returns
// it with u's workload and service keys in order. The nodes: all of them when u sets them, else
// those its workloads are on (which check needs to find; the rest of s's were checked when they
// came).
func (s *State) updateSpec(u Update) (spec Spec, wKeys, sKeys []string, err error) {
	spec = Spec{TrustDomain: s.trustDomain, RootNamespace: s.rootNS, Nodes: u.Nodes, Policies: u.Policies, Routes: u.Routes}
	wKeys, sKeys = sortedKeys(u.Workloads), sortedKeys(u.Services)
	onNode := map[string]bool{}
	for _, k := range wKeys {
		if w := u.Workloads[k]; w != nil {
			spec.Workloads = append(spec.Workloads, *w)
			if n, ok := s.nodeByName[w.Node]; ok && !u.SetNodes && !onNode[w.Node] {
				onNode[w.Node] = true
				spec.Nodes = append(spec.Nodes, n)
			}
		}
	}
	for _, k := range sKeys {
		if svc := u.Services[k]; svc != nil {
			spec.Services = append(spec.Services, *svc)
		}
	}
	spec = cloneSpec(spec)
	p := &Problems{}
	check(&spec, p)
	for i := range spec.Workloads {
		if w := &spec.Workloads[i]; u.Workloads[w.UID] == nil {
			p.Addf(SectionWorkloads, i, "uid", "workload "+w.UID, "is not under its uid in the update")
		}
	}
	for i := range spec.Services {
		if svc := &spec.Services[i]; u.Services[svc.Key()] == nil {
			p.Addf(SectionServices, i, "name", "service "+svc.Key(), "is not under its key in the update")
		}
	}
	if err := p.Err("invalid update"); err != nil {
		return Spec{}, nil, nil, err
	}
	return spec, wKeys, sKeys, nil
}

// applyWorkloads sets next's workload indexes (derived from s's) to hold ws, the new versions
// of the workloads under wKeys (a key without one is removed), and records in p an IP that
// another workload or a VIP holds. It takes out what the old versions had and the new ones have
// not before it puts in what the new ones bring, so that an IP passed from one changed workload
// to another is no conflict. It returns the old versions and the new ones by UID.
func (next *State) applyWorkloads(s *State, u Update, ws []Workload, wKeys []string, p *Problems) (olds []*Workload, news map[string]*Workload) {
	news = make(map[string]*Workload, len(ws))
	for i := range ws {
		news[ws[i].UID] = &ws[i]
	}
	wt, it, nt := orEmpty(s.byUID, newByString[*Workload]), orEmpty(s.byIP, newByAddr[*Workload]), orEmpty(s.byNode, newByString[struct{}])
	for _, uid := range wKeys {
		old := s.WorkloadByUID(uid)
		if old == nil {
			continue
		}
		olds = append(olds, old)
		nw := news[uid]
		if nw == nil {
			wt = wt.Delete(uid)
		}
		for _, ip := range old.IPs {
			if nw == nil || !slices.Contains(nw.IPs, ip) {
				it = it.Delete(ipKey(ip))
			}
		}
		if nw == nil || nw.Node != old.Node {
			nt = nt.Delete(nodeKey(old.Node, old.UID))
		}
	}
	for i := range ws {
		w := &ws[i]
		old := s.WorkloadByUID(w.UID)
		wt = wt.Set(w.UID, w)
		for _, ip := range w.IPs {
			k := ipKey(ip)
			if other, ok := it.Get(k); ok {
				if other.UID != w.UID {
					p.Addf(SectionWorkloads, i, "ips", "workload "+w.UID, "ip %s is also workload %s's", ip, other.UID)
					continue
				}
			} else if svc := getIP(s.byVIP, ip); svc != nil {
				// A VIP of a service the update changes is checked with that service.
				if _, changing := u.Services[svc.Key()]; !changing {
					p.Addf(SectionWorkloads, i, "ips", "workload "+w.UID, "ip %s is service %s's vip", ip, svc.Key())
					continue
				}
			}
			it = it.Set(k, w) // also where the old version had it: the entry is the workload
		}
		if old == nil || old.Node != w.Node {
			nt = nt.Set(nodeKey(w.Node, w.UID), struct{}{})
		}
	}
	next.byUID, next.byIP, next.byNode = wt, it, nt
	return olds, news
}

// applyServices does for services what applyWorkloads does for workloads (svcs are the new
// versions of those under sKeys), checking VIPs against next's workloads, and keeps the index of
// which services list an endpoint IP and which select by labels. It returns the services whose
// endpoints may have changed so far: those under sKeys.
func (next *State) applyServices(s *State, svcs []Service, sKeys []string, p *Problems) (affected map[string]bool) {
	newSvcs := make(map[string]*Service, len(svcs))
	for i := range svcs {
		newSvcs[svcs[i].Key()] = &svcs[i]
	}
	kt, vt, lt := orEmpty(s.byKey, newByString[*Service]), orEmpty(s.byVIP, newByAddr[*Service]), orEmpty(s.listedAt, newByAddr[[]string])
	affected = map[string]bool{}
	for _, k := range sKeys {
		affected[k] = true
		old := get(s.byKey, k)
		if old == nil {
			continue
		}
		nsvc := newSvcs[k]
		if nsvc == nil {
			kt = kt.Delete(k)
		}
		for _, vip := range old.VIPs {
			vt = vt.Delete(ipKey(vip))
		}
		for _, ip := range old.EndpointIPs {
			if nsvc != nil && slices.Contains(nsvc.EndpointIPs, ip) {
				continue
			}
			ik := ipKey(ip)
			keys, _ := lt.Get(ik)
			if keys = removeKey(keys, k); len(keys) == 0 {
				lt = lt.Delete(ik)
			} else {
				lt = lt.Set(ik, keys)
			}
		}
	}
	for i := range svcs {
		svc := &svcs[i]
		old := get(s.byKey, svc.Key())
		kt = kt.Set(svc.Key(), svc)
		for _, vip := range svc.VIPs {
			vk := ipKey(vip)
			if other, ok := vt.Get(vk); ok {
				p.Addf(SectionServices, i, "vips", "service "+svc.Key(), "vip %s is also service %s's", vip, other.Key())
				continue
			}
			if w := next.WorkloadByIP(vip); w != nil {
				p.Addf(SectionServices, i, "vips", "service "+svc.Key(), "vip %s is workload %s's ip", vip, w.UID)
				continue
			}
			vt = vt.Set(vk, svc)
		}
		for _, ip := range svc.EndpointIPs {
			if old != nil && slices.Contains(old.EndpointIPs, ip) {
				continue
			}
			ik := ipKey(ip)
			keys, _ := lt.Get(ik)
			lt = lt.Set(ik, appendKey(keys, svc.Key()))
		}
	}
	next.byKey, next.byVIP, next.listedAt = kt, vt, lt
	if len(sKeys) > 0 {
		st := orEmpty(s.selectors, newByString[struct{}])
		for _, k := range sKeys {
			if svc := newSvcs[k]; svc != nil && bySelector(svc) {
				st = st.Set(k, struct{}{})
			} else {
				st = st.Delete(k)
			}
		}
		next.selectors = st
	}
	return affected
}

// refreshEndpoints resolves again the endpoints of every service a change may concern: those
// in affected, those the old versions of changed workloads were endpoints of, those that list
// a new version's IP, and the selector services of both versions' namespaces.
func (next *State) refreshEndpoints(s *State, olds []*Workload, news map[string]*Workload, affected map[string]bool) {
	for _, old := range olds {
		for _, svc := range s.ServicesOf(old) {
			affected[svc.Key()] = true
		}
	}
	for _, w := range news {
		for _, ip := range w.IPs {
			for _, k := range getIP(next.listedAt, ip) {
				affected[k] = true
			}
		}
		next.selectorsOf(w.Namespace, affected)
	}
	for _, old := range olds {
		next.selectorsOf(old.Namespace, affected)
	}
	et := orEmpty(s.endpoints, newByString[[]*Workload])
	for k := range affected {
		svc := get(next.byKey, k)
		var eps []*Workload
		if svc != nil {
			eps = next.resolveEndpoints(svc)
		}
		if len(eps) == 0 {
			et = et.Delete(k)
			continue
		}
		et = et.Set(k, eps)
	}
	next.endpoints = et
}

// selectorsOf adds to keys the selector services (the state file's) of namespace ns.
func (s *State) selectorsOf(ns string, keys map[string]bool) {
	for k := range entries(s.selectors, ns+"/") {
		keys[k] = true
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// String describes u's size, for logs.
func (u Update) String() string {
	return fmt.Sprintf("%d workloads, %d services, nodes %t, policies %t, routes %t", len(u.Workloads), len(u.Services), u.SetNodes, u.SetPolicies, u.SetRoutes)
}
