package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/amesh-dev/amesh/identity"
)

// ServerConfig configures a Server. Source is required.
type ServerConfig struct {
	// Source gives each listener's SVID and the bundles that verify clients.
	Source identity.Source
	// Authorize decides a CONNECT from req.Peer to req.Authority; a non-nil error denies (401).
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
	// MaxConcurrentStreams per connection, advertised in SETTINGS; 1000 when zero.
	MaxConcurrentStreams uint32
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

	mu        sync.Mutex
	conns     map[*h2conn]struct{}
	listeners map[net.Listener]struct{}
	closed    bool
	wg        sync.WaitGroup
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
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = 1000
	}
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
	return &Server{cfg: cfg, log: log, conns: map[*h2conn]struct{}{}, listeners: map[net.Listener]struct{}{}}, nil
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// Counters returns the server's refusal counts.
func (s *Server) Counters() *Counters { return &s.counters }

// Serve accepts HBONE on ln, presenting local's SVID, until ctx is done or the server closes.
// It closes ln when it returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener, local spiffeid.ID) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	cfg := serverTLS(s.cfg.Source, local)
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("tunnel: accept on %s: %w", ln.Addr(), err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, nc, cfg, local)
		}()
	}
}

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("tunnel: server closed")

func (s *Server) serveConn(ctx context.Context, nc net.Conn, cfg *tls.Config, local spiffeid.ID) {
	log := s.log.With("remote", nc.RemoteAddr().String(), "local_id", local.String())
	bc := newBatchConn(nc)
	tc := tls.Server(bc, cfg)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	if err != nil {
		rerr := classifyHandshake(hctx, err)
		cancel()
		s.counters.add(ReasonOf(rerr))
		log.Info("HBONE handshake refused", "reason", ReasonOf(rerr).String(), "err", err)
		nc.Close()
		return
	}
	cancel()
	cs := tc.ConnectionState()
	peer, err := peerID(cs)
	if err != nil {
		s.counters.add(ReasonOf(err))
		log.Info("HBONE peer refused", "reason", ReasonOf(err).String(), "err", err)
		tc.Close()
		return
	}
	log = log.With("peer_id", peer.String())

	c := newH2Conn(tc, false, log)
	c.batch = bc
	c.maxPeerStreams = int(s.cfg.MaxConcurrentStreams)
	c.counters = &s.counters
	peerCert := cs.PeerCertificates[0]
	c.onStream = func(st *Stream) {
		// Called from readLoop inside serveConn, whose wg count is held: this Add never races Wait.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveStream(ctx, st, peer, peerCert, local, log)
		}()
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		tc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()

	tc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if err := c.handshake(s.cfg.MaxConcurrentStreams); err != nil {
		s.counters.add(ReasonProtocol)
		log.Info("HBONE preface refused", "reason", ReasonProtocol.String(), "err", err)
		c.closeWith(err)
		return
	}
	tc.SetDeadline(time.Time{})
	go c.ctrlLoop()
	go c.keepalive(s.cfg.KeepaliveInterval, s.cfg.KeepaliveTimeout, s.cfg.IdleTimeout)
	c.readLoop()
}

func (s *Server) serveStream(ctx context.Context, st *Stream, peer spiffeid.ID, peerCert *x509.Certificate, local spiffeid.ID, log *slog.Logger) {
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
			refused(ReasonDenied, err)
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
	in, out, err := Relay(st, up)
	log.Debug("HBONE stream done", "bytes_in", in, "bytes_out", out, "duration", time.Since(start), "err", err)
	if s.cfg.OnStream != nil {
		s.cfg.OnStream(&req, StreamResult{Err: err, BytesIn: in, BytesOut: out, Duration: time.Since(start)})
	}
}

// refuseStream answers a CONNECT with the reason's status and ends the stream; not one byte of
// the client's reaches any destination.
func (s *Server) refuseStream(st *Stream, r Reason, err error, log *slog.Logger) {
	s.counters.add(r)
	log.Info("HBONE request refused", "stream", st.id, "reason", r.String(), "status", r.Status(), "err", err)
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
	if end {
		c.mu.Lock()
		st.sentEnd = true
		c.maybeRemoveLocked(st)
		c.mu.Unlock()
	}
	return nil
}

// Shutdown stops accepting, tells every connection to go away (GOAWAY), waits until their
// streams are done or ctx ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	conns := s.stop()
	for _, c := range conns {
		c.shutdown()
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		busy := 0
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

// Close closes every listener and connection at once and waits for their goroutines.
func (s *Server) Close() error {
	for _, c := range s.stop() {
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
