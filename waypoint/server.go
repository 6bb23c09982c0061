package waypoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/tunnel"
	"github.com/amesh-dev/amesh/workload"
)

// Options configure a Server.
type Options struct {
	// Source gives the waypoint's SVID (Identity's) and the bundles that verify its peers.
	Source identity.Source
	// Identity is the waypoint's own SPIFFE ID.
	Identity spiffeid.ID
	// Logger receives the waypoint's events and one "request" line per request (the access
	// log); discarded when nil.
	Logger *slog.Logger
}

// Server is the Go waypoint: HBONE in (a caller's agent sends it the connections of the
// destinations it fronts, :authority the original destination), HTTP/1.1 or h2c inside each
// stream, each request authorized (the waypoint's L7 policies, then the destination's L4 ones,
// both against the original caller's certificate identity) and routed (HTTPRoute subset), then
// HBONE out to the chosen endpoint, presenting the waypoint's identity.
type Server struct {
	opts  Options
	log   *slog.Logger
	cfg   atomic.Pointer[Config]
	hbone *tunnel.Server
	cli   *tunnel.Client
	http  *http.Server
	conns *connListener
	proxy *httputil.ReverseProxy
	rr    atomic.Uint64
	wrr   weighted
}

// New returns a Server serving cfg until Update replaces it.
func New(cfg Config, opts Options) (*Server, error) {
	if opts.Source == nil || opts.Identity.IsZero() {
		return nil, errors.New("waypoint: Source and Identity are required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, log: log, conns: newConnListener()}
	s.cfg.Store(&cfg)
	var err error
	s.cli, err = tunnel.NewClient(tunnel.ClientConfig{Source: opts.Source, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("waypoint: %w", err)
	}
	s.hbone, err = tunnel.NewServer(tunnel.ServerConfig{
		Source: opts.Source, Authorize: s.authorize, DialUpstream: s.accept, Logger: log,
	})
	if err != nil {
		s.cli.Close()
		return nil, fmt.Errorf("waypoint: %w", err)
	}
	transport := &http.Transport{
		DialContext:         s.dialEndpoint,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     90 * time.Second,
	}
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(targetKey{}).(*target)
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", t.upstream.String()
			pr.Out.Host = pr.In.Host // the destination sees the host its caller asked for
			pr.SetXForwarded()
		},
		Transport:    transport,
		ErrorHandler: s.upstreamError,
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	s.http = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if cc, ok := c.(*callerConn); ok {
				return context.WithValue(ctx, callerKey{}, cc.req)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go s.http.Serve(s.conns)
	return s, nil
}

// Update replaces what the waypoint serves; requests already routed carry on.
func (s *Server) Update(cfg Config) { s.cfg.Store(&cfg) }

// Config returns what the waypoint serves now.
func (s *Server) Config() Config { return *s.cfg.Load() }

// Serve accepts HBONE on ln until ctx is done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.hbone.Serve(ctx, ln, s.opts.Identity)
}

// Counters are the HBONE server's refusals, by reason.
func (s *Server) Counters() *tunnel.Counters { return s.hbone.Counters() }

// Close stops everything the Server runs.
func (s *Server) Close() error {
	err := s.hbone.Close()
	s.http.Close()
	s.conns.Close()
	s.cli.Close()
	return err
}

// authorize admits a CONNECT only to a destination this waypoint fronts: a VIP and port of
// one of its services, or a workload that uses it. The request itself is authorized per
// HTTP request, once its method and path are known.
func (s *Server) authorize(_ context.Context, req *tunnel.Request) error {
	if _, err := s.cfg.Load().destination(req.Authority); err != nil {
		return tunnel.Refuse(tunnel.ReasonDenied, err)
	}
	return nil
}

// accept hands the stream to the HTTP server: the tunnel relays between the stream and one
// end of a socket pair, the HTTP server reads requests from the other.
func (s *Server) accept(ctx context.Context, req *tunnel.Request) (net.Conn, error) {
	ours, theirs, err := socketPair()
	if err != nil {
		return nil, fmt.Errorf("waypoint: %w", err)
	}
	if err := s.conns.push(ctx, &callerConn{Conn: theirs, req: req}); err != nil {
		ours.Close()
		theirs.Close()
		return nil, err
	}
	return ours, nil
}

// socketPair returns two connected stream sockets (with half-close, unlike net.Pipe).
func socketPair() (net.Conn, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	conn := func(fd int, name string) (net.Conn, error) {
		syscall.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		return net.FileConn(f)
	}
	a, err := conn(fds[0], "waypoint-stream")
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	b, err := conn(fds[1], "waypoint-http")
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

type callerKey struct{}
type targetKey struct{}

// target is where one request goes, for the proxy and the access log.
type target struct {
	upstream netip.AddrPort
	ep       Endpoint
	route    string
}

// serveHTTP authorizes, routes and forwards one request.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	req, _ := r.Context().Value(callerKey{}).(*tunnel.Request)
	if req == nil {
		http.Error(w, "waypoint: request without an HBONE caller", http.StatusInternalServerError)
		return
	}
	rw := &statusWriter{ResponseWriter: w}
	cfg := s.cfg.Load()
	t, reason := s.route(cfg, req, r)
	if t == nil {
		rw.status = reason.status
		http.Error(rw, reason.body, reason.status)
	} else {
		ctx := context.WithValue(r.Context(), targetKey{}, &t.target)
		if d := t.timeout; d > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		s.proxy.ServeHTTP(rw, r.WithContext(ctx))
	}
	attrs := []any{"method", r.Method, "path", r.URL.Path, "host", r.Host, "status", rw.code(),
		"src_addr", req.Client.Addr().String(), "src_id", req.Peer.String(), "authority", req.Authority.String(),
		"duration_ms", float64(time.Since(start).Microseconds()) / 1000, "waypoint", cfg.Namespace + "/" + cfg.Name}
	if t != nil {
		attrs = append(attrs, "upstream", t.upstream.String(), "dst_id", t.ep.Identity.String())
		if t.route != "" {
			attrs = append(attrs, "route", t.route)
		}
	}
	if reason.body != "" {
		attrs = append(attrs, "reason", reason.body)
	} else if rw.reason != "" {
		attrs = append(attrs, "reason", rw.reason)
	}
	s.log.Info("request", attrs...)
}

// refusal is a request the waypoint answers itself.
type refusal struct {
	status int
	body   string
}

// route decides one request: who may make it, and where it goes.
func (s *Server) route(cfg *Config, req *tunnel.Request, r *http.Request) (*routedTarget, refusal) {
	dst, err := cfg.destination(req.Authority)
	if err != nil {
		return nil, refusal{http.StatusForbidden, err.Error()}
	}
	caller := req.Peer.String()
	hr := policy.HTTPRequest{SrcPrincipal: caller, DstPort: req.Authority.Port(), Host: r.Host, Method: r.Method, Path: r.URL.Path, Headers: r.Header}
	hr.Waypoint.Namespace, hr.Waypoint.Name = cfg.Namespace, cfg.Name
	if d := policy.EvaluateHTTP(cfg.Policies, hr, cfg.RootNamespace); !d.Allowed {
		return nil, refusal{http.StatusForbidden, "RBAC: access denied: " + d.Reason}
	}
	svc, port, timeout, routeName := dst.svc, dst.port, time.Duration(0), ""
	if dst.svc != nil {
		if routes := cfg.routesFor(dst.svc.Name, dst.svc.Namespace, req.Authority.Port()); len(routes) > 0 {
			rule, key, ok := match(routes, r)
			if !ok {
				return nil, refusal{http.StatusNotFound, errNoRoute.Error()}
			}
			b, ok := s.wrr.pick(key, rule.Backends)
			if !ok {
				return nil, refusal{http.StatusInternalServerError, "route " + key + ": every backend has weight 0"}
			}
			svc = cfg.service(dst.svc.Namespace, b.Service)
			if svc == nil {
				return nil, refusal{http.StatusInternalServerError, fmt.Sprintf("route %s: backend service %s/%s is not known", key, dst.svc.Namespace, b.Service)}
			}
			port, timeout, routeName = b.Port, rule.Timeout, key
		}
	}
	var ep Endpoint
	var tport uint16
	if svc != nil {
		tport = svc.targetPort(port)
		if tport == 0 {
			return nil, refusal{http.StatusInternalServerError, fmt.Sprintf("service %s/%s has no port %d", svc.Namespace, svc.Name, port)}
		}
		if len(svc.Endpoints) == 0 {
			return nil, refusal{http.StatusServiceUnavailable, fmt.Sprintf("no healthy upstream: service %s/%s has no endpoint in the mesh", svc.Namespace, svc.Name)}
		}
		ep = svc.Endpoints[s.rr.Add(1)%uint64(len(svc.Endpoints))]
	} else {
		ep, tport = dst.ep, req.Authority.Port()
	}
	// The destination's own (L4) policies, which its agent leaves to its waypoint: the caller
	// here is the original one, whom that agent does not see.
	d := policy.Evaluate(cfg.Policies, policy.Request{SrcPrincipal: caller, DstNamespace: ep.Namespace, DstLabels: ep.Labels, DstPort: tport}, cfg.RootNamespace)
	if !d.Allowed {
		return nil, refusal{http.StatusForbidden, "RBAC: access denied: " + d.Reason}
	}
	return &routedTarget{target: target{upstream: netip.AddrPortFrom(ep.IP, tport), ep: ep, route: routeName}, timeout: timeout}, refusal{}
}

// routedTarget is a target with the timeout of the rule that chose it.
type routedTarget struct {
	target
	timeout time.Duration
}

// dialEndpoint opens the proxy's connections: HBONE to the endpoint at addr, proving its
// identity, presenting the waypoint's.
func (s *Server) dialEndpoint(ctx context.Context, _, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("waypoint: upstream %q: %w", addr, err)
	}
	ep, ok := s.cfg.Load().endpointByIP(ap.Addr())
	if !ok {
		return nil, fmt.Errorf("waypoint: upstream %s is no endpoint of this waypoint any more", ap)
	}
	st, err := s.cli.Dial(ctx, tunnel.Target{
		Source: s.opts.Identity, Dest: ep.Identity,
		Addr: netip.AddrPortFrom(ep.IP, tunnel.HBONEPort), Authority: ap,
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}

// upstreamError answers a request the proxy could not complete.
func (s *Server) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	status, body := http.StatusServiceUnavailable, "upstream connect error: "+err.Error()
	if errors.Is(err, context.DeadlineExceeded) {
		status, body = http.StatusGatewayTimeout, "upstream request timeout"
	}
	if sw, ok := w.(*statusWriter); ok {
		sw.reason = body
	}
	http.Error(w, body, status)
}

// statusWriter remembers the status written, for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
	reason string
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush passes streaming responses on as they come.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) code() string {
	if w.status == 0 {
		return strconv.Itoa(http.StatusOK)
	}
	return strconv.Itoa(w.status)
}

// callerConn is the HTTP side of one HBONE stream, carrying who sent it.
type callerConn struct {
	net.Conn
	req *tunnel.Request
}

// RemoteAddr is the caller's pod address, which the proxy puts in X-Forwarded-For.
func (c *callerConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.req.Client) }

// connListener is the HTTP server's listener: the streams accept hands it.
type connListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) push(ctx context.Context, c net.Conn) error {
	select {
	case l.ch <- c:
		return nil
	case <-l.done:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Accept returns the next stream.
func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops Accept.
func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr is a placeholder: the streams have no listening address of their own.
func (l *connListener) Addr() net.Addr { return &net.UnixAddr{Name: "waypoint", Net: "unix"} }

// Follow rebuilds what the waypoint serves from every state of store until ctx is done. A
// state in which the waypoint is not one (its Service gone, its waypoint-for removed) keeps the
// last good Config and is logged: the waypoint does not stop serving because of a bad edit.
func (s *Server) Follow(ctx context.Context, store *workload.Store) {
	updates, cancel := store.Subscribe()
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-updates:
			cfg := s.cfg.Load()
			next, err := Build(st, cfg.Namespace, cfg.Name, cfg.Identity)
			if err != nil {
				s.log.Warn("state not applied to the waypoint; serving the last good one", "err", err)
				continue
			}
			s.Update(next)
			s.log.Info("waypoint config applied", "services", len(next.Services), "workloads", len(next.Workloads), "routes", len(next.Routes), "policies", len(next.Policies))
		}
	}
}
