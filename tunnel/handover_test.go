package tunnel

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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
