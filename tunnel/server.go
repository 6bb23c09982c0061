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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/time/rate"

	"github.com/amesh-dev/amesh/identity"
)

// ServerConfig configures a Server. Source is required.
type ServerConfig struct {
	// Source gives each listener's SVID and the bundles that verify clients.
	Source identity.Source
	// Authorize decides a CONNECT from req.Peer to req.Authority; a non-nil error denies (401),
	// counted as ReasonDenied unless the error is one of Refuse's, which names its reason.
	// Nil allows every authenticated peer.
	Authorize func(ctx context.Context, req *Request) error
	// DialUpstream opens the connection to the destination; nil dials req.Authority over TCP.
	// The agent sets it to dial inside the destination pod's netns.
	DialUpstream func(ctx context.Context, req *Request) (net.Conn, error)
	// HandshakeTimeout bounds the TLS handshake and the HTTP/2 preface; 10s when zero.
	HandshakeTimeout time.Duration
	// DialTimeout bounds DialUpstream; 10s when zero.
	DialTimeout time.Duration
	// IdleTimeout closes a connection that carried no stream for this long; 10m when zero.
	IdleTimeout time.Duration
	// KeepaliveInterval and KeepaliveTimeout: PING after this much silence, close when unanswered.
	KeepaliveInterval, KeepaliveTimeout time.Duration

	// Budgets: what one peer can make the agent hold (DESIGN §8). Each is counted under its
	// Reason when it bites, and sized from what the resource was measured to cost on loopback
	// (go1.26, amd64; the adversarial tests in attack_test.go measure it again). With the
	// defaults, one peer (source IP) costs the agent at most about
	//   MaxConnsPerPeer × 330 KiB (a connection after its preface)
	//   + MaxStreamsPerPeer × 30 KiB (a stream stalled both ways)
	//   + MaxPeerBuffer (queued received data, shared by the peer's connections)
	// = 64 × 330 KiB + 2048 × 30 KiB + 32 MiB ≈ 113 MiB in the worst case, and one
	// connection ≈ 0.3 + 3 + 32 MiB. The agent's memory limit should leave room for that
	// times the peers that may turn hostile at once; lower MaxConnsPerPeer, MaxStreamsPerPeer
	// or MaxPeerBuffer where pods are many and memory is tight.

	// MaxConcurrentStreams per connection, advertised in SETTINGS and enforced on running
	// handlers (a reset stream counts until its handler returns); 100 when zero, as the client
	// pool uses. A stream stalled both ways costs ~27 KiB measured (three goroutines, the
	// Stream, the upstream socket; no copy buffer while its window is shut; TestAttackSlowStreams),
	// so one connection at the cap holds ~3 MiB. It was 1000 at ~291 KiB a stream: ≈284 MiB.
	MaxConcurrentStreams uint32
	// MaxStreamBuffer bounds the memory (buffer capacity plus bookkeeping, not only payload)
	// that one stream's received, undelivered data may hold; a stream over it is reset with
	// ENHANCE_YOUR_CALM. 8 MiB when zero: twice the 4 MiB stream window, the most small-frame
	// coalescing can waste, so flow-controlled traffic never meets it.
	MaxStreamBuffer int
	// MaxPeerBuffer bounds the memory the queued data of all connections from one source IP may
	// hold; the connection that passes it is cut (GOAWAY ENHANCE_YOUR_CALM). 32 MiB when zero:
	// two connection windows (16 MiB) of full-size frames.
	MaxPeerBuffer int64
	// MaxConnsPerPeer bounds connections from one source IP, handshakes included; more are
	// closed at accept. 64 when zero: the client pool opens one per (source, destination)
	// workload pair and one more per 100 streams, so a pod talking to many pods of one node
	// (one replica set, packed) needs one each. A connection costs ~330 KiB once its preface
	// is in (its 256 KiB write and 32 KiB read buffers; 318 KiB measured), and ~25 KiB of TLS
	// state before (TestAttackConnFlood), when the buffers were allocated at accept.
	MaxConnsPerPeer int
	// MaxStreamsPerPeer bounds the stream handlers running for one source IP over all its
	// connections; a stream over it is refused (REFUSED_STREAM, ReasonTooManyStreams; not
	// counted as abuse, the peer cannot know the bound). 2048 when zero: a pod's 2,048
	// connections at once to the pods of one node (a pooled client's 1,000 is ordinary), which,
	// at ~30 KiB a stalled stream, hold ~60 MiB. Without it the per-connection cap times
	// MaxConnsPerPeer would be the only bound (6,400 streams, ~190 MiB).
	MaxStreamsPerPeer int
	// MaxHandshakes bounds TLS handshakes in progress on the server; more are closed at
	// accept. 128 when zero: a handshake in progress costs ~25 KiB (measured with the
	// connection) and ~1 ms of CPU, so 128 at once hold ~3 MiB.
	MaxHandshakes int
	// HandshakeEvictAfter: when all MaxHandshakes slots are taken and no source IP holds an
	// unfair share of them (victimLocked), a new connection closes the oldest handshake in
	// progress if that one has run this long, instead of being refused: a TLS 1.3 handshake
	// takes a round trip and ~1 ms of CPU, so one still going after this is stalled, and peers
	// stalling handshakes from many addresses cannot lock everyone else out for
	// HandshakeTimeout. 1 s when zero.
	HandshakeEvictAfter time.Duration
	// HandshakeRatePerPeer and HandshakeBurstPerPeer bound how often one source IP may start a
	// TLS handshake (a token bucket): each costs the server a signature and a verification
	// (~1 ms of CPU), so a peer completing handshakes in a loop, within its connection cap,
	// would otherwise take a core. Over it, a connection is closed at accept
	// (ReasonHandshakeRate). 20 a second and 128 when zero: a pool opens one connection per
	// destination workload and keeps it, so even a pod reaching every pod of a packed node at
	// once (MaxConnsPerPeer of them) stays within the burst.
	HandshakeRatePerPeer  float64
	HandshakeBurstPerPeer int
	// MaxEarlyResets is how many streams a connection may reset before their response (or have
	// refused for the stream cap) before it is cut with GOAWAY ENHANCE_YOUR_CALM, once they are
	// also over half of its streams (CVE-2023-44487, Envoy's premature-reset rule). 200 when
	// zero: twice MaxConcurrentStreams.
	MaxEarlyResets int
	// WriteTimeout closes a connection when a write to it makes no progress for this long: a
	// peer that sends (PINGs, say) but never reads would otherwise pin it and its streams. 30s
	// when zero.
	WriteTimeout time.Duration
	// ExpiryDrain: when the peer's certificate expires, its connection takes no new stream
	// (GOAWAY) and is closed once its streams end, or this long after the expiry; 1m when zero.
	// A new stream after the expiry closes it at once.
	ExpiryDrain time.Duration
	// StreamIdleTimeout resets a stream that carried no byte either way for this long; 1h when
	// zero (Envoy's TCP proxy default). HalfCloseTimeout is the same bound, shorter, for a
	// stream one side of which has ended: 5m when zero (ztunnel#1630, CLOSE_WAIT piling up).
	StreamIdleTimeout, HalfCloseTimeout time.Duration
	// OnStream, when set, is told how every CONNECT ended (refused ones included): the agent's
	// access log and metrics.
	OnStream func(req *Request, res StreamResult)
	// Logger; discarded when nil.
	Logger *slog.Logger
}

