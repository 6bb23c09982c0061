package xds

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/workload"
)

// TestFollow: each state of the store, and only a state in which the waypoint is one, becomes
// a new snapshot version.
func TestFollow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ca, err := identity.NewCA(td, identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cache := identity.NewCache(ca, nil)
	defer cache.Close()
	state := func(vip string, waypointFor workload.WaypointTraffic) *workload.State {
		ip := netip.MustParseAddr
		st, err := workload.NewState(workload.Spec{
			TrustDomain: td,
			Nodes:       []workload.Node{{Name: "n1", IP: ip("10.250.0.1")}},
			Workloads: []workload.Workload{
				{Name: "wp", Namespace: "shop", ServiceAccount: "waypoint", Node: "n1", IPs: []netip.Addr{ip("10.0.0.2")}, Mode: workload.ModeNone, Labels: map[string]string{"app": "wp"}},
				{Name: "api", Namespace: "shop", ServiceAccount: "api", Node: "n1", IPs: []netip.Addr{ip("10.0.0.3")}, Labels: map[string]string{"app": "api"}},
			},
			Services: []workload.Service{
				{Name: "waypoint", Namespace: "shop", VIPs: []netip.Addr{ip("10.96.0.2")}, Ports: []workload.ServicePort{{Port: 15008}}, Selector: map[string]string{"app": "wp"}, WaypointFor: waypointFor},
				{Name: "api", Namespace: "shop", VIPs: []netip.Addr{ip(vip)}, Ports: []workload.ServicePort{{Port: 80, TargetPort: 8080}}, Selector: map[string]string{"app": "api"}, Waypoint: "waypoint"},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	srv := NewServer(slog.New(slog.DiscardHandler))
	store := workload.NewStore(state("10.96.0.10", workload.WaypointForService))
	done := make(chan struct{})
	fctx, stop := context.WithCancel(ctx)
	go func() { defer close(done); srv.Follow(fctx, store, "shop", "waypoint", cache, waypointID) }()
	defer func() { stop(); <-done }()
	wait := func(version string) {
		t.Helper()
		for srv.Version() != version {
			if ctx.Err() != nil {
				t.Fatalf("version %q, want %q", srv.Version(), version)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("1")
	store.Replace(state("10.96.0.11", workload.WaypointForService))
	wait("2")
	store.Replace(state("10.96.0.12", workload.NotWaypoint)) // no longer a waypoint: kept
	time.Sleep(200 * time.Millisecond)
	if v := srv.Version(); v != "2" {
		t.Errorf("a state in which it is no waypoint made version %s, want 2 kept", v)
	}
}
