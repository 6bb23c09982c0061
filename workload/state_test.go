package workload

import (
	"net/netip"
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

func uids(ws []*Workload) string {
	var out []string
	for _, w := range ws {
		out = append(out, w.UID)
	}
	return strings.Join(out, " ")
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
