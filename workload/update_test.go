package workload

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/amesh-dev/amesh/policy"
)

// dump describes everything a reader of st can see, for comparing two states: every list and
// every index, looked up by every key the test uses.
func dump(st *State, ips []netip.Addr) string {
	var b strings.Builder
	fmt.Fprintf(&b, "nodes %v\n", st.Nodes())
	for _, w := range st.Workloads() {
		fmt.Fprintf(&b, "w %+v services [", *w)
		for _, svc := range st.ServicesOf(w) {
			b.WriteString(svc.Key() + " ")
		}
		fmt.Fprintf(&b, "] waypoint %v\n", st.WaypointOf(w) != nil && st.WaypointOf(w).Key() != "")
		if wp := st.WaypointOf(w); wp != nil {
			fmt.Fprintf(&b, "  waypoint %s\n", wp.Key())
		}
	}
	for _, svc := range st.Services() {
		fmt.Fprintf(&b, "s %+v endpoints %s\n", *svc, uids(st.Endpoints(svc)))
	}
	for _, n := range st.Nodes() {
		fmt.Fprintf(&b, "on %s: %s\n", n.Name, uids(st.WorkloadsOnNode(n.Name)))
	}
	for _, ip := range ips {
		svc, _, _ := st.ServiceByVIP(netip.AddrPortFrom(ip, 80))
		key := ""
		if svc != nil {
			key = svc.Key()
		}
		fmt.Fprintf(&b, "ip %s: %s %s\n", ip, uidOf(st.WorkloadByIP(ip)), key)
	}
	for _, p := range st.PolicySet() {
		fmt.Fprintf(&b, "p %s\n", p.Key())
	}
	return b.String()
}

// model is a random cluster the test changes step by step: Apply of each step's Update must
// give the State that Build gives from the whole model.
type model struct {
	r         *rand.Rand
	nodes     []Node
	workloads map[string]Workload
	services  map[string]Service
	policies  []policy.Policy
	pool      []netip.Addr // the IPs workloads, endpoints and VIPs are drawn from
}

func (m *model) spec() Spec {
	spec := Spec{TrustDomain: td, Nodes: slices.Clone(m.nodes), Policies: slices.Clone(m.policies)}
	for _, k := range slices.Sorted(maps.Keys(m.workloads)) {
		spec.Workloads = append(spec.Workloads, m.workloads[k])
	}
	for _, k := range slices.Sorted(maps.Keys(m.services)) {
		spec.Services = append(spec.Services, m.services[k])
	}
	return spec
}

// taken returns the IPs and VIPs in use, but those of the workload uid and service key.
func (m *model) taken(uid, key string) map[netip.Addr]bool {
	t := map[netip.Addr]bool{}
	for k, w := range m.workloads {
		if k != uid {
			for _, ip := range w.IPs {
				t[ip] = true
			}
		}
	}
	for k, s := range m.services {
		if k != key {
			for _, ip := range s.VIPs {
				t[ip] = true
			}
		}
	}
	return t
}

func (m *model) freeIPs(uid, key string, n int) []netip.Addr {
	taken := m.taken(uid, key)
	var out []netip.Addr
	for _, i := range m.r.Perm(len(m.pool)) {
		if ip := m.pool[i]; !taken[ip] && len(out) < n {
			out = append(out, ip)
		}
	}
	return out
}

var (
	testNamespaces = []string{"a", "b"}
	testApps       = []string{"web", "api", "db"}
)

func (m *model) randomWorkload(uid string) Workload {
	ns := testNamespaces[m.r.IntN(len(testNamespaces))]
	w := Workload{
		UID: uid, Name: "pod-" + uid, Namespace: ns, ServiceAccount: testApps[m.r.IntN(3)],
		Node: m.nodes[m.r.IntN(len(m.nodes))].Name, Labels: map[string]string{"app": testApps[m.r.IntN(3)]},
		IPs: m.freeIPs(uid, "", 1+m.r.IntN(2)), Mode: Mode(m.r.IntN(2)),
	}
	if m.r.IntN(4) == 0 {
		w.Waypoint = "wp"
	}
	return w
}

func (m *model) randomService(key string) Service {
	ns, name, _ := strings.Cut(key, "/")
	svc := Service{Name: name, Namespace: ns, VIPs: m.freeIPs("", key, 1), Ports: []ServicePort{{Port: 80, TargetPort: 8080}}}
	switch m.r.IntN(3) {
	case 0: // selector
		svc.Selector = map[string]string{"app": testApps[m.r.IntN(3)]}
	default: // endpoint IPs, some of nobody
		svc.EndpointIPs = []netip.Addr{}
		for range m.r.IntN(4) {
			svc.EndpointIPs = append(svc.EndpointIPs, m.pool[m.r.IntN(len(m.pool))])
		}
	}
	if name == "wp" {
		svc.WaypointFor = WaypointForAll
	}
	return svc
}