// StreamResult is how one CONNECT stream ended.
type StreamResult struct {
	// Reason is why it was refused; ReasonNone when it was served.
	Reason Reason
	// Err is the refusal's or the relay's error, if any.
	Err error
	// BytesIn were relayed from the client to the destination, BytesOut back.
	BytesIn, BytesOut int64
	// Duration is how long the stream lived.
	Duration time.Duration
}

// Server is an HBONE server. One Server serves any number of listeners, each with its identity.
type Server struct {
	cfg      ServerConfig
	log      *slog.Logger
	counters Counters

	// The lifecycle context of the server: Close cancels it, and with it every handshake,
	// dial and relay in progress.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	conns     map[*h2conn]struct{}
	listeners map[net.Listener]struct{}
	peers     map[netip.Addr]*peerState
	// inHandshake holds the connections in their handshake (each holding one of MaxHandshakes
	// slots), with when and from where each was accepted: a full table makes room (victimLocked).
	inHandshake map[net.Conn]handshakeSlot
	// rates holds each source IP's handshake token bucket. It outlives the peer's connections
	// (a peer closing each one before the next would otherwise start full every time) and is
	// pruned of full buckets, which are as good as new (handshakeAllowedLocked).
	rates map[netip.Addr]*rate.Limiter
	// refusalLog bounds the log lines refusals write (refused).
	refusalLog refusalLog
	closed     bool
	wg         sync.WaitGroup
}

