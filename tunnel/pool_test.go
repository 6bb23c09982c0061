package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func echoOnce(t *testing.T, st *Stream, msg string) {
	t.Helper()
	if _, err := st.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo %q, %v", buf, err)
	}
}

func TestPool(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, e *env)
	}{
		{"sequential connections reuse one handshake", func(t *testing.T, e *env) {
			for i := range 50 {
				st := e.dial(context.Background())
				echoOnce(t, st, "hello")
				st.CloseWrite()
				io.ReadAll(st)
				st.Close()
				_ = i
			}
			if got := e.ln.accepted.Load(); got != 1 {
				t.Errorf("server accepted %d TCP connections for 50 sequential streams, want 1", got)
			}
			if got := e.client.pool.dials.Load(); got != 1 {
				t.Errorf("pool did %d handshakes, want 1", got)
			}
		}},
		{"101st stream opens a second connection", func(t *testing.T, e *env) {
			var streams []*Stream
			for range 100 {
				streams = append(streams, e.dial(context.Background()))
			}
			if got := e.client.pool.size(); got != 1 {
				t.Fatalf("100 streams on %d connections, want 1", got)
			}
			streams = append(streams, e.dial(context.Background()))
			if got := e.client.pool.size(); got != 2 {
				t.Fatalf("101 streams on %d connections, want 2", got)
			}
			for _, st := range streams {
				echoOnce(t, st, "x")
				st.Close()
			}
			// A freed slot is reused rather than a third connection dialed.
			echoOnce(t, e.dial(context.Background()), "y")
			if got := e.client.pool.dials.Load(); got != 2 {
				t.Errorf("pool dialed %d connections, want 2", got)
			}
		}},
		{"other identity, other connection", func(t *testing.T, e *env) {
			st := e.dial(context.Background())
			defer st.Close()
			tg := e.target()
			tg.Source = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other")
			st2, err := e.client.Dial(context.Background(), tg)
			if err != nil {
				t.Fatal(err)
			}
			defer st2.Close()
			if got := e.client.pool.size(); got != 2 {
				t.Errorf("two source identities share %d connections, want 2", got)
			}
		}},
		{"concurrent first dials share one handshake", func(t *testing.T, e *env) {
			var wg sync.WaitGroup
			for range 50 {
				wg.Go(func() {
					st, err := e.client.Dial(context.Background(), e.target())
					if err != nil {
						t.Error(err)
						return
					}
					st.Close()
				})
			}
			wg.Wait()
			if got := e.client.pool.dials.Load(); got != 1 {
				t.Errorf("50 concurrent first dials made %d handshakes, want 1", got)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newEnv(t, envOpts{})) })
	}
}

func TestPoolIdleEviction(t *testing.T) {
	e := newEnv(t, envOpts{client: func(c *ClientConfig) { c.IdleTimeout = 200 * time.Millisecond }})
	st := e.dial(context.Background())
	echoOnce(t, st, "hello")
	// Busy connections are never evicted, however long the stream lives.
	time.Sleep(400 * time.Millisecond)
	echoOnce(t, st, "still here")
	st.CloseWrite()
	io.ReadAll(st)
	st.Close()
	waitFor(t, "idle connection to close", func() bool { return e.client.pool.size() == 0 })
	waitFor(t, "server to drop the connection", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return len(e.srv.conns) == 0
	})
	st = e.dial(context.Background())
	defer st.Close()
	if got := e.client.pool.dials.Load(); got != 2 {
		t.Errorf("after eviction the pool dialed %d times in all, want 2", got)
	}
}

// freezer forwards TCP to a target until frozen, then forwards nothing and closes nothing: a
// peer that vanished without a FIN, as behind a dead node.
type freezer struct {
	ln     net.Listener
	frozen chan struct{}
	wg     sync.WaitGroup
}

