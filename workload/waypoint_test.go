package workload

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// waypointSpec: namespace shop with a waypoint "wp" (for services) and "wpw" (for workloads),
// their pods, and services/workloads that name them in every way.
func waypointSpec() Spec {
	w := func(name, ip, waypoint string, labels map[string]string) Workload {
		return Workload{Name: name, Namespace: "shop", ServiceAccount: name, Node: "n1", IPs: []netip.Addr{netip.MustParseAddr(ip)}, Mode: ModeAmbient, Labels: labels, Waypoint: waypoint}
	}
	svc := func(name, vip, waypoint string, forTraffic WaypointTraffic, selector map[string]string) Service {
		return Service{Name: name, Namespace: "shop", VIPs: []netip.Addr{netip.MustParseAddr(vip)}, Ports: []ServicePort{{Port: 80, TargetPort: 8080}}, Selector: selector, Waypoint: waypoint, WaypointFor: forTraffic}
	}
	return Spec{
		TrustDomain: td,
		Nodes:       []Node{{Name: "n1", IP: netip.MustParseAddr("10.250.0.1")}},
		Workloads: []Workload{
			w("wp-pod", "10.0.0.2", "wp", map[string]string{"app": "wp"}), // a waypoint's pod names it too (namespace label): ignored
			w("wpw-pod", "10.0.0.3", "", map[string]string{"app": "wpw"}),
			w("api", "10.0.0.4", "wpw", map[string]string{"app": "api"}),
			w("web", "10.0.0.5", "", map[string]string{"app": "web"}),
			w("lost", "10.0.0.6", "nosuch", map[string]string{"app": "lost"}),
			w("out", "10.0.0.7", WaypointOptOut, map[string]string{"app": "api"}),
		},
		Services: []Service{
			svc("wp", "10.96.0.2", "wp", WaypointForService, map[string]string{"app": "wp"}),
			svc("wpw", "10.96.0.3", "", WaypointForWorkload, map[string]string{"app": "wpw"}),
			svc("api", "10.96.0.4", "wp", NotWaypoint, map[string]string{"app": "api"}),
			svc("web", "10.96.0.5", "", NotWaypoint, map[string]string{"app": "web"}),
			svc("webwp", "10.96.0.6", "wpw", NotWaypoint, map[string]string{"app": "web"}), // workload waypoint: not for service traffic
			svc("notwp", "10.96.0.7", "web", NotWaypoint, map[string]string{"app": "web"}), // names a service that is no waypoint
		},
	}
}

func TestWaypointResolution(t *testing.T) {
	st, err := NewState(waypointSpec())
	if err != nil {
		t.Fatal(err)
	}
	name := func(s *Service) string {
		if s == nil {
			return ""
		}
		return s.Key()
	}
	for _, tc := range []struct {
		svc, want string
		bad       bool
	}{
		{svc: "api", want: "shop/wp"},
		{svc: "web", want: ""},
		{svc: "webwp", want: ""},
		{svc: "wp", want: ""}, // a waypoint never goes through a waypoint
		{svc: "notwp", bad: true},
	} {
		got, err := st.ServiceWaypoint(st.Service("shop", tc.svc))
		if tc.bad != (err != nil) || (err != nil && !errors.Is(err, ErrWaypoint)) || name(got) != tc.want {
			t.Errorf("ServiceWaypoint(%s) = %q, %v; want %q, error %v", tc.svc, name(got), err, tc.want, tc.bad)
		}
	}
	for _, tc := range []struct {
		w, want string
		bad     bool
	}{
		{w: "api", want: "shop/wpw"},
		{w: "web", want: ""},
		{w: "out", want: ""},
		{w: "wp-pod", want: ""}, // a waypoint's pod
		{w: "lost", bad: true},
	} {
		got, err := st.WorkloadWaypoint(st.WorkloadByUID("shop/" + tc.w))
		if tc.bad != (err != nil) || name(got) != tc.want {
			t.Errorf("WorkloadWaypoint(%s) = %q, %v; want %q, error %v", tc.w, name(got), err, tc.want, tc.bad)
		}
	}
	if got := name(st.WaypointOf(st.WorkloadByUID("shop/wp-pod"))); got != "shop/wp" {
		t.Errorf("WaypointOf(wp-pod) = %q, want shop/wp", got)
	}
	if got := st.WaypointOf(st.WorkloadByUID("shop/api")); got != nil {
		t.Errorf("WaypointOf(api) = %s, want none", got.Key())
	}

	for _, tc := range []struct {
		w    string
		port uint16
		want []string
		bad  bool
	}{
		{w: "api", port: 8080, want: []string{"shop/wpw", "shop/wp"}}, // its own, and service api's
		{w: "api", port: 9000, want: []string{"shop/wpw"}},            // no service sends there
		{w: "out", port: 8080, want: []string{"shop/wp"}},             // opted out of its own, not of api's
		{w: "web", port: 8080, bad: true},                             // service notwp names no waypoint
		{w: "lost", port: 8080, bad: true},
	} {
		got, err := st.WaypointsCovering(st.WorkloadByUID("shop/"+tc.w), tc.port)
		var names []string
		for _, s := range got {
			names = append(names, s.Key())
		}
		if tc.bad != (err != nil) || !slices.Equal(names, tc.want) {
			t.Errorf("WaypointsCovering(%s, %d) = %v, %v; want %v, error %v", tc.w, tc.port, names, err, tc.want, tc.bad)
		}
	}
	if errs := st.WaypointErrors(); len(errs) != 2 {
		t.Errorf("WaypointErrors: %v, want the two bad references (notwp, lost)", errs)
	}
}

func TestCheckWaypointReferences(t *testing.T) {
	spec := waypointSpec()
	var p Problems
	CheckWaypointReferences(&spec, &p)
	err := p.Err("state")
	if err == nil {
		t.Fatal("no problem reported")
	}
	for _, want := range []string{"workload shop/lost", "no such service", "service shop/notwp", "not a waypoint"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// TestWaypointOfAnEarlierState: a *Workload held from an earlier state (as an enrolled pod
// keeps it) is looked up by UID in this one.
func TestWaypointOfAnEarlierState(t *testing.T) {
	old, err := NewState(waypointSpec())
	if err != nil {
		t.Fatal(err)
	}
	cur, err := NewState(waypointSpec())
	if err != nil {
		t.Fatal(err)
	}
	api := old.WorkloadByUID("shop/api")
	wps, err := cur.WaypointsCovering(api, 8080)
	if err != nil || len(wps) != 2 {
		t.Errorf("WaypointsCovering(api of an earlier state) = %v, %v; want its two waypoints", wps, err)
	}
	if cur.WaypointOf(old.WorkloadByUID("shop/wp-pod")) == nil {
		t.Errorf("WaypointOf(wp-pod of an earlier state) = nil")
	}
}
