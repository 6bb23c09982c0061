package workload

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"

	"github.com/benbjohnson/immutable"

	"github.com/amesh-dev/amesh/internal/intern"
	"github.com/amesh-dev/amesh/policy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Spec is what a State is built from: a feeder (the state file, Kubernetes informers) fills one and
// calls NewState.
type Spec struct {
	TrustDomain spiffeid.TrustDomain
	// RootNamespace holds the mesh-wide policies; policy.DefaultRootNamespace when empty.
	RootNamespace string
	Nodes         []Node
	Workloads     []Workload
	Services      []Service
	Policies      []policy.Policy
	Routes        []Route
}

// State is an immutable, indexed snapshot of the cluster as one agent sees it.
//
// Invariants, established by NewState (and kept by Update) and never broken afterwards: workload
// UIDs, workload IPs, service VIPs, node names and policy namespace/name pairs are unique; every
// workload's node exists; every IP is valid and unmapped (a v4-mapped v6 address is stored as
// v4); lists are sorted (nodes by name, workloads by UID, services and policies by
// namespace/name). Nothing in a State, nor anything it returns, may be modified, so any number of
// goroutines may read it without locks.
//
// The indexes that grow with the cluster are persistent sorted maps (see tree.go): the State
// that Apply derives shares every node it does not change with its parent, so a change of one
// pod costs a few tree paths, not a copy of the cluster.
//
// The zero State is empty and usable.
type State struct {
	trustDomain spiffeid.TrustDomain
	rootNS      string

	nodes      []Node
	nodeByName map[string]Node

	// byIP holds the workloads themselves: it is read on every connection and for every
	// endpoint a service change resolves, where a UID would cost a second lookup; a workload's
	// new version so rewrites its IPs' entries too (a persistent map's path copy each). byNode
	// holds UIDs: it is read per node, rarely.
	byUID  *byString[*Workload] // sorted by UID
	byIP   *byAddr[*Workload]   // by ipKey
	byNode *byString[struct{}]  // by node name, 0, UID: a node's workloads sorted by UID

	byKey     *byString[*Service]    // by namespace/name, sorted
	byVIP     *byAddr[*Service]      // by ipKey
	endpoints *byString[[]*Workload] // by service key
	// listedAt: by ipKey, the keys of the services whose EndpointIPs list that IP (what a
	// workload's change re-resolves).
	listedAt *byAddr[[]string]

	routes   []*Route
	routesOf map[string][]*Route // by parent service key

	// selectors: the keys of the services with a selector and no EndpointIPs (the state
	// file's), whose endpoints are found by labels. A workload's services are not indexed:
	// ServicesOf finds them from its IPs (listedAt) and these.
	selectors *byString[struct{}]

	policies []policy.Policy
}

// NewState validates spec and builds an indexed State from a deep copy of it (later changes to
// spec do not show through). It fills the defaults: a Workload's UID is "namespace/name" when
// empty, a ServicePort's TargetPort is its Port when zero. It reports every problem found.
func NewState(spec Spec) (*State, error) {
	p := &Problems{}
	s := Build(spec, p)
	if err := p.Err("invalid state"); err != nil {
		return nil, err
	}
	return s, nil
}

// Build is NewState for a feeder with problems of its own to report with those of spec, such as
// the state file's, at their lines: it validates spec as NewState does, recording every problem in
// p, and returns the State, or nil when p holds any problem (recorded now or before).
func Build(spec Spec, p *Problems) *State {
	spec = cloneSpec(spec)
	check(&spec, p)
	if len(p.errs) > 0 {
		return nil
	}
	s := &State{
		trustDomain: spec.TrustDomain,
		rootNS:      cmp.Or(spec.RootNamespace, policy.DefaultRootNamespace),
	}
	s.setNodes(spec.Nodes)
	wt := immutable.NewSortedMapBuilder[string, *Workload](stringOrder{})
	it := immutable.NewSortedMapBuilder[[16]byte, *Workload](ipOrder{})
	nt := immutable.NewSortedMapBuilder[string, struct{}](stringOrder{})
	for i := range spec.Workloads {
		w := &spec.Workloads[i]
		wt.Set(w.UID, w)
		for _, ip := range w.IPs {
			it.Set(ipKey(ip), w)
		}
		nt.Set(nodeKey(w.Node, w.UID), struct{}{})
	}
	s.byUID, s.byIP, s.byNode = wt.Map(), it.Map(), nt.Map()

	kt := immutable.NewSortedMapBuilder[string, *Service](stringOrder{})
	vt := immutable.NewSortedMapBuilder[[16]byte, *Service](ipOrder{})
	lt := immutable.NewSortedMapBuilder[[16]byte, []string](ipOrder{})
	for i := range spec.Services {
		svc := &spec.Services[i]
		kt.Set(svc.Key(), svc)
		for _, vip := range svc.VIPs {
			vt.Set(ipKey(vip), svc)
		}
		for _, ip := range svc.EndpointIPs {
			keys, _ := lt.Get(ipKey(ip))
			lt.Set(ipKey(ip), appendKey(keys, svc.Key()))
		}
	}
	s.byKey, s.byVIP, s.listedAt = kt.Map(), vt.Map(), lt.Map()

	et := immutable.NewSortedMapBuilder[string, []*Workload](stringOrder{})
	for _, svc := range s.Services() {
		if eps := s.resolveEndpoints(svc); len(eps) > 0 {
			et.Set(svc.Key(), eps)
		}
	}
	s.endpoints = et.Map()
	sel := immutable.NewSortedMapBuilder[string, struct{}](stringOrder{})
	for _, svc := range s.Services() {
		if bySelector(svc) {
			sel.Set(svc.Key(), struct{}{})
		}
	}
	s.selectors = sel.Map()
	s.setRoutes(spec.Routes)
	s.setPolicies(spec.Policies)
	return s
}

