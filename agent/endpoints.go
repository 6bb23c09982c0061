package agent

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The agent's plain HTTP endpoints (readiness :15021, metrics :15020, admin 127.0.0.1:15000)
// listen in the node's namespace, the first two on every address (the DaemonSet runs with
// hostNetwork), so whatever reaches the node can connect to them. Each connection costs a
// descriptor, a goroutine and buffers; unbounded, a flood of idle or trickling connections
// runs the agent out of descriptors or memory and takes the whole node's mesh with it. So
// each endpoint holds at most so many connections, counted apart for the node itself (the
// kubelet's probe, a node-local collector: they connect from loopback or from the node's own
// address) and for the rest, where one source address gets a small share; a connection over
// its budget is closed as soon as it is accepted and counted. Timeouts cut what stays.
const (
	endpointLocalConns     = 64  // from the node itself, per endpoint
	endpointRemoteConns    = 128 // from elsewhere, per endpoint
	endpointConnsPerSource = 8   // from one remote address, per endpoint
)

// endpointTimeouts are an endpoint's http.Server timeouts: a request's headers must arrive in
// readHeader, an idle keep-alive connection is closed after idle, and a response must be
// written in write (0: no limit, for the loopback-only admin's 30 s CPU profiles).
type endpointTimeouts struct{ readHeader, idle, write time.Duration }

// serveEndpoint serves h on ln, within the connection budgets above, until ctx is done; refusals
// are counted in refused under endpoint.
func serveEndpoint(ctx context.Context, wg *sync.WaitGroup, endpoint string, ln net.Listener, h http.Handler, to endpointTimeouts, refused *prometheus.CounterVec) {
	bl := &budgetListener{Listener: ln, bySource: map[netip.Addr]int{},
		overSource: refused.WithLabelValues(endpoint, "source_budget"),
		overTotal:  refused.WithLabelValues(endpoint, "total_budget")}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: to.readHeader, IdleTimeout: to.idle, WriteTimeout: to.write, MaxHeaderBytes: 16 << 10}
	wg.Go(func() { srv.Serve(bl) })
	wg.Go(func() { <-ctx.Done(); srv.Close() })
}

// budgetListener accepts the connections within budget and closes the others at once.
type budgetListener struct {
	net.Listener
	overSource, overTotal prometheus.Counter

	mu            sync.Mutex
	local, remote int
	bySource      map[netip.Addr]int
}

// Accept returns the next connection within budget.
func (l *budgetListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if release, ok := l.admit(c); ok {
			return &budgetConn{Conn: c, release: sync.OnceFunc(release)}, nil
		}
		c.Close()
	}
}

// admit charges c to its budget, or counts it as refused; release gives the charge back.
func (l *budgetListener) admit(c net.Conn) (release func(), ok bool) {
	src, local := source(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	if local {
		if l.local >= endpointLocalConns {
			l.overTotal.Inc()
			return nil, false
		}
		l.local++
		return func() { l.mu.Lock(); l.local--; l.mu.Unlock() }, true
	}
	switch {
	case l.bySource[src] >= endpointConnsPerSource:
		l.overSource.Inc()
		return nil, false
	case l.remote >= endpointRemoteConns:
		l.overTotal.Inc()
		return nil, false
	}
	l.remote++
	l.bySource[src]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.remote--
		if l.bySource[src]--; l.bySource[src] <= 0 {
			delete(l.bySource, src)
		}
	}, true
}

// source is c's remote address, and whether it is the node itself: loopback, or the address
// the connection reached (a process of the node connecting to the node's own IP).
func source(c net.Conn) (netip.Addr, bool) {
	r, rok := c.RemoteAddr().(*net.TCPAddr)
	if !rok {
		return netip.Addr{}, true // a unix socket: only the node's processes reach it
	}
	src := r.AddrPort().Addr().Unmap()
	if src.IsLoopback() {
		return src, true
	}
	if l, ok := c.LocalAddr().(*net.TCPAddr); ok && l.AddrPort().Addr().Unmap() == src {
		return src, true
	}
	return src, false
}

// budgetConn gives its charge back when closed.
type budgetConn struct {
	net.Conn
	release func()
}

func (c *budgetConn) Close() error {
	c.release()
	return c.Conn.Close()
}
