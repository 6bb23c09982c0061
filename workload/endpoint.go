package workload

import (
	"cmp"
	"net/netip"
)

// PickEndpoint chooses the backend of the n-th connection to a service VIP: round robin over the
// endpoints that have an address of the VIP's family (an IPv4 VIP is served by IPv4 endpoints,
// whatever their other addresses), skipping the others, so a workload without IPs is never chosen.
// It returns the endpoint and the address to dial: the endpoint's first IP of that family, and
// port.TargetPort (port.Port when zero). With an invalid vip any family will do. ok is false when
// no endpoint qualifies.
//
// It allocates nothing; the caller keeps n (an atomic counter per service, say).
func PickEndpoint(endpoints []*Workload, vip netip.Addr, port ServicePort, n uint64) (w *Workload, addr netip.AddrPort, ok bool) {
	vip = vip.Unmap()
	eligible := uint64(0)
	for _, e := range endpoints {
		if _, ok := addrFor(e, vip); ok {
			eligible++
		}
	}
	if eligible == 0 {
		return nil, netip.AddrPort{}, false
	}
	k := n % eligible
	for _, e := range endpoints {
		ip, ok := addrFor(e, vip)
		if !ok {
			continue
		}
		if k == 0 {
			return e, netip.AddrPortFrom(ip, cmp.Or(port.TargetPort, port.Port)), true
		}
		k--
	}
	panic("unreachable")
}

// addrFor returns w's first address of vip's family (any family when vip is invalid).
func addrFor(w *Workload, vip netip.Addr) (netip.Addr, bool) {
	if w == nil {
		return netip.Addr{}, false
	}
	for _, ip := range w.IPs {
		ip = ip.Unmap()
		if !vip.IsValid() || ip.Is4() == vip.Is4() {
			return ip, true
		}
	}
	return netip.Addr{}, false
}
