package agent

import (
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/workload"
)

func TestResolve(t *testing.T) {
	ip := netip.MustParseAddr
	st, err := workload.NewState(workload.Spec{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		Nodes:       []workload.Node{{Name: "n1", IP: ip("10.250.0.1")}, {Name: "n2", IP: ip("10.250.0.2")}},
		Workloads: []workload.Workload{
			{Name: "web", Namespace: "shop", ServiceAccount: "web", Node: "n1", IPs: []netip.Addr{ip("10.20.1.2")}, Labels: map[string]string{"app": "web"}},
			{Name: "api-1", Namespace: "shop", ServiceAccount: "api", Node: "n1", IPs: []netip.Addr{ip("10.20.1.3")}, Labels: map[string]string{"app": "api"}},
			{Name: "api-2", Namespace: "shop", ServiceAccount: "api", Node: "n2", IPs: []netip.Addr{ip("10.20.2.3")}, Labels: map[string]string{"app": "api"}},
			{Name: "legacy", Namespace: "old", ServiceAccount: "default", Node: "n2", IPs: []netip.Addr{ip("10.20.2.9")}, Mode: workload.ModeNone},
		},
		Services: []workload.Service{
			{Name: "api", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.10")}, Ports: []workload.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "api"}},
			{Name: "empty", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.11")}, Ports: []workload.ServicePort{{Port: 80, TargetPort: 80}}, Selector: map[string]string{"app": "nothing"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	tests := []struct {
		name    string
		orig    string
		n       uint64
		dst     string // workload name, "" for none
		addr    string
		refused bool
	}{
		{"pod IP goes to that pod", "10.20.2.3:8080", 0, "api-2", "10.20.2.3:8080", false},
		{"service VIP is balanced (first)", "10.96.0.10:80", 0, "api-1", "10.20.1.3:8080", false},
		{"service VIP is balanced (next)", "10.96.0.10:80", 1, "api-2", "10.20.2.3:8080", false},
		{"unknown service port is refused", "10.96.0.10:81", 0, "", "", true},
		{"service without endpoints is refused", "10.96.0.11:80", 0, "", "", true},
		{"unmeshed pod is reached as itself", "10.20.2.9:80", 0, "legacy", "10.20.2.9:80", false},
		{"outside the cluster passes through", "192.0.2.1:443", 0, "", "192.0.2.1:443", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := resolve(st, ap(tt.orig), tt.n)
			if (rt.refuse != "") != tt.refused {
				t.Fatalf("refuse = %q, want refused=%v", rt.refuse, tt.refused)
			}
			if tt.refused {
				return
			}
			got := ""
			if rt.dst != nil {
				got = rt.dst.Name
			}
			if got != tt.dst || rt.addr.String() != tt.addr {
				t.Errorf("resolve(%s) = %s %s, want %s %s", tt.orig, got, rt.addr, tt.dst, tt.addr)
			}
		})
	}
}
