package workload

import (
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/policy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func exampleState(t *testing.T) *State {
	t.Helper()
	data, err := os.ReadFile("testdata/state.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse("testdata/state.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func uids(ws []*Workload) string {
	var out []string
	for _, w := range ws {
		out = append(out, w.UID)
	}
	return strings.Join(out, " ")
}

func TestLookups(t *testing.T) {
	s := exampleState(t)
	ip := netip.MustParseAddr
	for _, tt := range []struct {
		ip   string
		want string // UID, "" for none
	}{
		{"10.20.1.2", "shop/web-1"},
		{"10.20.1.3", "shop/api-1"},
		{"fd00::1:3", "shop/api-1"},
		{"::ffff:10.20.1.3", "shop/api-1"},
		{"10.20.2.9", "6f1c1b2e-legacy-1"},
		{"10.96.0.10", ""}, // a VIP is no workload
		{"10.10.0.1", ""},  // nor a node
	} {
		w := s.WorkloadByIP(ip(tt.ip))
		if got := uidOf(w); got != tt.want {
			t.Errorf("WorkloadByIP(%s) = %q, want %q", tt.ip, got, tt.want)
		}
	}
	if w := s.WorkloadByUID("shop/api-2"); w == nil || w.Node != "node2" {
		t.Errorf("WorkloadByUID(shop/api-2) = %+v", w)
	}
	if w := s.WorkloadByUID("shop/nope"); w != nil {
		t.Errorf("WorkloadByUID(shop/nope) = %+v", w)
	}
	for node, want := range map[string]string{
		"node1": "shop/api-1 shop/web-1",
		"node2": "6f1c1b2e-legacy-1 shop/api-2",
		"node9": "",
	} {
		if got := uids(s.WorkloadsOnNode(node)); got != want {
			t.Errorf("WorkloadsOnNode(%s) = %q, want %q", node, got, want)
		}
	}
	if n, ok := s.Node("node2"); !ok || n.IP != ip("10.10.0.2") {
		t.Errorf("Node(node2) = %+v, %v", n, ok)
	}
	if _, ok := s.Node("node9"); ok {
		t.Error("Node(node9) found")
	}

	for _, tt := range []struct {
		dst     string
		svc     string
		port    ServicePort
		ok      bool
		comment string
	}{
		{"10.96.0.10:80", "shop/api", ServicePort{80, 8080}, true, "VIP and port"},
		{"[::ffff:10.96.0.10]:80", "shop/api", ServicePort{80, 8080}, true, "v4-mapped"},
		{"10.96.0.10:8080", "shop/api", ServicePort{}, false, "VIP, target port is not a service port"},
		{"10.96.0.11:80", "", ServicePort{}, false, "not a VIP"},
		{"10.20.1.3:8080", "", ServicePort{}, false, "a pod IP"},
	} {
		svc, port, ok := s.ServiceByVIP(netip.MustParseAddrPort(tt.dst))
		got := ""
		if svc != nil {
			got = svc.Key()
		}
		if got != tt.svc || port != tt.port || ok != tt.ok {
			t.Errorf("%s: ServiceByVIP(%s) = %q, %+v, %v; want %q, %+v, %v", tt.comment, tt.dst, got, port, ok, tt.svc, tt.port, tt.ok)
		}
	}
	api := s.Service("shop", "api")
	if got := uids(s.Endpoints(api)); got != "shop/api-1 shop/api-2" {
		t.Errorf("Endpoints(api) = %q", got)
	}
	if got := s.Endpoints(nil); got != nil {
		t.Errorf("Endpoints(nil) = %v", got)
	}
	if s.Service("shop", "web") != nil {
		t.Error("Service(shop, web) found")
	}

	keys := func(ps []policy.Policy) string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Key())
		}
		return strings.Join(out, " ")
	}
	if got := keys(s.PoliciesFor(s.WorkloadByUID("shop/api-1"))); got != "amesh-system/deny-ssh shop/api-allow-web" {
		t.Errorf("PoliciesFor(api-1) = %q", got)
	}
	if got := keys(s.PoliciesFor(s.WorkloadByUID("shop/web-1"))); got != "amesh-system/deny-ssh" {
		t.Errorf("PoliciesFor(web-1) = %q", got)
	}

	web := s.WorkloadByUID("shop/web-1")
	id, err := web.ID(s.TrustDomain())
	if err != nil || id.String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("web-1 ID = %v, %v", id, err)
	}
	api1 := s.WorkloadByUID("shop/api-1")
	for _, tt := range []struct {
		src     string
		port    uint16
		allowed bool
	}{
		{id.String(), 8080, true},
		{id.String(), 9090, false},
		{"spiffe://cluster.local/ns/legacy/sa/default", 8080, false},
		{"", 8080, false},
	} {
		d := policy.Evaluate(s.PolicySet(), policy.Request{SrcPrincipal: tt.src, DstNamespace: api1.Namespace, DstLabels: api1.Labels, DstPort: tt.port}, s.RootNamespace())
		if d.Allowed != tt.allowed {
			t.Errorf("Evaluate(%q → api-1:%d) = %+v, want allowed=%v", tt.src, tt.port, d, tt.allowed)
		}
	}
	if d := policy.Evaluate(s.PolicySet(), policy.Request{SrcPrincipal: id.String(), DstNamespace: "shop", DstLabels: web.Labels, DstPort: 22}, s.RootNamespace()); d.Allowed || d.Policy != "amesh-system/deny-ssh" {
		t.Errorf("Evaluate(→ web-1:22) = %+v, want denied by the mesh-wide policy", d)
	}
	if !web.Enrolled() || web.AcceptsPlaintext() {
		t.Errorf("web-1 enrolled=%v plaintext=%v", web.Enrolled(), web.AcceptsPlaintext())
	}
}

