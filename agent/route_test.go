package agent

import (
	"cmp"
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/workload"
)

// routeState: two nodes; web and api pods, a waypoint (wp, for all traffic) with one pod,
// services with and without waypoints, and references that do not resolve.
func routeState(t *testing.T) *workload.State {
	t.Helper()
	ip := netip.MustParseAddr
	st, err := workload.NewState(workload.Spec{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		Nodes:       []workload.Node{{Name: "n1", IP: ip("10.250.0.1")}, {Name: "n2", IP: ip("10.250.0.2")}},
		Workloads: []workload.Workload{
			{Name: "web", Namespace: "shop", ServiceAccount: "web", Node: "n1", IPs: []netip.Addr{ip("10.20.1.2")}, Labels: map[string]string{"app": "web"}},
			{Name: "api-1", Namespace: "shop", ServiceAccount: "api", Node: "n1", IPs: []netip.Addr{ip("10.20.1.3")}, Labels: map[string]string{"app": "api"}},
			{Name: "api-2", Namespace: "shop", ServiceAccount: "api", Node: "n2", IPs: []netip.Addr{ip("10.20.2.3")}, Labels: map[string]string{"app": "api"}},
			{Name: "legacy", Namespace: "old", ServiceAccount: "default", Node: "n2", IPs: []netip.Addr{ip("10.20.2.9")}, Mode: workload.ModeNone},
			{Name: "wp-1", Namespace: "shop", ServiceAccount: "wp", Node: "n2", IPs: []netip.Addr{ip("10.20.2.20")}, Mode: workload.ModeNone, Labels: map[string]string{"app": "wp"}},
			{Name: "db", Namespace: "shop", ServiceAccount: "db", Node: "n1", IPs: []netip.Addr{ip("10.20.1.30")}, Labels: map[string]string{"app": "db"}, Waypoint: "wp"},
			{Name: "lost", Namespace: "shop", ServiceAccount: "db", Node: "n1", IPs: []netip.Addr{ip("10.20.1.31")}, Waypoint: "nosuch"},
		},
		Services: []workload.Service{
			{Name: "api", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.10")}, Ports: []workload.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "api"}},
			{Name: "empty", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.11")}, Ports: []workload.ServicePort{{Port: 80, TargetPort: 80}}, Selector: map[string]string{"app": "nothing"}},
			{Name: "wp", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.20")}, Ports: []workload.ServicePort{{Port: 15008}}, Selector: map[string]string{"app": "wp"}, WaypointFor: workload.WaypointForAll},
			{Name: "wpless", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.21")}, Ports: []workload.ServicePort{{Port: 15008}}, Selector: map[string]string{"app": "nothing"}, WaypointFor: workload.WaypointForService},
			{Name: "reviews", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.12")}, Ports: []workload.ServicePort{{Port: 80, TargetPort: 9080}}, Selector: map[string]string{"app": "api"}, Waypoint: "wp"},
			{Name: "orphan", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.13")}, Ports: []workload.ServicePort{{Port: 80}}, Selector: map[string]string{"app": "api"}, Waypoint: "wpless"},
			{Name: "typo", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.14")}, Ports: []workload.ServicePort{{Port: 80}}, Selector: map[string]string{"app": "api"}, Waypoint: "wq"},
			{Name: "dbs", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.15")}, Ports: []workload.ServicePort{{Port: 5432}}, Selector: map[string]string{"app": "db"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestResolve(t *testing.T) {
	st := routeState(t)
	ap := netip.MustParseAddrPort
	tests := []struct {
		name    string
		from    string // source workload, "" for web
		orig    string
		n       uint64
		dst     string // workload name, "" for none
		addr    string
		refused bool
		via     string // the waypoint, "" for none
	}{
		{"pod IP goes to that pod", "", "10.20.2.3:8080", 0, "api-2", "10.20.2.3:8080", false, ""},
		{"service VIP is balanced (first)", "", "10.96.0.10:80", 0, "api-1", "10.20.1.3:8080", false, ""},
		{"service VIP is balanced (next)", "", "10.96.0.10:80", 1, "api-2", "10.20.2.3:8080", false, ""},
		{"unknown service port is refused", "", "10.96.0.10:81", 0, "", "", true, ""},
		{"service without endpoints is refused", "", "10.96.0.11:80", 0, "", "", true, ""},
		{"unmeshed pod is reached as itself", "", "10.20.2.9:80", 0, "legacy", "10.20.2.9:80", false, ""},
		{"outside the cluster passes through", "", "192.0.2.1:443", 0, "", "192.0.2.1:443", false, ""},
		{"service with a waypoint goes to it, asking for the VIP", "", "10.96.0.12:80", 0, "wp-1", "10.96.0.12:80", false, "shop/wp"},
		{"the waypoint's own traffic goes to an endpoint", "wp-1", "10.96.0.12:80", 1, "api-2", "10.20.2.3:9080", false, ""},
		{"pod with a workload waypoint, by its IP", "", "10.20.1.30:5432", 0, "wp-1", "10.20.1.30:5432", false, "shop/wp"},
		{"pod with a workload waypoint, by a service without one", "", "10.96.0.15:5432", 0, "wp-1", "10.20.1.30:5432", false, "shop/wp"},
		{"the waypoint's own traffic to that pod", "wp-1", "10.20.1.30:5432", 0, "db", "10.20.1.30:5432", false, ""},
		{"waypoint without pods refuses", "", "10.96.0.13:80", 0, "", "", true, ""},
		{"waypoint that is not there refuses", "", "10.96.0.14:80", 0, "", "", true, ""},
		{"pod naming a waypoint that is not there refuses", "", "10.20.1.31:80", 0, "", "", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := st.WorkloadByUID("shop/" + cmp.Or(tt.from, "web"))
			rt := resolve(st, src, ap(tt.orig), tt.n)
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
			via := ""
			if rt.via != nil {
				via = rt.via.Key()
				if want := rt.dst.IPs[0].String() + ":15008"; rt.hop.String() != want {
					t.Errorf("hop %s, want %s", rt.hop, want)
				}
			}
			if got != tt.dst || rt.addr.String() != tt.addr || via != tt.via {
				t.Errorf("resolve(%s) = %s %s via %q, want %s %s via %q", tt.orig, got, rt.addr, via, tt.dst, tt.addr, tt.via)
			}
		})
	}
}

// TestWaypointDecision: a port a waypoint covers takes mesh traffic from the waypoint's
// identity only; plaintext and every other identity are refused; a workload that allows
// bypass, and ports no waypoint covers, are left to policy.
func TestWaypointDecision(t *testing.T) {
	st := routeState(t)
	const wp, web = "spiffe://cluster.local/ns/shop/sa/wp", "spiffe://cluster.local/ns/shop/sa/web"
	api1 := st.WorkloadByUID("shop/api-1")
	bypass := *api1
	bypass.AllowWaypointBypass = true
	for _, tt := range []struct {
		name           string
		src            string
		w              *workload.Workload
		port           uint16
		covered, allow bool
	}{
		{"from the waypoint", wp, api1, 9080, true, true},
		{"skipping it", web, api1, 9080, true, false},
		{"plaintext", "", api1, 9080, true, false},
		{"a port the waypoint does not cover", web, api1, 8080, false, false},
		{"workload waypoint, any port", web, st.WorkloadByUID("shop/db"), 22, true, false},
		{"workload waypoint, from it", wp, st.WorkloadByUID("shop/db"), 22, true, true},
		{"bypass allowed", web, &bypass, 9080, false, false},
		{"waypoint that does not resolve", wp, st.WorkloadByUID("shop/lost"), 80, true, false},
		{"service waypoint without pods", web, st.WorkloadByUID("shop/api-2"), 80, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, covered := waypointDecision(st, tt.src, tt.w, tt.port)
			if covered != tt.covered || (covered && d.Allowed != tt.allow) {
				t.Errorf("waypointDecision = %+v, covered %v; want covered %v, allowed %v", d, covered, tt.covered, tt.allow)
			}
		})
	}
}
