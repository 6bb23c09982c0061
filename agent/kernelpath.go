package agent

import (
	"context"
	"sync"
	"time"

	"github.com/amesh-dev/amesh/redirect"
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
		opened := map[uint64]uint64{} // socket cookie -> monotonic open time
		err := a.red.KernelEvents(ctx, func(ev redirect.ConnEvent) {
			if !ev.Closed {
				if len(opened) >= maxTracked {
					clear(opened) // close events were lost (counted as events_dropped): start over
				}
				opened[ev.Cookie] = ev.MonotonicNanos
				return
			}
			start, ok := opened[ev.Cookie]
			delete(opened, ev.Cookie)
			e := accessEntry{direction: "outbound", path: "kernel", src: ev.Src.Addr(), dst: ev.Dst,
				sent: int64(ev.BytesSent), received: int64(ev.BytesReceived)}
			if p := a.podByIP(ev.Src.Addr()); p != nil {
				e.srcID = p.id.String()
			}
			if p := a.podByIP(ev.Dst.Addr()); p != nil {
				e.dstID = p.id.String()
			}
			if !ok {
				// Closed without ever being established: refused or unreachable.
				e.log(a.access, 0, "error", "connection not established")
				return
			}
			e.log(a.access, time.Duration(ev.MonotonicNanos-start), "ok", "")
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
			a.red.FlushKernelPaths()
			wg.Wait()
			return
		case <-t.C:
		}
	}
}
