package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/amesh-dev/amesh/identity"
)

// ClientConfig configures a Client. Source is required.
type ClientConfig struct {
	// Source gives the SVIDs of local workloads and the bundles that verify servers.
	Source identity.Source
	// Dial opens the TCP connection to an HBONE server at addr for a source workload with IP
	// src (zero if unknown); nil uses net.Dialer. The agent sets it to dial from inside the
	// source pod's netns with its socket mark, so the pod's IP is the source on the wire.
	Dial func(ctx context.Context, src netip.Addr, addr netip.AddrPort) (net.Conn, error)
	// MaxStreamsPerConn bounds streams on one HTTP/2 connection; another is opened past it. 100 when zero.
	MaxStreamsPerConn int
	// IdleTimeout closes a pooled connection that carried no stream for this long; 90s when zero.
	IdleTimeout time.Duration
	// KeepaliveInterval and KeepaliveTimeout: PING after this much silence, close when unanswered.
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// HandshakeTimeout bounds the TCP dial plus TLS handshake; 10s when zero.
	HandshakeTimeout time.Duration
	// OnHandshake, when set, is told how long each new HBONE connection took to be ready (TCP,
	// TLS and the HTTP/2 preface), and its error if it failed: the agent's latency histogram.
	OnHandshake func(d time.Duration, err error)
	// Logger; discarded when nil.
	Logger *slog.Logger
}

// Target says where one tunneled connection goes.
type Target struct {
	// Source is the local workload's identity, presented to the server.
	Source spiffeid.ID
	// SourceIP is the local workload's IP, which connections are dialed from (see
	// ClientConfig.Dial); replicas that share an identity do not share connections.
	SourceIP netip.Addr
	// Dest is the identity the server must prove: the destination workload's (or waypoint's).
	Dest spiffeid.ID
	// Addr is the HBONE endpoint, the destination pod's IP on port 15008.
	Addr netip.AddrPort
	// Authority is the original destination, sent as :authority.
	Authority netip.AddrPort
	// Baggage, Traceparent and Forwarded are sent as headers when set.
	Baggage, Traceparent, Forwarded string
}

// Client opens HBONE streams over pooled connections.
type Client struct {
	cfg      ClientConfig
	log      *slog.Logger
	pool     *pool
	counters Counters
	// refusalLog bounds the log lines of failed handshakes.
	refusalLog refusalLog
}

// NewClient checks cfg and returns a Client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Source == nil {
		return nil, errors.New("tunnel: client: no identity source")
	}
	if cfg.MaxStreamsPerConn <= 0 {
		cfg.MaxStreamsPerConn = 100
	}
	setDefault(&cfg.IdleTimeout, 90*time.Second)
	setDefault(&cfg.KeepaliveInterval, 30*time.Second)
	setDefault(&cfg.KeepaliveTimeout, 10*time.Second)
	setDefault(&cfg.HandshakeTimeout, 10*time.Second)
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context, _ netip.Addr, addr netip.AddrPort) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr.String())
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: log}
	c.pool = newPool(c)
	return c, nil
}

// Counters returns the client's refusal counts.
func (c *Client) Counters() *Counters { return &c.counters }

// PoolConns returns how many HBONE connections the pool holds now.
func (c *Client) PoolConns() int {
	c.pool.mu.Lock()
	defer c.pool.mu.Unlock()
	n := 0
	for _, cs := range c.pool.conns {
		n += len(cs)
	}
	return n
}

