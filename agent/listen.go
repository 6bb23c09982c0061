package agent

import (
	"context"
	"net"
	"time"
)

// serve accepts on one of a pod's listeners until it closes, handling each connection on its
// own goroutine, counted for the drain on shutdown.
func (a *Agent) serve(ctx context.Context, p *pod, ln *net.TCPListener, handle func(context.Context, *pod, *net.TCPConn)) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		a.conns.Add(1)
		go func() {
			defer a.conns.Done()
			handle(ctx, p, c)
		}()
	}
}

// reset closes c with a RST: a refused connection must look refused to the app, not served.
func (a *Agent) reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// refuse resets c and writes its access line with result and reason.
func (a *Agent) refuse(c *net.TCPConn, e *accessEntry, start time.Time, result, reason string) {
	a.reset(c)
	e.done(a.access, start, result, reason)
}