// step makes a random change to the model and returns it as an Update.
func (m *model) step() Update {
	u := Update{Workloads: map[string]*Workload{}, Services: map[string]*Service{}}
	for range 1 + m.r.IntN(3) {
		switch m.r.IntN(6) {
		case 0, 1, 2: // a workload added, replaced or removed
			uid := fmt.Sprintf("uid-%02d", m.r.IntN(24))
			if _, ok := m.workloads[uid]; ok && m.r.IntN(3) == 0 {
				delete(m.workloads, uid)
				u.Workloads[uid] = nil
				continue
			}
			w := m.randomWorkload(uid)
			if len(w.IPs) == 0 {
				continue
			}
			m.workloads[uid] = w
			u.Workloads[uid] = &w
		case 3, 4: // a service
			key := testNamespaces[m.r.IntN(2)] + "/" + []string{"web", "api", "db", "wp"}[m.r.IntN(4)]
			if _, ok := m.services[key]; ok && m.r.IntN(3) == 0 {
				delete(m.services, key)
				u.Services[key] = nil
				continue
			}
			svc := m.randomService(key)
			if len(svc.VIPs) == 0 {
				continue
			}
			m.services[key] = svc
			u.Services[key] = &svc
		case 5: // the policies
			m.policies = nil
			for i := range m.r.IntN(3) {
				m.policies = append(m.policies, policy.Policy{Name: fmt.Sprintf("p%d", i), Namespace: testNamespaces[i%2], Rules: []policy.Rule{{}}})
			}
			u.Policies, u.SetPolicies = slices.Clone(m.policies), true
		}
	}
	return u
}

// TestApplyMatchesBuild applies 2,000 random updates, each of a few workloads, services or the
// policies, to states of a small cluster (IPs are drawn from 40 so that they pass from one
// workload to another, endpoints name pods that come and go, a waypoint appears and goes):
// after each, the State Apply derived must read exactly as the one Build makes of the whole.
func TestApplyMatchesBuild(t *testing.T) {
	for seed := range uint64(20) {
		m := &model{r: rand.New(rand.NewPCG(seed, 1)), workloads: map[string]Workload{}, services: map[string]Service{},
			nodes: []Node{{Name: "n1", IP: netip.MustParseAddr("10.250.0.1")}, {Name: "n2", IP: netip.MustParseAddr("10.250.0.2")}}}
		for i := range 40 {
			m.pool = append(m.pool, netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}))
		}
		st, err := NewState(m.spec())
		if err != nil {
			t.Fatal(err)
		}
		for i := range 100 {
			u := m.step()
			next, err := st.Apply(u)
			if err != nil {
				t.Fatalf("seed %d step %d: Apply(%v): %v", seed, i, u, err)
			}
			want, err := NewState(m.spec())
			if err != nil {
				t.Fatalf("seed %d step %d: NewState: %v", seed, i, err)
			}
			if got, exp := dump(next, m.pool), dump(want, m.pool); got != exp {
				t.Fatalf("seed %d step %d: Apply(%v) reads\n%s\nBuild reads\n%s", seed, i, u, got, exp)
			}
			// The parent is untouched.
			st = next
		}
	}
}