// handshakeSlot is one connection's place in the handshake table.
type handshakeSlot struct {
	at   time.Time
	from netip.Addr
}

// peerState is what one source IP holds on the server, for its budgets.
type peerState struct {
	addr     netip.Addr
	conns    int          // connections accepted and not yet closed (guarded by Server.mu)
	buffered atomic.Int64 // memory its streams' queued data holds
	handlers atomic.Int64 // stream handlers running over all its connections
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("tunnel: server: no identity source")
	}
	setDefault(&cfg.HandshakeTimeout, 10*time.Second)
	setDefault(&cfg.DialTimeout, 10*time.Second)
	setDefault(&cfg.IdleTimeout, 10*time.Minute)
	setDefault(&cfg.KeepaliveInterval, 30*time.Second)
	setDefault(&cfg.KeepaliveTimeout, 10*time.Second)
	setDefault(&cfg.WriteTimeout, 30*time.Second)
	setDefault(&cfg.ExpiryDrain, time.Minute)
	setDefault(&cfg.StreamIdleTimeout, time.Hour)
	setDefault(&cfg.HalfCloseTimeout, 5*time.Minute)
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = 100
	}
	setDefaultInt(&cfg.MaxStreamBuffer, 2*streamWindow)
	setDefaultInt(&cfg.MaxPeerBuffer, 2*connWindow)
	setDefaultInt(&cfg.MaxConnsPerPeer, 64)
	setDefaultInt(&cfg.MaxStreamsPerPeer, 2048)
	setDefaultInt(&cfg.MaxHandshakes, 128)
	setDefault(&cfg.HandshakeEvictAfter, time.Second)
	if cfg.HandshakeRatePerPeer <= 0 {
		cfg.HandshakeRatePerPeer = 20
	}
	setDefaultInt(&cfg.HandshakeBurstPerPeer, 128)
	setDefaultInt(&cfg.MaxEarlyResets, 2*int(cfg.MaxConcurrentStreams))
	if cfg.DialUpstream == nil {
		cfg.DialUpstream = func(ctx context.Context, req *Request) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", req.Authority.String())
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, log: log, ctx: ctx, cancel: cancel, conns: map[*h2conn]struct{}{},
		listeners: map[net.Listener]struct{}{}, peers: map[netip.Addr]*peerState{}, inHandshake: map[net.Conn]handshakeSlot{}, rates: map[netip.Addr]*rate.Limiter{}}, nil
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

func setDefaultInt[T int | int64](d *T, v T) {
	if *d <= 0 {
		*d = v
	}
}

// Counters returns the server's refusal counts.
func (s *Server) Counters() *Counters { return &s.counters }

// Serve accepts HBONE on ln, presenting local's SVID, until ctx is done or the server closes.
// It closes ln when it returns. Temporary accept errors (EMFILE, ENFILE, ECONNABORTED and
// the like) are retried with backoff, as net/http does: one full fd table must not end the
// listener for good.
func (s *Server) Serve(ctx context.Context, ln net.Listener, local spiffeid.ID) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	// Held until Serve returns, so that every Add below happens while the count is above zero
	// and never races Close's Wait.
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	stopLn := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopLn()
	// What this listener starts (handshakes, dials, relays) ends with ctx or with Close, not
	// when Serve returns: Shutdown closes the listener and lets streams finish.
	ctx, cancel := context.WithCancel(ctx)
	context.AfterFunc(s.ctx, cancel)

	cfg := serverTLS(s.cfg.Source, local)
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !temporaryAccept(err) {
				return fmt.Errorf("tunnel: accept on %s: %w", ln.Addr(), err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.counters.add(ReasonAcceptError)
			s.log.Warn("HBONE accept failed, retrying (check the agent's fd limit)", "addr", ln.Addr().String(), "retry_in", backoff, "err", err)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		peer, ok := s.admit(nc)
		if !ok {
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.release(peer)
			s.serveConn(ctx, nc, cfg, local, peer)
		}()
	}
}

