package redirect

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// SetProbeExemptions makes the kubelet-probe exemptions of the pod at podIP exactly those from
// any of nodeIPs to any of ports: such plaintext connections reach the app directly, not the
// agent, even when the pod is STRICT (Istio ambient lets kubelet probes through the same way). It
// is narrow on purpose: only the node's own addresses (a packet from elsewhere claiming one is
// dropped as martian before it gets here) and only the ports the pod spec's probes name. With
// no ports or no node IPs the pod has no exemption.
func (r *Redirector) SetProbeExemptions(podIP netip.Addr, nodeIPs []netip.Addr, ports []uint16) error {
	want := map[ameshProbeKey]bool{}
	for _, n := range nodeIPs {
		for _, p := range ports {
			want[probeKey(podIP, n, p)] = true
		}
	}
	var errs []error
	pod := podIP.Unmap().As16()
	var k ameshProbeKey
	var v uint8
	var stale []ameshProbeKey
	it := r.objs.ProbeExempt.Iterate()
	for it.Next(&k, &v) {
		if k.Pod == pod && !want[k] {
			stale = append(stale, k)
		}
	}
	errs = append(errs, it.Err())
	for i := range stale {
		if err := r.objs.ProbeExempt.Delete(&stale[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for k := range want {
		if err := r.objs.ProbeExempt.Update(&k, uint8(1), ebpf.UpdateAny); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redirect: probe exemptions of %s: %w", podIP, err)
	}
	return nil
}

func probeKey(pod, node netip.Addr, port uint16) ameshProbeKey {
	return ameshProbeKey{Pod: pod.Unmap().As16(), Node: node.Unmap().As16(), Port: port}
}
