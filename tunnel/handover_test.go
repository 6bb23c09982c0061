package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestHandOverLosesNoDial is the upgrade of the agent as the tunnel sees it: a second server
// starts serving the same listening socket (a duplicate of it, as the agent's successor gets
// over the hand-off socket) and the first one shuts down (GOAWAY, no new streams) while
// clients keep dialing. Streams that crossed the GOAWAY are refused unprocessed
// (REFUSED_STREAM), so the client must open them again on a new connection, never fail them.
func TestHandOverLosesNoDial(t *testing.T) {
	e := newEnv(t, envOpts{})
	f, err := e.ln.Listener.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	dup, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	next, err := NewServer(ServerConfig{Source: e.src})
	if err != nil {
		t.Fatal(err)
	}
	nextDone := make(chan struct{})
	go func() {
		defer close(nextDone)
		next.Serve(context.Background(), dup, serverID)
	}()
	t.Cleanup(func() { next.Close(); <-nextDone })

	const workers, perWorker = 8, 150
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	deadline := time.Now().Add(20 * time.Second)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				if time.Now().After(deadline) {
					return
				}
				if err := echoDial(e, fmt.Sprintf("w%d-%d", w, i)); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	// Shut the first server down while the dials run: every client connection it holds gets
	// a GOAWAY with streams in flight.
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	wg.Wait()
	t.Logf("%d dials completed, %d failed, across the hand-over", ok.Load(), failed.Load())
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d dials failed across the hand-over; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	if ok.Load() == 0 {
		t.Fatal("no dial completed")
	}
}

// echoDial opens one stream, echoes msg over it and closes it.
func echoDial(e *env, msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := e.client.Dial(ctx, e.target())
	if err != nil {
		return err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(st, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(st, buf); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return st.CloseWrite()
}

// TestDialRetriesAServerThatHungUp: a server that closes a connection while it is being set up
// (as an agent handing over to its successor ends the handshakes it has in progress) costs the
// dial a new connection, not a failure; a server that keeps hanging up still fails it, after a
// bounded number of tries.
func TestDialRetriesAServerThatHungUp(t *testing.T) {
	for _, tt := range []struct {
		name    string
		hangups int32 // connections the server hangs up before it serves
		ok      bool
	}{
		{"at accept, once", 1, true},
		{"at accept, twice", 2, true},
		{"always", 1 << 30, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hang := hangingUp(t)
			var dials atomic.Int32
			e := newEnv(t, envOpts{client: func(c *ClientConfig) {
				c.Dial = func(ctx context.Context, _ netip.Addr, addr netip.AddrPort) (net.Conn, error) {
					if dials.Add(1) <= tt.hangups {
						addr = hang
					}
					return (&net.Dialer{}).DialContext(ctx, "tcp", addr.String())
				}
			}})
			err := echoDial(e, "after a hang-up")
			if tt.ok && err != nil {
				t.Fatalf("dial after %d hang-ups: %v", tt.hangups, err)
			}
			if !tt.ok {
				if err == nil {
					t.Fatal("a server that always hangs up served the dial")
				}
				if n := dials.Load(); n != 3 {
					t.Errorf("%d connections tried, want 3 (one and two retries)", n)
				}
			}
		})
	}
}

// TestShutdownSendsLateHandshakesAway: a connection the server accepted just before it shut down
// (an agent handing over: its successor holds the listener by then) finishes its handshake and is
// told GOAWAY NO_ERROR with no stream served, which lets an HTTP/2 client (ztunnel's, x/net's)
// retry its request on a new connection (RFC 9113 §6.8), instead of a reset mid-handshake that
// fails it.
func TestShutdownSendsLateHandshakesAway(t *testing.T) {
	e := newEnv(t, envOpts{})
	nc, err := net.Dial("tcp", e.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	waitFor(t, "the server to take the connection", func() bool { return e.srv.handshaking() == 1 })
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- e.srv.Shutdown(ctx)
	}()
	waitFor(t, "the server to stop taking connections", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return e.srv.closed
	})
	time.Sleep(50 * time.Millisecond) // Shutdown is now waiting, or (before the fix) done

	var presented *x509.Certificate
	tc := tls.Client(nc, clientTLS(e.src, clientID, serverID, &presented))
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake during Shutdown: %v", err)
	}
	bw := bufio.NewWriter(tc)
	fr := http2.NewFramer(bw, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hbuf bytes.Buffer
	henc := hpack.NewEncoder(&hbuf)
	henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	henc.WriteField(hpack.HeaderField{Name: ":authority", Value: e.backend.addr.String()})
	bw.WriteString(http2.ClientPreface)
	fr.WriteSettings()
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hbuf.Bytes(), EndHeaders: true})
	if err := bw.Flush(); err != nil {
		t.Fatalf("preface and CONNECT: %v", err)
	}
	var goAway *http2.GoAwayFrame
	for goAway == nil {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the server's answer: %v (want SETTINGS, then GOAWAY)", err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			goAway = f
		case *http2.MetaHeadersFrame:
			t.Fatalf("stream %d answered %q by a server shutting down", f.StreamID, f.PseudoValue("status"))
		}
	}
	if goAway.ErrCode != http2.ErrCodeNo || goAway.LastStreamID != 0 {
		t.Fatalf("GOAWAY %v, last stream %d; want NO_ERROR, 0 (no stream served: retry elsewhere)", goAway.ErrCode, goAway.LastStreamID)
	}
	// Then the connection ends cleanly: the client read all of it, nothing was reset.
	if _, err := io.Copy(io.Discard, tc); err != nil {
		t.Fatalf("after the GOAWAY: %v, want a clean end", err)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}