// temporaryAccept says whether an Accept error may pass: out of descriptors or buffers, a
// connection aborted before it was accepted, or a timeout.
func temporaryAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// admit applies the per-peer connection and the handshake budgets to an accepted connection,
// closing it when over; on success the peer's count and a handshake slot are held for it. With
// every slot taken, a handshake in progress may give its slot up (victimLocked).
func (s *Server) admit(nc net.Conn) (*peerState, bool) {
	addr := remoteIP(nc)
	now := time.Now()
	s.mu.Lock()
	p := s.peers[addr]
	var r Reason
	var evicted net.Conn
	switch {
	case p != nil && p.conns >= s.cfg.MaxConnsPerPeer:
		r = ReasonTooManyConns
	case !s.handshakeAllowedLocked(addr, now):
		r = ReasonHandshakeRate
	case len(s.inHandshake) >= s.cfg.MaxHandshakes:
		if evicted = s.victimLocked(addr, now); evicted != nil {
			delete(s.inHandshake, evicted)
		} else {
			r = ReasonTooManyHandshakes
		}
	}
	if r == ReasonNone {
		if p == nil {
			p = &peerState{addr: addr}
			s.peers[addr] = p
		}
		p.conns++
		s.inHandshake[nc] = handshakeSlot{at: now, from: addr}
	}
	s.mu.Unlock()
	if evicted != nil {
		// Its serveConn sees the handshake fail and ends; the slot is already this one's.
		s.refused(s.log, ReasonHandshakeEvicted, "HBONE handshake closed to make room", "remote", evicted.RemoteAddr().String(),
			"max_handshakes", s.cfg.MaxHandshakes, "evict_after", s.cfg.HandshakeEvictAfter)
		evicted.Close()
	}
	if r != ReasonNone {
		s.refused(s.log, r, "HBONE connection refused", "remote", nc.RemoteAddr().String(),
			"max_conns_per_peer", s.cfg.MaxConnsPerPeer, "max_handshakes", s.cfg.MaxHandshakes)
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		nc.Close()
		return nil, false
	}
	return p, true
}

// refused counts a refusal for reason r and logs it at Info, within r's log budget
// (refusalLog): a peer refused thousands of times a second must not write as many lines.
func (s *Server) refused(log *slog.Logger, r Reason, msg string, args ...any) {
	s.counters.add(r)
	s.refusalLog.info(log, r, msg, args...)
}

// maxRateEntries bounds the handshake buckets the server keeps (~100 bytes each). Past it, full
// buckets are dropped; a source IP that still finds no room is not rate-limited, and only
// MaxConnsPerPeer and MaxHandshakes bound it, as they bound every peer.
const maxRateEntries = 4096

// handshakeAllowedLocked takes a token from addr's handshake bucket, saying whether it had one.
func (s *Server) handshakeAllowedLocked(addr netip.Addr, now time.Time) bool {
	l := s.rates[addr]
	if l == nil {
		if len(s.rates) >= maxRateEntries {
			for a, b := range s.rates {
				if b.TokensAt(now) >= float64(b.Burst()) {
					delete(s.rates, a)
				}
			}
		}
		if len(s.rates) >= maxRateEntries {
			return true
		}
		l = rate.NewLimiter(rate.Limit(s.cfg.HandshakeRatePerPeer), s.cfg.HandshakeBurstPerPeer)
		s.rates[addr] = l
	}
	return l.AllowN(now, 1)
}

