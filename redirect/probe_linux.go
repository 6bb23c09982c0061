package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/amesh-dev/amesh/netns"
	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// setupProbeSource records the node's netns (the agent's own) for connect4 and puts
// ProbeSource on its lo, so that sockets may be bound to it.
func (r *Redirector) setupProbeSource() error {
	self, err := netns.SelfCookie()
	if err != nil {
		return fmt.Errorf("redirect: own netns cookie: %w", err)
	}
	if err := r.objs.NodeNetns.Update(uint32(0), self, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("redirect: node netns: %w", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("redirect: probe source: find lo: %w", err)
	}
	addr := &netlink.Addr{IPNet: netlink.NewIPNet(net.IP(ProbeSource.AsSlice()))}
	if err := netlink.AddrReplace(lo, addr); err != nil {
		return fmt.Errorf("redirect: probe source: add %s to lo: %w", ProbeSource, err)
	}
	return nil
}

// removeProbeSource takes ProbeSource off the node's lo (Uninstall).
func removeProbeSource() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("redirect: probe source: find lo: %w", err)
	}
	addr := &netlink.Addr{IPNet: netlink.NewIPNet(net.IP(ProbeSource.AsSlice()))}
	if err := netlink.AddrDel(lo, addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("redirect: probe source: remove %s from lo: %w", ProbeSource, err)
	}
	return nil
}

// SetProbeExemptions makes the kubelet-probe exemptions of the pod at podIP exactly ports: the
// node's own TCP connects to those ports leave from ProbeSource (connect4), and plaintext from
// ProbeSource to them reaches the app directly, not the agent, even when the pod is STRICT
// (Istio ambient lets kubelet probes through the same way). It is narrow on purpose: not every
// address of the node (NodePort traffic SNATed to it, a hostNetwork process bound to it), only
// connects the node makes itself; and only the ports the pod spec's probes name. With no ports
// the pod has no exemption. IPv4 only: an IPv6 pod's probes are refused under STRICT for now.
func (r *Redirector) SetProbeExemptions(podIP netip.Addr, ports []uint16) error {
	pod := podIP.Unmap().As16()
	wantExempt := map[ameshProbeKey]bool{}
	wantDst := map[ameshProbeDst]bool{}
	if podIP.Unmap().Is4() {
		for _, p := range ports {
			wantExempt[ameshProbeKey{Pod: pod, Node: ProbeSource.As16(), Port: p}] = true
			wantDst[ameshProbeDst{Pod: pod, Port: p}] = true
		}
	}
	err := errors.Join(
		syncPodKeys(r.objs.ProbeExempt, wantExempt, func(k ameshProbeKey) bool { return k.Pod == pod }),
		syncPodKeys(r.objs.ProbeDsts, wantDst, func(k ameshProbeDst) bool { return k.Pod == pod }),
	)
	if err != nil {
		return fmt.Errorf("redirect: probe exemptions of %s: %w", podIP, err)
	}
	return nil
}

// syncPodKeys makes the keys of m that mine selects exactly want.
func syncPodKeys[K comparable](m *ebpf.Map, want map[K]bool, mine func(K) bool) error {
	var errs []error
	var k K
	var v uint8
	var stale []K
	it := m.Iterate()
	for it.Next(&k, &v) {
		if mine(k) && !want[k] {
			stale = append(stale, k)
		}
	}
	errs = append(errs, it.Err())
	for i := range stale {
		if err := m.Delete(&stale[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for k := range want {
		if err := m.Update(&k, uint8(1), ebpf.UpdateAny); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
