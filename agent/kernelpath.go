package agent

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/amesh-dev/amesh/netns"
	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/redirect"
	"github.com/amesh-dev/amesh/workload"
)

// maxTracked bounds the open short-circuited connections whose start the agent remembers.
const maxTracked = 1 << 16

// runKernelPath keeps the kernel short-circuit alive while the agent runs: a heartbeat well
// inside redirect.HeartbeatTTL (when it stops, short-circuited connects stop with it and pods
// fail closed as before), and one access line per short-circuited connection from the programs'
// events. It returns when ctx is done, after withdrawing every cached verdict.
func (a *Agent) runKernelPath(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() {
		err := a.red.KernelEvents(ctx, func(ev redirect.ConnEvent) {
			e := a.kernelEntry(ev)
			if !ev.Closed {
				a.kernelOpen.opened(ev)
				a.opened(&e)
				return
			}
			kc, ok := a.kernelOpen.closed(ev.Cookie)
			start := kc.start
			e.sent, e.received = int64(ev.BytesSent), int64(ev.BytesReceived)
			if !ok {
				// Closed without ever being established: refused or unreachable.
				a.record(&e, 0, "error", "connection not established")
				return
			}
			e.opened, e.inherited = true, kc.inherited
			if kc.revoked != nil {
				a.record(&e, time.Duration(ev.MonotonicNanos-start), "revoked", revokedReason(kc.revoked))
				return
			}
			a.record(&e, time.Duration(ev.MonotonicNanos-start), "ok", "")
		})
		if err != nil {
			a.log.Warn("kernel path events stopped", "err", err)
		}
	})
	t := time.NewTicker(redirect.HeartbeatTTL / 5)
	defer t.Stop()
	for {
		if err := a.red.Heartbeat(); err != nil {
			a.log.Warn("kernel path heartbeat", "err", err)
		}
		select {
		case <-ctx.Done():
			if !a.released.Load() {
				// Stopping: no verdict may outlive the agent that decided it. A successor that
				// took over keeps them: it is alive, and they are current.
				a.red.FlushKernelPaths()
			}
			wg.Wait()
			return
		case <-t.C:
		}
	}
}

// kernelConn is an open short-circuited connection, as its open event told it.
type kernelConn struct {
	start     uint64 // monotonic open time
	src, dst  netip.AddrPort
	revoked   *policy.Decision // set when a change revoked it
	inherited bool             // opened under the agent this one took over from
}

// kernelEntry is the access entry of a kernel-path connection's event.
func (a *Agent) kernelEntry(ev redirect.ConnEvent) accessEntry {
	e := accessEntry{direction: "outbound", path: "kernel", src: ev.Src.Addr(), dst: ev.Dst}
	if p := a.podByIP(ev.Src.Addr()); p != nil {
		e.srcID = p.id.String()
	}
	if p := a.podByIP(ev.Dst.Addr()); p != nil {
		e.dstID = p.id.String()
	}
	return e
}

// kernelConns are the open short-circuited connections, by the client socket's cookie: the
// events goroutine adds and removes them, revocation reads and marks them.
type kernelConns struct {
	mu    sync.Mutex
	conns map[uint64]*kernelConn
}

func (k *kernelConns) opened(ev redirect.ConnEvent) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.conns == nil || len(k.conns) >= maxTracked {
		// First use, or close events were lost (counted as events_dropped): start over.
		k.conns = map[uint64]*kernelConn{}
	}
	k.conns[ev.Cookie] = &kernelConn{start: ev.MonotonicNanos, src: ev.Src, dst: ev.Dst}
}

func (k *kernelConns) closed(cookie uint64) (kernelConn, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.conns[cookie]
	if !ok {
		return kernelConn{}, false
	}
	delete(k.conns, cookie)
	return *c, true
}

// revokeKernel decides every open short-circuited connection again against st and aborts the
// ones now denied from the kernel side (SOCK_DESTROY on the client's socket, in its pod's
// netns): no agent is in their data path to reset them. It returns how many it aborted.
func (a *Agent) revokeKernel(st *workload.State) int {
	type victim struct {
		kc  *kernelConn
		src *pod
		d   policy.Decision
	}
	var victims []victim
	a.kernelOpen.mu.Lock()
	for _, kc := range a.kernelOpen.conns {
		if kc.revoked != nil {
			continue
		}
		src, dst := a.podByIP(kc.src.Addr()), a.podByIP(kc.dst.Addr())
		if src == nil || dst == nil {
			continue // the pod left: its netns, and the connection, go with it
		}
		if d := a.decideAgain(st, src.id.String(), dst.w, kc.dst.Port()); !d.Allowed {
			kc.revoked = &d
			victims = append(victims, victim{kc, src, d})
		}
	}
	a.kernelOpen.mu.Unlock()
	for _, v := range victims {
		if err := netns.DestroyTCP(v.src.w.Netns, v.kc.src, v.kc.dst); err != nil {
			a.log.Warn("revoked kernel-path connection not aborted", "src", v.kc.src, "dst", v.kc.dst, "err", err)
		}
	}
	return len(victims)
}