// victimLocked picks the handshake in progress that a new connection from addr closes when every
// slot is taken, or nil (the newcomer is refused):
//   - the oldest handshake of the source holding the most slots, if it holds at least two more
//     than addr does: no source keeps the others out by holding many, however fast it replaces
//     them with young ones (TestAttackHandshakeChurn), and sources holding as many as each other
//     never close each other's;
//   - else the oldest of all, once it has run HandshakeEvictAfter: a real TLS 1.3 handshake takes a
//     round trip, so one still going is stalled, even when many sources stall one each.
//
// A scan: it runs only with the table full, and the table is MaxHandshakes long.
func (s *Server) victimLocked(addr netip.Addr, now time.Time) net.Conn {
	held := map[netip.Addr]int{}
	firstOf := map[netip.Addr]net.Conn{}
	var oldest net.Conn
	for c, h := range s.inHandshake {
		held[h.from]++
		if f, ok := firstOf[h.from]; !ok || h.at.Before(s.inHandshake[f].at) {
			firstOf[h.from] = c
		}
		if oldest == nil || h.at.Before(s.inHandshake[oldest].at) {
			oldest = c
		}
	}
	var top netip.Addr
	for a, n := range held {
		if n > held[top] {
			top = a
		}
	}
	switch {
	case held[top] >= held[addr]+2:
		return firstOf[top]
	case oldest != nil && now.Sub(s.inHandshake[oldest].at) >= s.cfg.HandshakeEvictAfter:
		return oldest
	}
	return nil
}

// evicted says whether nc, in its handshake, lost its slot to a newer connection.
func (s *Server) evicted(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, holds := s.inHandshake[nc]
	return !holds
}

// handshakeDone gives back nc's handshake slot (once per admitted connection; an evicted one
// gave it up already).
func (s *Server) handshakeDone(nc net.Conn) {
	s.mu.Lock()
	delete(s.inHandshake, nc)
	s.mu.Unlock()
}

// handshaking returns how many connections are in their handshake.
func (s *Server) handshaking() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.inHandshake)
}

// release gives back the peer's connection slot.
func (s *Server) release(p *peerState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.conns--
	if p.conns == 0 && s.peers[p.addr] == p {
		delete(s.peers, p.addr)
	}
}

