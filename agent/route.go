package agent

import (
	"fmt"
	"net/netip"

	"github.com/amesh-dev/amesh/workload"
)

// route is where an outbound connection goes: a decision of the state view alone (no I/O), so
// it is table-tested.
type route struct {
	// dst is the workload it reaches, nil when it leaves the mesh.
	dst *workload.Workload
	// addr is the address to reach: an endpoint's for a service VIP, else the original.
	addr netip.AddrPort
	// refuse, when set, is why the connection is refused instead.
	refuse string
}

// resolve picks the destination of a connection from src to orig: a service VIP is
// load-balanced over its endpoints (round robin by n), a workload IP is itself, anything else
// passes through unmeshed.
func resolve(st *workload.State, orig netip.AddrPort, n uint64) route {
	if svc, port, ok := st.ServiceByVIP(orig); svc != nil {
		if !ok {
			return route{refuse: fmt.Sprintf("service %s has no port %d", svc.Key(), orig.Port())}
		}
		ep, addr, ok := workload.PickEndpoint(st.Endpoints(svc), orig.Addr(), port, n)
		if !ok {
			return route{refuse: fmt.Sprintf("service %s has no endpoint", svc.Key())}
		}
		return route{dst: ep, addr: addr}
	}
	return route{dst: st.WorkloadByIP(orig.Addr()), addr: orig}
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