// setNodes indexes nodes (already cloned and checked), sorted by name.
func (s *State) setNodes(nodes []Node) {
	s.nodes = nodes
	slices.SortFunc(s.nodes, func(a, b Node) int { return cmp.Compare(a.Name, b.Name) })
	s.nodeByName = make(map[string]Node, len(nodes))
	for _, n := range s.nodes {
		s.nodeByName[n.Name] = n
	}
}

// setRoutes indexes routes (already cloned and checked).
func (s *State) setRoutes(routes []Route) {
	s.routes = nil
	for i := range routes {
		s.routes = append(s.routes, &routes[i])
	}
	slices.SortFunc(s.routes, func(a, b *Route) int { return cmp.Compare(a.Key(), b.Key()) })
	s.routesOf = make(map[string][]*Route)
	for _, r := range s.routes {
		seen := map[string]bool{}
		for _, p := range r.Parents {
			if k := r.Namespace + "/" + p.Service; !seen[k] {
				seen[k] = true
				s.routesOf[k] = append(s.routesOf[k], r)
			}
		}
	}
}

// setPolicies sorts policies (already cloned and checked) into s.
func (s *State) setPolicies(pols []policy.Policy) {
	s.policies = pols
	slices.SortFunc(s.policies, func(a, b policy.Policy) int { return cmp.Compare(a.Key(), b.Key()) })
}

// bySelector reports whether svc's endpoints are found by its selector (it has no EndpointIPs).
func bySelector(svc *Service) bool { return svc.EndpointIPs == nil && len(svc.Selector) > 0 }

// resolveEndpoints returns svc's endpoints in s, sorted by UID: the workloads of its
// EndpointIPs when it has them, else those of its namespace its selector selects.
func (s *State) resolveEndpoints(svc *Service) []*Workload {
	var out []*Workload
	if svc.EndpointIPs != nil {
		seen := make(map[*Workload]bool, len(svc.EndpointIPs))
		for _, ip := range svc.EndpointIPs {
			if w := s.WorkloadByIP(ip); w != nil && !seen[w] {
				seen[w] = true
				out = append(out, w)
			}
		}
		slices.SortFunc(out, func(a, b *Workload) int { return cmp.Compare(a.UID, b.UID) })
		return out
	}
	if len(svc.Selector) == 0 {
		return nil
	}
	for _, w := range s.Workloads() {
		if w.Namespace == svc.Namespace && selects(svc.Selector, w.Labels) {
			out = append(out, w)
		}
	}
	return out
}

// appendKey adds k to keys (a sorted, shared list) in a new slice.
func appendKey(keys []string, k string) []string {
	i, found := slices.BinarySearch(keys, k)
	if found {
		return keys
	}
	return slices.Insert(slices.Clone(keys), i, k)
}

// removeKey removes k from keys (a sorted, shared list) in a new slice.
func removeKey(keys []string, k string) []string {
	i, found := slices.BinarySearch(keys, k)
	if !found {
		return keys
	}
	return slices.Delete(slices.Clone(keys), i, i+1)
}