func remoteIP(nc net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(nc.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("tunnel: server closed")

func (s *Server) serveConn(ctx context.Context, nc net.Conn, cfg *tls.Config, local spiffeid.ID, peerSt *peerState) {
	log := s.log.With("remote", nc.RemoteAddr().String(), "local_id", local.String())
	bc := newBatchConn(nc)
	tc := tls.Server(bc, cfg)
	handshaking := true
	defer func() {
		if handshaking {
			s.handshakeDone(nc)
		}
	}()
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	if err != nil {
		rerr := classifyHandshake(hctx, err)
		cancel()
		if s.evicted(nc) {
			return // counted and logged as handshake_evicted
		}
		s.refused(log, ReasonOf(rerr), "HBONE handshake refused", "err", err)
		nc.Close()
		return
	}
	cancel()
	cs := tc.ConnectionState()
	peer, err := peerID(cs)
	if err != nil {
		s.refused(log, ReasonOf(err), "HBONE peer refused", "err", err)
		tc.Close()
		return
	}
	log = log.With("peer_id", peer.String())

	// The preface is read before the connection's buffers exist: a peer that completes TLS and
	// then says nothing costs TLS's state, not the ~330 KiB of HTTP/2 read and write buffers
	// (Close cancels the wait through the deadline below).
	tc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	stopWait := context.AfterFunc(ctx, func() { tc.SetDeadline(time.Now()) })
	err = readPreface(tc)
	stopWait()
	if err != nil {
		s.refused(log, ReasonProtocol, "HBONE preface refused", "err", err)
		tc.Close()
		return
	}
	handshaking = false
	s.handshakeDone(nc)

	c := newH2Conn(tc, false, log)
	c.batch = bc
	c.maxPeerStreams = int(s.cfg.MaxConcurrentStreams)
	c.maxEarlyResets = s.cfg.MaxEarlyResets
	c.maxStreamBuf = s.cfg.MaxStreamBuffer
	c.peerBuf = &peerSt.buffered
	c.maxPeerBuf = s.cfg.MaxPeerBuffer
	c.peerHandlers = &peerSt.handlers
	c.maxPeerHandlers = int64(s.cfg.MaxStreamsPerPeer)
	c.writeTimeout = s.cfg.WriteTimeout
	c.counters = &s.counters
	c.ctx, c.cancel = context.WithCancel(ctx)
	peerCert := cs.PeerCertificates[0]
	c.notAfter = peerCert.NotAfter
	c.onStream = func(st *Stream) {
		// Called from readLoop inside serveConn, whose wg count is held: this Add never races Wait.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.handlerDone()
			s.serveStream(st, peer, peerCert, local, log)
		}()
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		// The handshake finished while the server shut down (an agent handing over: its
		// successor holds the listener now). Reset, the client would fail its request; told
		// GOAWAY with no stream served, it may retry it on a new connection (RFC 9113 §6.8:
		// streams above the last stream id were not processed).
		if err := c.handshake(s.cfg.MaxConcurrentStreams); err != nil {
			c.closeWith(err)
			return
		}
		c.sendAway(ErrServerClosed)
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()

	if err := c.handshake(s.cfg.MaxConcurrentStreams); err != nil {
		s.refused(log, ReasonProtocol, "HBONE preface refused", "err", err)
		c.closeWith(err)
		return
	}
	tc.SetDeadline(time.Time{})
	// An identity is good until its certificate expires: the connection it authenticated ends
	// then too, rather than serve new streams on a certificate the handshake would now refuse.
	// Streams open at that moment get ExpiryDrain to finish (so a rotation never cuts a
	// transfer that began on the old certificate); a new stream ends the connection at once.
	expiry := time.AfterFunc(time.Until(c.notAfter), func() {
		s.counters.add(ReasonCertExpired)
		log.Info("HBONE connection draining", "reason", ReasonCertExpired.String(), "not_after", c.notAfter, "drain", s.cfg.ExpiryDrain)
		c.mu.Lock()
		c.expired = true
		c.mu.Unlock()
		c.shutdown()
		if c.load() == 0 {
			c.Close()
		}
	})
	defer expiry.Stop()
	drain := time.AfterFunc(time.Until(c.notAfter)+s.cfg.ExpiryDrain, func() {
		c.goAwayFor(http2.ErrCodeNo, ReasonNone, fmt.Errorf("peer certificate expired at %v, drain of %v over", c.notAfter, s.cfg.ExpiryDrain))
	})
	defer drain.Stop()
	c.onStreamDone = func(c *h2conn) {
		c.mu.Lock()
		done := c.expired && len(c.streams) == 0
		c.mu.Unlock()
		if done {
			c.Close()
		}
	}
	go c.ctrlLoop()
	go c.keepalive(s.cfg.KeepaliveInterval, s.cfg.KeepaliveTimeout, s.cfg.IdleTimeout)
	c.readLoop()
}

// readPreface reads the HTTP/2 client connection preface (RFC 9113 §3.4).
func readPreface(r io.Reader) error {
	var buf [len(clientPreface)]byte
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return fmt.Errorf("read client preface: %w", err)
	}
	if string(buf[:]) != clientPreface {
		return errBadPreface
	}
	return nil
}

func (s *Server) serveStream(st *Stream, peer spiffeid.ID, peerCert *x509.Certificate, local spiffeid.ID, log *slog.Logger) {
	// st.ctx ends when the peer resets the stream, the connection closes or the server does: the
	// authorization, the dial and the relay all stop then.
	ctx := st.ctx
	defer st.cancel()
	start := time.Now()
	req, reason, err := parseConnect(st.req.Fields, st.req.Truncated)
	req.Peer, req.PeerCert, req.Local = peer, peerCert, local
	if ap, err := netip.ParseAddrPort(st.c.nc.RemoteAddr().String()); err == nil {
		req.Client = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	refused := func(r Reason, err error) {
		s.refuseStream(st, r, err, log)
		if s.cfg.OnStream != nil {
			s.cfg.OnStream(&req, StreamResult{Reason: r, Err: err, Duration: time.Since(start)})
		}
	}
	if err != nil {
		refused(reason, err)
		return
	}
	log = log.With("stream", st.id, "dst", req.Authority.String())
	if s.cfg.Authorize != nil {
		if err := s.cfg.Authorize(ctx, &req); err != nil {
			reason := ReasonDenied
			if re, ok := errors.AsType[*RefusedError](err); ok && re.Reason != ReasonNone {
				reason, err = re.Reason, re.Err
			}
			refused(reason, err)
			return
		}
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	up, err := s.cfg.DialUpstream(dctx, &req)
	cancel()
	if err != nil {
		refused(ReasonUpstreamDial, err)
		return
	}
	if err := st.respond(200, false); err != nil {
		up.Close()
		st.Close()
		return
	}
	// A reset stream or a closed connection wakes both relay halves, even one blocked on a
	// destination that stopped reading or one that never sends: the upstream's deadline passes.
	stopUp := context.AfterFunc(ctx, func() { up.SetDeadline(time.Unix(1, 0)) })
	in, out, err := relay(st, up, relayBounds{idle: s.cfg.StreamIdleTimeout, halfClose: s.cfg.HalfCloseTimeout, active: st.lastActive.Load})
	stopUp()
	switch {
	case errors.Is(err, errStreamIdle):
		s.counters.add(ReasonStreamIdle)
		log.Info("HBONE stream closed", "reason", ReasonStreamIdle.String(), "err", err)
	case errors.Is(err, errHalfCloseTimeout):
		s.counters.add(ReasonHalfCloseTimeout)
		log.Info("HBONE stream closed", "reason", ReasonHalfCloseTimeout.String(), "err", err)
	}
	log.Debug("HBONE stream done", "bytes_in", in, "bytes_out", out, "duration", time.Since(start), "err", err)
	if s.cfg.OnStream != nil {
		s.cfg.OnStream(&req, StreamResult{Err: err, BytesIn: in, BytesOut: out, Duration: time.Since(start)})
	}
}

// refuseStream answers a CONNECT with the reason's status and ends the stream; not one byte of
// the client's reaches any destination.
func (s *Server) refuseStream(st *Stream, r Reason, err error, log *slog.Logger) {
	s.refused(log, r, "HBONE request refused", "stream", st.id, "status", r.Status(), "err", err)
	if st.respond(r.Status(), true) == nil {
		// RFC 9113 §8.1: a complete response before the request ends; stop the client sending.
		st.Reset(http2.ErrCodeNo)
	}
	st.Close()
}

// respond writes the response HEADERS; end also ends our side of the stream.
func (st *Stream) respond(status int, end bool) error {
	c := st.c
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}
	st.wmu.Lock()
	defer st.wmu.Unlock()
	if err := c.write(func() error { return c.writeHeadersLocked(st.id, fields, end) }); err != nil {
		return err
	}
	c.mu.Lock()
	st.responded = true
	if end {
		st.sentEnd = true
		c.maybeRemoveLocked(st)
	}
	c.mu.Unlock()
	return nil
}

// Shutdown stops accepting, tells every connection to go away (GOAWAY), waits until their
// streams are done and the handshakes in progress have ended (each such connection is sent
// away with GOAWAY, no stream served: at most HandshakeTimeout) or ctx ends, then closes what
// is left.
func (s *Server) Shutdown(ctx context.Context) error {
	conns := s.stop()
	for _, c := range conns {
		c.shutdown()
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		// Handshakes in progress finish too: their connections are sent away (serveConn).
		busy := s.handshaking()
		for _, c := range conns {
			busy += c.load()
		}
		if busy == 0 {
			break
		}
		select {
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-t.C:
		}
	}
	return s.Close()
}

// Close closes every listener and connection at once, cancels handshakes, dials and relays in
// progress, and waits for their goroutines.
func (s *Server) Close() error {
	conns := s.stop()
	s.cancel()
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
	return nil
}

// stop marks the server closed, so that Serve and serveConn take nothing new, closes every
// listener, and returns the connections open at this moment for the caller to end its way.
func (s *Server) stop() []*h2conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*h2conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}
