package agent

import (
	"fmt"
	"net/netip"

	"github.com/amesh-dev/amesh/tunnel"
	"github.com/amesh-dev/amesh/workload"
)

// route is where an outbound connection goes: a decision of the state view alone (no I/O), so
// it is table-tested.
type route struct {
	// dst is the workload it reaches, nil when it leaves the mesh; with via, the waypoint's pod.
	dst *workload.Workload
	// addr is the address to reach: an endpoint's for a service VIP, else the original; with
	// via, the destination the waypoint is asked for (the HBONE :authority): the service VIP
	// and port for a service waypoint, the pod's address for a workload waypoint.
	addr netip.AddrPort
	// via is the waypoint the connection goes through (over HBONE to dst, never spliced or
	// passed through), nil for none.
	via *workload.Service
	// hop is, with via, the waypoint pod's HBONE address (of addr's family).
	hop netip.AddrPort
	// refuse, when set, is why the connection is refused instead.
	refuse string
}

// resolve picks the destination of a connection from src (nil when unknown) to orig: a service
// VIP is load-balanced over its endpoints (round robin by n), a workload IP is itself,
// anything else passes through unmeshed. A destination with a waypoint goes to one of the
// waypoint's pods instead (as ztunnel: the service's waypoint first, then, for the endpoint
// chosen, its workload waypoint), unless src is that waypoint's pod; a waypoint named but
// not resolvable refuses the connection: never a silent direct path.
func resolve(st *workload.State, src *workload.Workload, orig netip.AddrPort, n uint64) route {
	if svc, port, ok := st.ServiceByVIP(orig); svc != nil {
		if !ok {
			return route{refuse: fmt.Sprintf("service %s has no port %d", svc.Key(), orig.Port())}
		}
		wp, err := st.ServiceWaypoint(svc)
		if err != nil {
			return route{refuse: err.Error()}
		}
		if wp != nil && st.WaypointOf(src) != wp {
			return viaWaypoint(st, wp, orig, n)
		}
		ep, addr, ok := workload.PickEndpoint(st.Endpoints(svc), orig.Addr(), port, n)
		if !ok {
			return route{refuse: fmt.Sprintf("service %s has no endpoint", svc.Key())}
		}
		return toWorkload(st, src, ep, addr, n)
	}
	return toWorkload(st, src, st.WorkloadByIP(orig.Addr()), orig, n)
}

// toWorkload routes to workload w (nil: outside the mesh) at addr, through its workload
// waypoint if it has one.
func toWorkload(st *workload.State, src, w *workload.Workload, addr netip.AddrPort, n uint64) route {
	if w == nil {
		return route{addr: addr}
	}
	wp, err := st.WorkloadWaypoint(w)
	if err != nil {
		return route{refuse: err.Error()}
	}
	if wp != nil && st.WaypointOf(src) != wp {
		return viaWaypoint(st, wp, addr, n)
	}
	return route{dst: w, addr: addr}
}

// viaWaypoint sends to one of wp's pods (round robin by n), asking it for authority.
func viaWaypoint(st *workload.State, wp *workload.Service, authority netip.AddrPort, n uint64) route {
	ep, at, ok := workload.PickEndpoint(st.Endpoints(wp), authority.Addr(), workload.ServicePort{Port: tunnel.HBONEPort}, n)
	if !ok {
		return route{refuse: fmt.Sprintf("waypoint %s has no pod to send to (refused: never sent around it)", wp.Key())}
	}
	return route{dst: ep, addr: authority, via: wp, hop: at}
}

// forwardedFor is the RFC 7239 node of the source pod (IPv6 quoted and bracketed).
func forwardedFor(podIP netip.Addr) string {
	if podIP.Is6() && !podIP.Is4In6() {
		return `"[` + podIP.String() + `]"`
	}
	return podIP.String()
}

// baggage describes the source workload in W3C baggage, with the keys ztunnel uses.
func baggage(w *workload.Workload) string {
	return "k8s.namespace.name=" + w.Namespace + ",k8s.pod.name=" + w.Name + ",service.name=" + w.ServiceAccount
}

// localPod is the destination pod when it is enrolled on this node, else nil.
func (a *Agent) localPod(rt route) *pod {
	if rt.dst == nil || !rt.dst.Enrolled() || rt.dst.Node != a.cfg.Node {
		return nil
	}
	return a.podByIP(rt.addr.Addr())
}