func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// cloneSpec deep-copies spec and fills the defaults, so that a State shares no memory with its
// input that its input may change (labels become interned maps, which nobody changes).
func cloneSpec(spec Spec) Spec {
	c := spec
	c.Nodes = slices.Clone(spec.Nodes)
	c.Workloads = make([]Workload, len(spec.Workloads))
	for i, w := range spec.Workloads {
		w.IPs = unmapAll(w.IPs)
		w.Labels = intern.Labels(w.Labels) // one map per label set: a Deployment's pods share it
		w.ProbePorts = slices.Clone(w.ProbePorts)
		w.HostIP = w.HostIP.Unmap()
		if w.UID == "" {
			w.UID = w.Namespace + "/" + w.Name
		}
		c.Workloads[i] = w
	}
	c.Services = make([]Service, len(spec.Services))
	for i, svc := range spec.Services {
		svc.VIPs = unmapAll(svc.VIPs)
		svc.Ports = slices.Clone(svc.Ports)
		for j := range svc.Ports {
			if svc.Ports[j].TargetPort == 0 {
				svc.Ports[j].TargetPort = svc.Ports[j].Port
			}
		}
		svc.Selector = maps.Clone(svc.Selector)
		svc.EndpointIPs = unmapAll(svc.EndpointIPs)
		c.Services[i] = svc
	}
	c.Policies = make([]policy.Policy, len(spec.Policies))
	for i, pol := range spec.Policies {
		c.Policies[i] = pol.Clone()
	}
	for i := range c.Nodes {
		c.Nodes[i].IP = c.Nodes[i].IP.Unmap()
	}
	c.Routes = make([]Route, len(spec.Routes))
	for i, r := range spec.Routes {
		c.Routes[i] = r.clone()
	}
	return c
}

func unmapAll(ips []netip.Addr) []netip.Addr {
	if ips == nil {
		return nil
	}
	out := make([]netip.Addr, len(ips))
	for i, ip := range ips {
		out[i] = ip.Unmap()
	}
	return out
}

// TrustDomain returns the trust domain of every workload of the state.
func (s *State) TrustDomain() spiffeid.TrustDomain { return s.trustDomain }

// RootNamespace returns the namespace whose policies apply mesh-wide.
func (s *State) RootNamespace() string { return cmp.Or(s.rootNS, policy.DefaultRootNamespace) }

// Nodes returns the nodes, sorted by name.
func (s *State) Nodes() []Node { return slices.Clone(s.nodes) }

// Node returns the node called name.
func (s *State) Node(name string) (Node, bool) {
	n, ok := s.nodeByName[name]
	return n, ok
}

// Workloads returns every workload, sorted by UID.
func (s *State) Workloads() []*Workload { return values(s.byUID, "") }

// Services returns every service, sorted by namespace/name.
func (s *State) Services() []*Service { return values(s.byKey, "") }

// Policies returns every policy, sorted by namespace/name.
func (s *State) Policies() []policy.Policy { return slices.Clone(s.policies) }

// PolicySet returns every policy, sorted by namespace/name, without copying: what policy.Evaluate
// takes, once per connection, where Policies' copy would be an allocation each time. The slice and
// its policies belong to the State, shared by all its readers: read only, never modify or append.
func (s *State) PolicySet() []policy.Policy { return s.policies[:len(s.policies):len(s.policies)] }

// WorkloadByIP returns the workload that has ip (v4-mapped v6 addresses are unmapped first), or nil.
func (s *State) WorkloadByIP(ip netip.Addr) *Workload {
	return getIP(s.byIP, ip)
}

// WorkloadByUID returns the workload with uid, or nil.
func (s *State) WorkloadByUID(uid string) *Workload { return get(s.byUID, uid) }

// WorkloadsOnNode returns the workloads scheduled on node, sorted by UID, enrolled or not.
func (s *State) WorkloadsOnNode(node string) []*Workload {
	prefix := node + "\x00"
	var out []*Workload
	for k := range entries(s.byNode, prefix) {
		if w := get(s.byUID, k[len(prefix):]); w != nil {
			out = append(out, w)
		}
	}
	return out
}

// Service returns the service namespace/name, or nil.
func (s *State) Service(namespace, name string) *Service { return get(s.byKey, namespace+"/"+name) }

// ServiceByVIP looks up a connection's original destination. svc is non-nil when dst's address is
// a VIP of a service (v4-mapped v6 addresses are unmapped first); ok reports whether dst's port is
// also one of its ports, port being that ServicePort. A VIP on a port the service does not have
// (svc != nil, !ok) should be refused, as kube-proxy does, not passed through.
func (s *State) ServiceByVIP(dst netip.AddrPort) (svc *Service, port ServicePort, ok bool) {
	svc = getIP(s.byVIP, dst.Addr())
	if svc == nil {
		return nil, ServicePort{}, false
	}
	for _, p := range svc.Ports {
		if p.Port == dst.Port() {
			return svc, p, true
		}
	}
	return svc, ServicePort{}, false
}

// Endpoints returns the workloads svc selects, sorted by UID: those with its EndpointIPs when it
// has them, else those of its namespace whose labels include its selector, enrolled or not. A
// service with neither has none.
func (s *State) Endpoints(svc *Service) []*Workload {
	if svc == nil {
		return nil
	}
	return slices.Clone(get(s.endpoints, svc.Key()))
}

// PoliciesFor returns the policies that apply to w (see policy.Policy.AppliesTo).
func (s *State) PoliciesFor(w *Workload) []policy.Policy {
	return policy.Applicable(s.policies, w.Namespace, w.Labels, s.RootNamespace())
}
