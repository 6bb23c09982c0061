package workload

import (
	"net/netip"
	"testing"
)

func TestPickEndpoint(t *testing.T) {
	mk := func(uid string, ips ...string) *Workload {
		w := &Workload{UID: uid}
		for _, ip := range ips {
			w.IPs = append(w.IPs, netip.MustParseAddr(ip))
		}
		return w
	}
	a := mk("a", "10.0.0.1")
	b := mk("b") // no IP: never chosen
	c := mk("c", "fd00::3", "10.0.0.3")
	d := mk("d", "fd00::4")
	eps := []*Workload{a, b, c, d, nil}
	port := ServicePort{Port: 80, TargetPort: 8080}
	v4 := netip.MustParseAddr("10.96.0.1")
	v6 := netip.MustParseAddr("fd00:96::1")

	tests := []struct {
		name string
		eps  []*Workload
		vip  netip.Addr
		port ServicePort
		n    uint64
		want string // "" = none
		addr string
	}{
		{"v4 n=0", eps, v4, port, 0, "a", "10.0.0.1:8080"},
		{"v4 n=1 skips b, picks c's v4 address", eps, v4, port, 1, "c", "10.0.0.3:8080"},
		{"v4 n=2 wraps (d has no v4)", eps, v4, port, 2, "a", "10.0.0.1:8080"},
		{"v4 huge n", eps, v4, port, ^uint64(0), "c", "10.0.0.3:8080"}, // 2^64-1 is odd
		{"v4-mapped vip counts as v4", eps, netip.MustParseAddr("::ffff:10.96.0.1"), port, 0, "a", "10.0.0.1:8080"},
		{"v6 n=0", eps, v6, port, 0, "c", "[fd00::3]:8080"},
		{"v6 n=1", eps, v6, port, 1, "d", "[fd00::4]:8080"},
		{"v6 n=2 wraps", eps, v6, port, 2, "c", "[fd00::3]:8080"},
		{"no vip: any family, first address", eps, netip.Addr{}, port, 2, "d", "[fd00::4]:8080"},
		{"target port defaults to port", eps, v4, ServicePort{Port: 80}, 0, "a", "10.0.0.1:80"},
		{"no endpoints", nil, v4, port, 0, "", ""},
		{"only endpoints without IPs", []*Workload{b, b}, v4, port, 3, "", ""},
		{"no endpoint of the family", []*Workload{a}, v6, port, 0, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, addr, ok := PickEndpoint(tt.eps, tt.vip, tt.port, tt.n)
			if tt.want == "" {
				if ok || w != nil || addr.IsValid() {
					t.Errorf("PickEndpoint = %v, %v, %v; want none", w, addr, ok)
				}
				return
			}
			if !ok || w == nil || w.UID != tt.want || addr.String() != tt.addr {
				t.Errorf("PickEndpoint = %v, %v, %v; want %s %s", uidOf(w), addr, ok, tt.want, tt.addr)
			}
		})
	}
}

func TestPickEndpointRoundRobin(t *testing.T) {
	eps := []*Workload{
		{UID: "a", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
		{UID: "b"},
		{UID: "c", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.3")}},
		{UID: "d", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.4")}},
	}
	counts := map[string]int{}
	for n := range uint64(300) {
		w, _, _ := PickEndpoint(eps, netip.MustParseAddr("10.96.0.1"), ServicePort{Port: 80}, n)
		counts[w.UID]++
	}
	if counts["a"] != 100 || counts["c"] != 100 || counts["d"] != 100 || counts["b"] != 0 {
		t.Errorf("distribution %v, want 100 each for a, c, d", counts)
	}
	if a := testing.AllocsPerRun(100, func() {
		PickEndpoint(eps, netip.MustParseAddr("10.96.0.1"), ServicePort{Port: 80}, 7)
	}); a != 0 {
		t.Errorf("PickEndpoint allocates %v times", a)
	}
}
