package tunnel

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The pool shares HBONE connections between tunneled connections with the same
// (source identity, source IP, destination identity, destination address), as ztunnel's
// WorkloadKey does.
//
// Invariants:
//   - conns[key] holds only connections that have not closed; a connection leaves in its onClose.
//   - a connection's load (open streams + reserved slots) never passes the stream bound,
//     min(MaxStreamsPerConn, the server's SETTINGS_MAX_CONCURRENT_STREAMS).
//   - at most one dial per key is in flight; callers that find every connection full wait for it
//     rather than dialing their own, so a burst of N streams opens about N/bound connections.
//   - a policy or identity change never rides on an old connection: the key includes both
//     identities, and Client.Close (or idle eviction) ends what is pooled.
type pool struct {
	c       *Client
	mu      sync.Mutex
	conns   map[poolKey][]*h2conn
	dialing map[poolKey]*dialCall
	closed  bool

	dials atomic.Uint64 // successful HBONE handshakes, for tests and metrics
}

type poolKey struct {
	src, dst spiffeid.ID
	srcIP    netip.Addr
	addr     netip.AddrPort
}

type dialCall struct {
	done chan struct{}
	err  error
}

func newPool(c *Client) *pool {
	return &pool{c: c, conns: map[poolKey][]*h2conn{}, dialing: map[poolKey]*dialCall{}}
}

// get returns a connection for key with one stream slot reserved for the caller.
func (p *pool) get(ctx context.Context, key poolKey) (*h2conn, error) {
	limit := p.c.cfg.MaxStreamsPerConn
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrConnClosed
		}
		for _, hc := range p.conns[key] {
			if hc.tryReserve(limit) {
				p.mu.Unlock()
				return hc, nil
			}
		}
		if d := p.dialing[key]; d != nil {
			p.mu.Unlock()
			select {
			case <-d.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if d.err != nil {
				return nil, d.err
			}
			continue
		}
		d := &dialCall{done: make(chan struct{})}
		p.dialing[key] = d
		p.mu.Unlock()

		hc, err := p.c.connect(ctx, key)
		p.mu.Lock()
		delete(p.dialing, key)
		d.err = err
		if err == nil {
			if p.closed {
				err = ErrConnClosed
				d.err = err
			} else {
				p.dials.Add(1)
				hc.reserve()
				p.conns[key] = append(p.conns[key], hc)
				hc.onClose = func(hc *h2conn) { p.remove(key, hc) }
			}
		}
		close(d.done)
		p.mu.Unlock()
		if err != nil {
			if hc != nil {
				hc.Close()
			}
			return nil, err
		}
		return hc, nil
	}
}

func (p *pool) remove(key poolKey, hc *h2conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.conns[key]
	for i, x := range list {
		if x == hc {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(p.conns, key)
	} else {
		p.conns[key] = list
	}
}

// size returns how many connections the pool holds.
func (p *pool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.conns {
		n += len(l)
	}
	return n
}

func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	var all []*h2conn
	for _, l := range p.conns {
		all = append(all, l...)
	}
	p.mu.Unlock()
	for _, hc := range all {
		hc.Close()
	}
}

// tryReserve takes a stream slot if the connection is usable and under its bound.
func (c *h2conn) tryReserve(limit int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goingAway || (!c.freshUntil.IsZero() && !time.Now().Before(c.freshUntil)) {
		return false
	}
	if len(c.streams)+c.reserved >= min(limit, int(c.peerMaxStreams)) {
		return false
	}
	c.reserved++
	return true
}

func (c *h2conn) reserve() {
	c.mu.Lock()
	c.reserved++
	c.mu.Unlock()
}
