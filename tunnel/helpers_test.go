package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/internal/testenv"
)

// TestMain fails the run if tests leak goroutines or sockets (every connection and listener the
// proxy and the tests open must be closed by the end; other descriptors belong to the runtime and
// the test framework).
func TestMain(m *testing.M) {
	before := openSockets()
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
		deadline := time.Now().Add(3 * time.Second)
		for openSockets() > before && time.Now().Before(deadline) {
			runtime.GC() // let finalizers of dropped *os.File run before judging
			time.Sleep(50 * time.Millisecond)
		}
		if after := openSockets(); after > before {
			fmt.Fprintf(os.Stderr, "socket leak: %d open before the tests, %d after:\n%s", before, after, describeFDs())
			code = 1
		}
	}
	os.Exit(code)
}

func describeFDs() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var b strings.Builder
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fmt.Fprintf(&b, "  fd %s -> %s\n", e.Name(), target)
	}
	return b.String()
}

// openSockets counts this process's open sockets (0 where /proc is not there; the goroutine
// check still runs).
func openSockets() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range ents {
		if target, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(target, "socket:") {
			n++
		}
	}
	return n
}

var (
	testTD   = spiffeid.RequireTrustDomainFromString("cluster.local")
	clientID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client")
	serverID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/server")
)

// env is a CA, an identity cache, an echo backend, an HBONE server on loopback and a client.
type env struct {
	t       testing.TB
	ca      *identity.CA
	src     *identity.Cache
	srv     *Server
	ln      *countingListener
	backend *backend
	client  *Client
}

type envOpts struct {
	server func(*ServerConfig)
	client func(*ClientConfig)
	caTTL  time.Duration
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	ca, err := identity.NewCA(testTD, identity.CAConfig{SVIDTTL: o.caTTL})
	if err != nil {
		t.Fatal(err)
	}
	src := identity.NewCache(ca, nil)
	t.Cleanup(func() { src.Close() })
	e := &env{t: t, ca: ca, src: src, backend: newEchoBackend(t)}

	scfg := ServerConfig{Source: src}
	if o.server != nil {
		o.server(&scfg)
	}
	srv, err := NewServer(scfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.ln = &countingListener{Listener: raw}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(context.Background(), e.ln, serverID)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	e.client = e.newClient(src, o.client)
	return e
}

func (e *env) newClient(src identity.Source, mod func(*ClientConfig)) *Client {
	cfg := ClientConfig{Source: src}
	if mod != nil {
		mod(&cfg)
	}
	c, err := NewClient(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) target() Target {
	return Target{
		Source:    clientID,
		Dest:      serverID,
		Addr:      netip.MustParseAddrPort(e.ln.Addr().String()),
		Authority: e.backend.addr,
	}
}

func (e *env) dial(ctx context.Context) *Stream {
	e.t.Helper()
	st, err := e.client.Dial(ctx, e.target())
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	return st
}

// countingListener counts accepted TCP connections (one per HBONE connection).
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// backend is a TCP server on loopback that runs handle on every connection and counts them.
type backend struct {
	addr     netip.AddrPort
	accepted atomic.Int64
	bytes    atomic.Int64
}

func newBackend(t testing.TB, handle func(c *net.TCPConn, b *backend)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: netip.MustParseAddrPort(ln.Addr().String())}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn), b)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return b
}

// newEchoBackend echoes until EOF, then half-closes.
func newEchoBackend(t testing.TB) *backend {
	return newBackend(t, func(c *net.TCPConn, b *backend) {
		n, _ := io.Copy(c, c)
		b.bytes.Add(n)
		c.CloseWrite()
	})
}

// staticSource presents one fixed SVID whatever identity is asked for, with a chosen bundle:
// the way to put bad certificates in front of a server.
type staticSource struct {
	svid   *x509svid.SVID
	bundle x509bundle.Source
}

func (s staticSource) SVID(context.Context, spiffeid.ID) (*x509svid.SVID, error) {
	if s.svid == nil {
		return nil, errors.New("no svid")
	}
	return s.svid, nil
}

func (s staticSource) Watch(spiffeid.ID) (<-chan struct{}, func()) {
	return make(chan struct{}), func() {}
}

func (s staticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundle.GetX509BundleForTrustDomain(td)
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, 5*time.Second, cond)
}

// hangingUp listens on loopback for as long as the test runs and hangs up on every connection
// once it has read the ClientHello, leaving it unacknowledged: a reset, as a server going away
// mid-handshake does. It returns the address.
func hangingUp(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			c.Read(make([]byte, 512))
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}