// TestApplyRefuses: an update that would break an invariant is refused whole, naming the
// problem, and the State it was applied to stays as it was.
func TestApplyRefuses(t *testing.T) {
	base := validSpec()
	st, err := NewState(base)
	if err != nil {
		t.Fatal(err)
	}
	before := dump(st, []netip.Addr{netip.MustParseAddr("10.20.1.2"), netip.MustParseAddr("10.96.0.1")})
	web := st.Workloads()[0]
	tests := []struct {
		name string
		u    Update
		want string
	}{
		{"ip of another workload", Update{Workloads: map[string]*Workload{"x": {UID: "x", Name: "x", Namespace: "shop", ServiceAccount: "x", Node: "node1", IPs: web.IPs}}}, "is also workload"},
		{"ip that is a vip", Update{Workloads: map[string]*Workload{"x": {UID: "x", Name: "x", Namespace: "shop", ServiceAccount: "x", Node: "node1", IPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")}}}}, "vip"},
		{"unknown node", Update{Workloads: map[string]*Workload{"x": {UID: "x", Name: "x", Namespace: "shop", ServiceAccount: "x", Node: "node9", IPs: []netip.Addr{netip.MustParseAddr("10.20.1.9")}}}}, "node"},
		{"under another key", Update{Workloads: map[string]*Workload{"y": {UID: "x", Name: "x", Namespace: "shop", ServiceAccount: "x", Node: "node1", IPs: []netip.Addr{netip.MustParseAddr("10.20.1.9")}}}}, "not under its uid"},
		{"invalid name", Update{Workloads: map[string]*Workload{"x": {UID: "x", Name: "X_", Namespace: "shop", ServiceAccount: "x", Node: "node1", IPs: []netip.Addr{netip.MustParseAddr("10.20.1.9")}}}}, "name"},
		{"vip of a workload", Update{Services: map[string]*Service{"shop/api": {Name: "api", Namespace: "shop", VIPs: web.IPs, Ports: []ServicePort{{Port: 80}}}}}, "ip"},
		{"node removed under its workloads", Update{Nodes: []Node{}, SetNodes: true}, "workloads are on it"},
		{"invalid policy", Update{Policies: []policy.Policy{{Name: "p", Namespace: "shop", Action: "MAYBE"}}, SetPolicies: true}, "policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next, err := st.Apply(tt.u)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Apply = %v, %v; want an error with %q", next, err, tt.want)
			}
			if after := dump(st, []netip.Addr{netip.MustParseAddr("10.20.1.2"), netip.MustParseAddr("10.96.0.1")}); after != before {
				t.Errorf("the state changed:\n%s\nwas\n%s", after, before)
			}
		})
	}
}

// BenchmarkApply: one pod replaced (its old version removed, a new one with a new IP added, and
// the EndpointIPs of its service updated) in a State of 10,000 workloads and 1,000 services.
func BenchmarkApply(b *testing.B) {
	spec, ip := scaleSpec()
	st, err := NewState(spec)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	next := 10000
	for b.Loop() {
		i := next % 10000
		old := st.WorkloadByUID(fmt.Sprintf("uid-%06d", i))
		w := *old
		w.IPs = []netip.Addr{ip(next + 10000)}
		svc := *st.Service(fmt.Sprintf("ns-%02d", (i%1000)%100), fmt.Sprintf("app-%d", i%1000))
		svc.EndpointIPs = slices.DeleteFunc(slices.Clone(svc.EndpointIPs), func(a netip.Addr) bool { return a == old.IPs[0] })
		svc.EndpointIPs = append(svc.EndpointIPs, w.IPs[0])
		slices.SortFunc(svc.EndpointIPs, netip.Addr.Compare)
		st, err = st.Apply(Update{Workloads: map[string]*Workload{w.UID: &w}, Services: map[string]*Service{svc.Key(): &svc}})
		if err != nil {
			b.Fatal(err)
		}
		next++
	}
}

// BenchmarkWorkloadByIP is the lookup of every connection's peer and of every endpoint a
// service change resolves, in a 10,000-workload State.
func BenchmarkWorkloadByIP(b *testing.B) {
	spec, ip := scaleSpec()
	st, err := NewState(spec)
	if err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		if st.WorkloadByIP(ip(i%10000)) == nil {
			b.Fatal("not found")
		}
		i += 7919 // a prime: lookups spread over the tree
	}
}

// scaleSpec is 10,000 workloads on 100 nodes and 1,000 services of 10 endpoints each, and the
// IP of the i-th workload.
func scaleSpec() (Spec, func(int) netip.Addr) {
	spec := Spec{TrustDomain: td}
	for k := range 100 {
		spec.Nodes = append(spec.Nodes, Node{Name: fmt.Sprintf("node-%03d", k), IP: netip.AddrFrom4([4]byte{10, 251, 0, byte(k + 1)})})
	}
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(200 + i>>16), byte(i >> 8), byte(i)}) }
	for i := range 10000 {
		spec.Workloads = append(spec.Workloads, Workload{UID: fmt.Sprintf("uid-%06d", i), Name: fmt.Sprintf("pod-%06d", i), Namespace: fmt.Sprintf("ns-%02d", i%100),
			ServiceAccount: "sa", Node: spec.Nodes[i%100].Name, IPs: []netip.Addr{ip(i)}, Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%1000)}})
	}
	for j := range 1000 {
		svc := Service{Name: fmt.Sprintf("app-%d", j), Namespace: fmt.Sprintf("ns-%02d", j%100), VIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(j >> 8), byte(j)})}, Ports: []ServicePort{{Port: 80, TargetPort: 8080}}, EndpointIPs: []netip.Addr{}}
		for i := j; i < 10000; i += 1000 {
			svc.EndpointIPs = append(svc.EndpointIPs, ip(i))
		}
		spec.Services = append(spec.Services, svc)
	}
	return spec, ip
}
