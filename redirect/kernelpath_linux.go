package redirect

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// The kernel short-circuit: for a same-node connection the agent has authorized once, later
// connects from the same pod to the same destination go straight to the destination pod, with
// no agent in the data path. The agent's decision is cached in local_verdicts; connect4 uses it
// only while the agent's heartbeat is fresh (so with the agent dead, connections are refused as
// before); sockops lets exactly the new connection's 4-tuple past the destination's sk_lookup
// and reports its open and close (with byte counts) on a ring buffer for the access log.

// Heartbeat tells the programs the agent is alive; call it well within HeartbeatTTL.
func (r *Redirector) Heartbeat() error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return fmt.Errorf("redirect: heartbeat: %w", err)
	}
	if err := r.objs.Heartbeat.Update(uint32(0), uint64(ts.Nano()), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("redirect: heartbeat: %w", err)
	}
	return nil
}

// AllowKernelPath caches the agent's "allowed" for connections from the pod with netns cookie to
// dst (a destination pod on this node, not a service VIP: the kernel path does no load
// balancing).
func (r *Redirector) AllowKernelPath(netnsCookie uint64, dst netip.AddrPort) error {
	k := verdictKey(netnsCookie, dst)
	if err := r.objs.LocalVerdicts.Update(&k, uint8(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("redirect: allow kernel path to %s: %w", dst, err)
	}
	return nil
}

// ForgetKernelPath withdraws the cached verdict for connections from the pod with netns cookie
// to dst, if there is one.
func (r *Redirector) ForgetKernelPath(netnsCookie uint64, dst netip.AddrPort) error {
	k := verdictKey(netnsCookie, dst)
	if err := r.objs.LocalVerdicts.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("redirect: forget kernel path to %s: %w", dst, err)
	}
	return nil
}

// FlushKernelPaths forgets every cached verdict: the next connections go through the agent and
// are decided again (on every state or policy change). Open connections are not cut.
func (r *Redirector) FlushKernelPaths() error {
	var k ameshVerdictKey
	var keys []ameshVerdictKey
	var v uint8
	it := r.objs.LocalVerdicts.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	var errs []error
	for i := range keys {
		if err := r.objs.LocalVerdicts.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(append(errs, it.Err())...); err != nil {
		return fmt.Errorf("redirect: flush kernel paths: %w", err)
	}
	return nil
}

// RevalidateKernelPaths decides every cached verdict again: keep is asked for each cached pair
// (the client pod's netns cookie, the destination) and the verdicts it does not keep are
// forgotten, so that their next connections go through the agent. A state change that touches
// no cached pair (pods elsewhere, unrelated policies) leaves the kernel path as it was, where
// FlushKernelPaths would send every same-node connection through the agent again. It returns
// how many it forgot. Open connections are not cut.
func (r *Redirector) RevalidateKernelPaths(keep func(netnsCookie uint64, dst netip.AddrPort) bool) (int, error) {
	var k ameshVerdictKey
	var v uint8
	var drop []ameshVerdictKey
	it := r.objs.LocalVerdicts.Iterate()
	for it.Next(&k, &v) {
		p := k.Port>>8 | k.Port<<8
		if !keep(k.Netns, netip.AddrPortFrom(netip.AddrFrom16(k.Dst).Unmap(), p)) {
			drop = append(drop, k)
		}
	}
	errs := []error{it.Err()}
	for i := range drop {
		if err := r.objs.LocalVerdicts.Delete(&drop[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return len(drop), fmt.Errorf("redirect: revalidate kernel paths: %w", err)
	}
	return len(drop), nil
}

func verdictKey(netnsCookie uint64, dst netip.AddrPort) ameshVerdictKey {
	p := dst.Port()
	return ameshVerdictKey{Netns: netnsCookie, Dst: dst.Addr().As16(), Port: p>>8 | p<<8}
}

// ConnEvent is the open or close of a short-circuited connection.
type ConnEvent struct {
	Closed         bool
	Cookie         uint64 // socket cookie of the client's socket
	Netns          uint64 // netns cookie of the client pod
	Src, Dst       netip.AddrPort
	BytesSent      uint64 // acknowledged bytes the client sent
	BytesReceived  uint64
	MonotonicNanos uint64 // CLOCK_MONOTONIC when it happened
}

// KernelEvents calls fn for every event until ctx is done.
func (r *Redirector) KernelEvents(ctx context.Context, fn func(ConnEvent)) error {
	rd, err := ringbuf.NewReader(r.objs.Events)
	if err != nil {
		return fmt.Errorf("redirect: read events: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	defer stop()
	defer rd.Close()
	for {
		rec, err := rd.Read()
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("redirect: read events: %w", err)
		}
		var ev ameshConnEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
			continue
		}
		fn(ConnEvent{
			Closed:         ev.Kind == 2,
			Cookie:         ev.Cookie,
			Netns:          ev.Netns,
			Src:            netip.AddrPortFrom(netip.AddrFrom16(ev.Src).Unmap(), ev.Sport),
			Dst:            netip.AddrPortFrom(netip.AddrFrom16(ev.Dst).Unmap(), ev.Dport),
			BytesSent:      ev.BytesSent,
			BytesReceived:  ev.BytesReceived,
			MonotonicNanos: ev.TsNs,
		})
	}
}

// ProbeKernelPath checks, on the loaded programs, what the kernel short-circuit needs beyond
// what Open already required: the sockops helpers that arm the close callback and emit events,
// a heartbeat round trip through its map, and a reader on the events ring buffer. The agent's
// automatic same-node mode uses the short-circuit only when this passes.
func (r *Redirector) ProbeKernelPath() error {
	for _, h := range []struct {
		name string
		fn   asm.BuiltinFunc
	}{
		{"bpf_sock_ops_cb_flags_set (Linux 4.16+)", asm.FnSockOpsCbFlagsSet},
		{"bpf_ringbuf_output (Linux 5.8+)", asm.FnRingbufOutput},
		{"bpf_get_netns_cookie for sockops (Linux 5.15+)", asm.FnGetNetnsCookie},
	} {
		if err := features.HaveProgramHelper(ebpf.SockOps, h.fn); err != nil {
			return fmt.Errorf("redirect: kernel path: sockops programs lack %s: %w", h.name, err)
		}
	}
	if err := r.Heartbeat(); err != nil {
		return fmt.Errorf("redirect: kernel path: %w", err)
	}
	var ts uint64
	if err := r.objs.Heartbeat.Lookup(uint32(0), &ts); err != nil || ts == 0 {
		return fmt.Errorf("redirect: kernel path: heartbeat did not round-trip (%d): %v", ts, err)
	}
	rd, err := ringbuf.NewReader(r.objs.Events)
	if err != nil {
		return fmt.Errorf("redirect: kernel path: events ring buffer: %w", err)
	}
	return rd.Close()
}
