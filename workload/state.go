package workload

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"

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
// Invariants, established by NewState and never broken afterwards: workload UIDs, workload IPs,
// service VIPs, node names and policy namespace/name pairs are unique; every workload's node exists;
// every IP is valid and unmapped (a v4-mapped v6 address is stored as v4); lists are sorted (nodes
// by name, workloads by UID, services and policies by namespace/name). Nothing in a State, nor
// anything it returns, may be modified, so any number of goroutines may read it without locks.
//
// The zero State is empty and usable.
type State struct {
	trustDomain spiffeid.TrustDomain
	rootNS      string

	nodes      []Node
	nodeByName map[string]Node

	workloads []*Workload
	byUID     map[string]*Workload
	byIP      map[netip.Addr]*Workload
	byNode    map[string][]*Workload

	services  []*Service
	byKey     map[string]*Service
	byVIP     map[netip.Addr]*Service
	endpoints map[string][]*Workload // by service key

	routes   []*Route
	routesOf map[string][]*Route // by parent service key

	servicesOf map[*Workload][]*Service // the services a workload is an endpoint of
	waypointOf map[*Workload]*Service   // a waypoint's pods: the waypoint (the first, by key)

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
		nodes:       spec.Nodes,
		nodeByName:  make(map[string]Node, len(spec.Nodes)),
		byUID:       make(map[string]*Workload, len(spec.Workloads)),
		byIP:        make(map[netip.Addr]*Workload, len(spec.Workloads)),
		byNode:      make(map[string][]*Workload),
		byKey:       make(map[string]*Service, len(spec.Services)),
		byVIP:       make(map[netip.Addr]*Service, len(spec.Services)),
		endpoints:   make(map[string][]*Workload, len(spec.Services)),
		policies:    spec.Policies,
	}
	slices.SortFunc(s.nodes, func(a, b Node) int { return cmp.Compare(a.Name, b.Name) })
	for _, n := range s.nodes {
		s.nodeByName[n.Name] = n
	}

	for i := range spec.Workloads {
		s.workloads = append(s.workloads, &spec.Workloads[i])
	}
	slices.SortFunc(s.workloads, func(a, b *Workload) int { return cmp.Compare(a.UID, b.UID) })
	for _, w := range s.workloads {
		s.byUID[w.UID] = w
		for _, ip := range w.IPs {
			s.byIP[ip] = w
		}
		s.byNode[w.Node] = append(s.byNode[w.Node], w)
	}

	for i := range spec.Services {
		s.services = append(s.services, &spec.Services[i])
	}
	slices.SortFunc(s.services, func(a, b *Service) int { return cmp.Compare(a.Key(), b.Key()) })
	for _, svc := range s.services {
		s.byKey[svc.Key()] = svc
		for _, vip := range svc.VIPs {
			s.byVIP[vip] = svc
		}
		if svc.EndpointIPs != nil {
			seen := make(map[*Workload]bool, len(svc.EndpointIPs))
			for _, ip := range svc.EndpointIPs {
				if w := s.byIP[ip]; w != nil && !seen[w] {
					seen[w] = true
					s.endpoints[svc.Key()] = append(s.endpoints[svc.Key()], w)
				}
			}
			slices.SortFunc(s.endpoints[svc.Key()], func(a, b *Workload) int { return cmp.Compare(a.UID, b.UID) })
			continue
		}
		if len(svc.Selector) == 0 {
			continue
		}
		for _, w := range s.workloads {
			if w.Namespace == svc.Namespace && selects(svc.Selector, w.Labels) {
				s.endpoints[svc.Key()] = append(s.endpoints[svc.Key()], w)
			}
		}
	}

	s.servicesOf = make(map[*Workload][]*Service)
	s.waypointOf = make(map[*Workload]*Service)
	for _, svc := range s.services { // sorted: each list is too
		for _, w := range s.endpoints[svc.Key()] {
			s.servicesOf[w] = append(s.servicesOf[w], svc)
			if svc.WaypointFor != NotWaypoint && s.waypointOf[w] == nil {
				s.waypointOf[w] = svc
			}
		}
	}

	for i := range spec.Routes {
		s.routes = append(s.routes, &spec.Routes[i])
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

	slices.SortFunc(s.policies, func(a, b policy.Policy) int { return cmp.Compare(a.Key(), b.Key()) })
	return s
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
// input.
func cloneSpec(spec Spec) Spec {
	c := spec
	c.Nodes = slices.Clone(spec.Nodes)
	c.Workloads = make([]Workload, len(spec.Workloads))
	for i, w := range spec.Workloads {
		w.IPs = unmapAll(w.IPs)
		w.Labels = maps.Clone(w.Labels)
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
func (s *State) Workloads() []*Workload { return slices.Clone(s.workloads) }

// Services returns every service, sorted by namespace/name.
func (s *State) Services() []*Service { return slices.Clone(s.services) }

// Policies returns every policy, sorted by namespace/name.
func (s *State) Policies() []policy.Policy { return slices.Clone(s.policies) }

// PolicySet returns every policy, sorted by namespace/name, without copying: what policy.Evaluate
// takes, once per connection, where Policies' copy would be an allocation each time. The slice and
// its policies belong to the State, shared by all its readers: read only, never modify or append.
func (s *State) PolicySet() []policy.Policy { return s.policies[:len(s.policies):len(s.policies)] }

// WorkloadByIP returns the workload that has ip (v4-mapped v6 addresses are unmapped first), or nil.
func (s *State) WorkloadByIP(ip netip.Addr) *Workload { return s.byIP[ip.Unmap()] }

// WorkloadByUID returns the workload with uid, or nil.
func (s *State) WorkloadByUID(uid string) *Workload { return s.byUID[uid] }

// WorkloadsOnNode returns the workloads scheduled on node, sorted by UID, enrolled or not.
func (s *State) WorkloadsOnNode(node string) []*Workload { return slices.Clone(s.byNode[node]) }

// Service returns the service namespace/name, or nil.
func (s *State) Service(namespace, name string) *Service { return s.byKey[namespace+"/"+name] }

// ServiceByVIP looks up a connection's original destination. svc is non-nil when dst's address is
// a VIP of a service (v4-mapped v6 addresses are unmapped first); ok reports whether dst's port is
// also one of its ports, port being that ServicePort. A VIP on a port the service does not have
// (svc != nil, !ok) should be refused, as kube-proxy does, not passed through.
func (s *State) ServiceByVIP(dst netip.AddrPort) (svc *Service, port ServicePort, ok bool) {
	svc = s.byVIP[dst.Addr().Unmap()]
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
	return slices.Clone(s.endpoints[svc.Key()])
}

// PoliciesFor returns the policies that apply to w (see policy.Policy.AppliesTo).
func (s *State) PoliciesFor(w *Workload) []policy.Policy {
	return policy.Applicable(s.policies, w.Namespace, w.Labels, s.RootNamespace())
}