func uidOf(w *Workload) string {
	if w == nil {
		return ""
	}
	return w.UID
}

func TestZeroState(t *testing.T) {
	var s State
	if s.WorkloadByIP(netip.MustParseAddr("10.0.0.1")) != nil || len(s.Workloads()) != 0 || s.RootNamespace() != policy.DefaultRootNamespace {
		t.Error("zero State is not empty")
	}
	if svc, _, ok := s.ServiceByVIP(netip.MustParseAddrPort("10.0.0.1:80")); svc != nil || ok {
		t.Error("zero State has a VIP")
	}
	if d := policy.Evaluate(s.PolicySet(), policy.Request{DstNamespace: "x"}, s.RootNamespace()); !d.Allowed {
		t.Errorf("zero State denies: %+v", d)
	}
}

func validSpec() Spec {
	return Spec{
		TrustDomain: td,
		Nodes:       []Node{{Name: "node1", IP: netip.MustParseAddr("10.10.0.1")}},
		Workloads: []Workload{{
			Name: "web-1", Namespace: "shop", ServiceAccount: "web", Node: "node1",
			IPs: []netip.Addr{netip.MustParseAddr("::ffff:10.20.1.2")}, Labels: map[string]string{"app": "web"},
		}},
		Services: []Service{{
			Name: "web", Namespace: "shop", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
			Ports: []ServicePort{{Port: 80}}, Selector: map[string]string{"app": "web"},
		}},
		Policies: []policy.Policy{{Name: "p", Namespace: "shop", Rules: []policy.Rule{{}}}},
	}
}

func TestNewState(t *testing.T) {
	spec := validSpec()
	s, err := NewState(spec)
	if err != nil {
		t.Fatal(err)
	}
	w := s.WorkloadByIP(netip.MustParseAddr("10.20.1.2"))
	if w == nil || w.UID != "shop/web-1" || w.IPs[0] != netip.MustParseAddr("10.20.1.2") {
		t.Fatalf("defaults and unmapping: %+v", w)
	}
	if p := s.Service("shop", "web").Ports[0]; p.TargetPort != 80 {
		t.Errorf("TargetPort default: %+v", p)
	}
	// The State shares no memory with its Spec.
	spec.Workloads[0].Labels["app"] = "changed"
	spec.Workloads[0].IPs[0] = netip.MustParseAddr("10.0.0.99")
	spec.Services[0].Selector["app"] = "changed"
	spec.Policies[0].Rules[0].From = []policy.Source{{Principals: []string{"*"}}}
	if w.Labels["app"] != "web" || s.WorkloadByIP(netip.MustParseAddr("10.20.1.2")) != w ||
		s.Service("shop", "web").Selector["app"] != "web" || s.Policies()[0].Rules[0].From != nil {
		t.Error("changing the Spec changed the State")
	}
	if got := uids(s.Endpoints(s.Service("shop", "web"))); got != "shop/web-1" {
		t.Errorf("endpoints = %q", got)
	}

	tests := []struct {
		name string
		mod  func(*Spec)
		msg  string
	}{
		{"no trust domain", func(s *Spec) { s.TrustDomain = spiffeid.TrustDomain{} }, "trustDomain: is required"},
		{"zero ip", func(s *Spec) { s.Workloads[0].IPs = []netip.Addr{{}} }, "workload shop/web-1: ip is not set"},
		{"zoned ip", func(s *Spec) { s.Workloads[0].IPs = []netip.Addr{netip.MustParseAddr("fe80::1%eth0")} }, "has a zone"},
		{"unspecified vip", func(s *Spec) { s.Services[0].VIPs = []netip.Addr{netip.IPv4Unspecified()} }, "not a unicast address"},
		{"bad mode", func(s *Spec) { s.Workloads[0].Mode = 7 }, "mode Mode(7) is not ambient or none"},
		{"bad inbound mode", func(s *Spec) { s.Workloads[0].InboundMode = 7 }, "inboundMode InboundMode(7)"},
		{"unknown node", func(s *Spec) { s.Workloads[0].Node = "node2" }, `node "node2" is not in nodes`},
		{"duplicate workload", func(s *Spec) {
			s.Workloads = append(s.Workloads, Workload{UID: "shop/web-1", Name: "x", Namespace: "shop", ServiceAccount: "x", Node: "node1"})
		}, `duplicate uid "shop/web-1" (also at workloads[0])`},
		{"duplicate node", func(s *Spec) { s.Nodes = append(s.Nodes, Node{Name: "node1", IP: netip.MustParseAddr("10.10.0.2")}) }, "node node1: duplicate node name (also at nodes[0])"},
		{"bad policy", func(s *Spec) { s.Policies[0].Action = "NOPE" }, `policy shop/p: action: "NOPE" is not ALLOW or DENY`},
		{"bad waypoint", func(s *Spec) { s.Workloads[0].Waypoint = "Way Point" }, "waypoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := validSpec()
			tt.mod(&spec)
			s, err := NewState(spec)
			if err == nil || s != nil {
				t.Fatalf("NewState = %v, %v; want an error", s, err)
			}
			if !strings.HasPrefix(err.Error(), "workload: invalid state: ") || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("NewState error %q, want %q", err, tt.msg)
			}
		})
	}
}