// Dial opens one tunneled connection to t. The returned Stream is established (the server
// answered 200); a refusal is a *RefusedError with its Reason.
func (c *Client) Dial(ctx context.Context, t Target) (*Stream, error) {
	if !t.Authority.IsValid() || !t.Addr.IsValid() {
		return nil, errors.New("tunnel: dial: target needs Addr and Authority")
	}
	key := poolKey{src: t.Source, srcIP: t.SourceIP, dst: t.Dest, addr: t.Addr}
	fields := connectHeaders(&t)
	for attempt := 0; ; attempt++ {
		hc, err := c.pool.get(ctx, key)
		if err != nil {
			if hungUp(err) && attempt < 2 && ctx.Err() == nil {
				// The server hung up while the connection was being set up, before any stream
				// was sent (an agent handing over to its successor ends the handshakes it has
				// in progress): a new connection may reach the one taking over.
				continue
			}
			c.counters.add(ReasonOf(err))
			return nil, err
		}
		st, err := hc.openStream(fields)
		if err != nil {
			// The connection went away under us: another one may take it.
			if attempt < 2 && ctx.Err() == nil {
				continue
			}
			return nil, fmt.Errorf("tunnel: dial %s via %s: %w", t.Authority, t.Addr, err)
		}
		if err := c.await(ctx, st, hc); err != nil {
			st.Close()
			if refusedUnprocessed(err) && attempt < 2 && ctx.Err() == nil {
				// The server never saw it (it is going away: an agent handing over to its
				// successor, say): open it again, on a new connection.
				continue
			}
			if re, ok := errors.AsType[*RefusedError](err); ok {
				c.counters.add(re.Reason)
			}
			return nil, fmt.Errorf("tunnel: dial %s via %s as %s: %w", t.Authority, t.Addr, t.Source, err)
		}
		return st, nil
	}
}