func newFreezer(t *testing.T, target string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, frozen: make(chan struct{})}
	var conns []net.Conn
	var mu sync.Mutex
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					select {
					case <-f.frozen:
						return
					default:
					}
					if err != nil {
						return
					}
					dst.Write(buf[:n])
				}
			}
			f.wg.Go(func() { pipe(up, c) })
			f.wg.Go(func() { pipe(c, up) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func TestKeepaliveClosesDeadPeer(t *testing.T) {
	var fz *freezer
	e := newEnv(t, envOpts{client: func(c *ClientConfig) {
		c.KeepaliveInterval = 50 * time.Millisecond
		c.KeepaliveTimeout = 200 * time.Millisecond
		c.Dial = func(ctx context.Context, _ netip.Addr, _ netip.AddrPort) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", fz.ln.Addr().String())
		}
	}})
	fz = newFreezer(t, e.ln.Addr().String())
	st := e.dial(context.Background())
	defer st.Close()
	echoOnce(t, st, "alive")
	close(fz.frozen)
	start := time.Now()
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := st.Read(make([]byte, 1))
	if !errors.Is(err, ErrConnClosed) {
		t.Fatalf("read on a tunnel to a dead peer = %v, want ErrConnClosed from the keepalive", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("dead peer noticed after %v, want about interval+timeout", el)
	}
	waitFor(t, "dead connection to leave the pool", func() bool { return e.client.pool.size() == 0 })
}

// TestIstioHeaders: baggage, traceparent and forwarded reach the server's Request as sent.
func TestIstioHeaders(t *testing.T) {
	got := make(chan Request, 1)
	e := newEnv(t, envOpts{server: func(c *ServerConfig) {
		c.Authorize = func(ctx context.Context, req *Request) error {
			got <- *req
			return nil
		}
	}})
	tg := e.target()
	tg.Baggage = "k8s.namespace.name=shop,k8s.pod.name=web-1"
	tg.Traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tg.Forwarded = "for=10.20.1.2"
	st, err := e.client.Dial(context.Background(), tg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	req := <-got
	if req.Baggage != tg.Baggage || req.Traceparent != tg.Traceparent || req.Forwarded != tg.Forwarded {
		t.Errorf("server saw baggage %q traceparent %q forwarded %q", req.Baggage, req.Traceparent, req.Forwarded)
	}
	if req.Peer != clientID || req.Local != serverID || req.Authority != e.backend.addr {
		t.Errorf("server saw peer %s local %s authority %s", req.Peer, req.Local, req.Authority)
	}
	if !req.Client.Addr().IsLoopback() || req.Client.Port() == 0 {
		t.Errorf("server saw client address %s", req.Client)
	}
}

// TestRotation: a tunnel opened before its certificates rotate keeps working after rotation and
// after the old certificates expire; new connections present the new certificate.
func TestRotation(t *testing.T) {
	serials := make(chan string, 16)
	e := newEnv(t, envOpts{caTTL: 2 * time.Second, server: func(c *ServerConfig) {
		c.Authorize = func(ctx context.Context, req *Request) error {
			serials <- req.PeerCert.SerialNumber.String()
			return nil
		}
	}})
	rotated, stop := e.src.Watch(clientID)
	defer stop()
	old := e.dial(context.Background())
	defer old.Close()
	echoOnce(t, old, "before")
	first := <-serials

	select {
	case <-rotated:
	case <-time.After(5 * time.Second):
		t.Fatal("client SVID did not rotate")
	}
	echoOnce(t, old, "after rotation")

	fresh := e.dial(context.Background())
	defer fresh.Close()
	echoOnce(t, fresh, "new")
	second := <-serials
	if second == first {
		t.Fatalf("a connection after rotation presented the old certificate %s", first)
	}
	if got := e.client.pool.dials.Load(); got != 2 {
		t.Errorf("pool dialed %d connections, want a second one after rotation", got)
	}
	time.Sleep(2200 * time.Millisecond) // past the first certificate's NotAfter
	echoOnce(t, old, "after expiry")
}

// TestFreshUntil: a pooled connection is fresh until half the life of its younger certificate;
// one made past that point (the sources have not rotated yet) gets staleGrace, not zero, but
// never past an expiry.
func TestFreshUntil(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	leaf := func(from, to time.Time) *x509.Certificate { return &x509.Certificate{NotBefore: from, NotAfter: to} }
	peer := func(l *x509.Certificate) tls.ConnectionState {
		return tls.ConnectionState{PeerCertificates: []*x509.Certificate{l}}
	}
	for _, tc := range []struct {
		name       string
		peer, ours *x509.Certificate
		now, want  time.Time
	}{
		{"young: half-life of the younger", leaf(t0, t0.Add(2*time.Minute)), leaf(t0.Add(-time.Minute), t0.Add(3*time.Minute)), t0, t0.Add(time.Minute)},
		{"past half-life, not rotated: grace", leaf(t0, t0.Add(2*time.Minute)), leaf(t0, t0.Add(2*time.Minute)), t0.Add(70 * time.Second), t0.Add(70*time.Second + staleGrace)},
		{"grace capped at expiry", leaf(t0, t0.Add(2*time.Minute)), leaf(t0, t0.Add(2*time.Minute)), t0.Add(110 * time.Second), t0.Add(2 * time.Minute)},
		{"no peer certificate", nil, leaf(t0, t0.Add(2*time.Minute)), t0, t0.Add(time.Minute)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cs tls.ConnectionState
			if tc.peer != nil {
				cs = peer(tc.peer)
			}
			if got := freshUntil(cs, tc.ours, tc.now); !got.Equal(tc.want) {
				t.Errorf("freshUntil = %v, want %v", got, tc.want)
			}
		})
	}
}
