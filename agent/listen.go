package agent

import (
	"context"
	"errors"
	"net"
	"time"
)

// acceptor is what serve needs of a listener (a *net.TCPListener; tests inject errors).
type acceptor interface {
	AcceptTCP() (*net.TCPConn, error)
}

// Accept backoff bounds: as net/http's Server, from 5 ms doubling to a second.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// serve accepts on one of a pod's listeners until it closes, handling each connection on its
// own goroutine, counted for the drain on shutdown. Any other accept error (EMFILE when the
// process is out of descriptors, ENOBUFS, an aborted handshake) is counted, logged and retried
// with backoff: a pod's listener must not stay dead because a peer once exhausted a resource.
func (a *Agent) serve(ctx context.Context, p *pod, ln acceptor, handle func(context.Context, *pod, *net.TCPConn)) {
	var backoff time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			a.acceptErrors.Add(1)
			a.log.Warn("accept failed; retrying", "pod", p.w.UID, "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		a.conns.Add(1)
		a.active.Add(1)
		go func() {
			defer a.conns.Done()
			defer a.active.Add(-1)
			handle(ctx, p, c)
		}()
	}
}

// refuse resets c and writes its access line with result and reason.
func (a *Agent) refuse(c *net.TCPConn, e *accessEntry, start time.Time, result, reason string) {
	resetBoth(c) // a refused connection must look refused to the app, not served
	a.done(e, start, result, reason)
}