// hungUp reports whether err is the peer closing a connection under us (reset, broken pipe,
// EOF), as opposed to refusing it (a TLS alert, a timeout, a dial error).
func hungUp(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// refusedUnprocessed reports whether err is a stream the server refused before processing it
// (RST_STREAM REFUSED_STREAM, which a GOAWAY also implies for the streams above its last),
// which RFC 9113 §8.7 makes safe to open again.
func refusedUnprocessed(err error) bool {
	re, ok := errors.AsType[*ResetError](err)
	return ok && re.Code == http2.ErrCodeRefusedStream
}

// await waits for the CONNECT response.
func (c *Client) await(ctx context.Context, st *Stream, hc *h2conn) error {
	select {
	case <-st.respReady:
		hc.mu.Lock()
		resp, reset := st.resp, st.reset
		hc.mu.Unlock()
		if resp == nil {
			return reset
		}
	case <-ctx.Done():
		return ctx.Err()
	case <-hc.done:
		hc.mu.Lock()
		err := hc.closeErr
		hc.mu.Unlock()
		return fmt.Errorf("%w: %w", ErrConnClosed, err)
	}
	status := st.resp.PseudoValue("status")
	if status == "200" {
		return nil
	}
	code, _ := strconv.Atoi(status)
	return &RefusedError{Reason: reasonForStatus(code), Status: code, Err: fmt.Errorf("server answered %q", status)}
}

// openStream sends the HEADERS of a new stream, using a slot reserved by the pool.
func (c *h2conn) openStream(fields []hpack.HeaderField) (*Stream, error) {
	var s *Stream
	var refused error
	err := c.write(func() error {
		c.mu.Lock()
		c.reserved--
		if c.closed || c.goingAway || c.nextID > 1<<31-1 {
			c.mu.Unlock()
			refused = ErrConnClosed
			return nil
		}
		id := c.nextID
		c.nextID += 2
		s = c.newStreamLocked(id)
		c.mu.Unlock()
		// Stream IDs must reach the wire in order: allocate and write under one hold of wmu.
		return c.writeHeadersLocked(id, fields, false)
	})
	if refused != nil {
		return nil, refused
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// connect dials and handshakes one HBONE connection for key.
func (c *Client) connect(ctx context.Context, key poolKey) (*h2conn, error) {
	start := time.Now()
	hc, err := c.connectOnce(ctx, key)
	if c.cfg.OnHandshake != nil {
		c.cfg.OnHandshake(time.Since(start), err)
	}
	return hc, err
}

func (c *Client) connectOnce(ctx context.Context, key poolKey) (*h2conn, error) {
	// The dial serves every caller waiting on this key, so it outlives the first caller's ctx.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.HandshakeTimeout)
	defer cancel()
	nc, err := c.cfg.Dial(dctx, key.srcIP, key.addr)
	if err != nil {
		return nil, refuse(ReasonUpstreamDial, fmt.Errorf("dial HBONE %s (is port %d open and allowed by NetworkPolicy?): %w", key.addr, HBONEPort, err))
	}
	var presented *x509.Certificate
	bc := newBatchConn(nc)
	tc := tls.Client(bc, clientTLS(c.cfg.Source, key.src, key.dst, &presented))
	if err := tc.HandshakeContext(dctx); err != nil {
		nc.Close()
		rerr := classifyHandshake(dctx, err)
		// Within a log budget: a pod dialling a failing destination in a loop fails a handshake
		// each time.
		c.refusalLog.info(c.log, ReasonOf(rerr), "HBONE handshake failed", "addr", key.addr.String(), "dst_id", key.dst.String(), "err", err)
		return nil, rerr
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != alpnH2 {
		tc.Close()
		return nil, refuse(ReasonALPN, fmt.Errorf("server %s negotiated ALPN %q, not h2", key.addr, p))
	}
	hc := newH2Conn(tc, true, c.log.With("addr", key.addr.String(), "src_id", key.src.String(), "dst_id", key.dst.String()))
	hc.freshUntil = freshUntil(tc.ConnectionState(), presented, time.Now())
	hc.batch = bc
	if err := hc.handshake(0); err != nil {
		tc.Close()
		return nil, refuse(ReasonProtocol, err)
	}
	hc.counters = &c.counters
	go hc.readLoop()
	go hc.ctrlLoop()
	// In TLS 1.3 the server judges our certificate after our handshake is done: wait for its
	// SETTINGS, so that a rejection fails this dial with its reason instead of a later stream.
	select {
	case <-hc.settings:
	case <-hc.done:
		hc.mu.Lock()
		err := hc.closeErr
		hc.mu.Unlock()
		return nil, refuse(ReasonHandshake, fmt.Errorf("server %s (%s) refused the connection, maybe our certificate: %w", key.addr, key.dst, err))
	case <-dctx.Done():
		hc.Close()
		return nil, refuse(ReasonHandshakeTimeout, fmt.Errorf("no HTTP/2 SETTINGS from %s: %w", key.addr, dctx.Err()))
	}
	go hc.keepalive(c.cfg.KeepaliveInterval, c.cfg.KeepaliveTimeout, c.cfg.IdleTimeout)
	return hc, nil
}

// staleGrace is how long a new pooled connection takes new streams when one of its certificates
// is past half its life already: the identity sources rotate near the half-life, not at its
// instant (a SPIRE agent up to its sync interval later), and until they have, every new
// connection carries the same certificates; stale at once, each would serve one request, and
// the peer's connection budget would soon refuse the next.
const staleGrace = 15 * time.Second

// freshUntil is when a pooled connection made at now stops taking new streams: half-way through
// the life of the younger of the two certificates it was authenticated with, which is when the
// identity source rotates it; for a connection made past that point (not rotated yet),
// now+staleGrace, never after either certificate's expiry. Open streams are not disturbed; new
// ones get a connection with new certs.
func freshUntil(cs tls.ConnectionState, presented *x509.Certificate, now time.Time) time.Time {
	var until, expiry time.Time
	leaves := []*x509.Certificate{}
	if len(cs.PeerCertificates) > 0 {
		leaves = append(leaves, cs.PeerCertificates[0])
	}
	if presented != nil {
		leaves = append(leaves, presented)
	}
	for _, l := range leaves {
		half := l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore) / 2)
		if until.IsZero() || half.Before(until) {
			until = half
		}
		if expiry.IsZero() || l.NotAfter.Before(expiry) {
			expiry = l.NotAfter
		}
	}
	if !until.IsZero() && !until.After(now) {
		until = now.Add(staleGrace)
		if expiry.Before(until) {
			until = expiry
		}
	}
	return until
}

// Close closes every pooled connection; their streams fail.
func (c *Client) Close() error {
	c.pool.close()
	return nil
}