func stateWith(t *testing.T, ws ...Workload) *State {
	t.Helper()
	s, err := NewState(Spec{
		TrustDomain: td,
		Nodes: []Node{
			{Name: "node1", IP: netip.MustParseAddr("10.10.0.1")},
			{Name: "node2", IP: netip.MustParseAddr("10.10.0.2")},
		},
		Workloads: ws,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func recv(t *testing.T, ch <-chan *State) *State {
	t.Helper()
	select {
	case s, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no state within 5s")
	}
	return nil
}

func TestStore(t *testing.T) {
	s1 := stateWith(t, Workload{Name: "a", Namespace: "ns", ServiceAccount: "sa", Node: "node1"})
	s2 := stateWith(t)
	s3 := stateWith(t)

	st := NewStore(nil)
	if st.Load() == nil || len(st.Load().Workloads()) != 0 {
		t.Fatal("NewStore(nil) does not hold an empty state")
	}
	st.Replace(s1)
	if st.Load() != s1 {
		t.Fatal("Load after Replace")
	}

	ch, cancel := st.Subscribe()
	if got := recv(t, ch); got != s1 {
		t.Fatal("Subscribe does not deliver the current state first")
	}
	// A slow reader sees only the newest state.
	st.Replace(s2)
	st.Replace(s3)
	if got := recv(t, ch); got != s3 {
		t.Fatalf("coalesced delivery = %p, want s3 %p", got, s3)
	}
	select {
	case s := <-ch:
		t.Fatalf("extra delivery %p", s)
	default:
	}
	st.Replace(s1)
	if got := recv(t, ch); got != s1 {
		t.Fatal("delivery after drain")
	}

	cancel()
	cancel() // idempotent
	if _, ok := <-ch; ok {
		t.Fatal("channel open after cancel")
	}
	st.Replace(s2) // no subscriber: must not block or panic

	defer func() {
		if recover() == nil {
			t.Error("Replace(nil) did not panic")
		}
	}()
	st.Replace(nil)
}

func TestStoreConcurrent(t *testing.T) {
	states := []*State{stateWith(t), stateWith(t), stateWith(t)}
	st := NewStore(states[0])
	var wg sync.WaitGroup
	for range 4 {
		ch, cancel := st.Subscribe()
		wg.Go(func() {
			defer cancel()
			for range 50 {
				<-ch
			}
		})
	}
	wg.Go(func() {
		for i := range 1000 {
			st.Replace(states[i%len(states)])
			_ = st.Load().Workloads()
		}
	})
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	// Subscribers that read fewer states than were sent are fine; make sure they all finish.
	deadline := time.After(10 * time.Second)
	for {
		select {
		case <-done:
			return
		case <-deadline:
			t.Fatal("subscribers stuck")
		default:
			st.Replace(states[0])
			time.Sleep(time.Millisecond)
		}
	}
}
