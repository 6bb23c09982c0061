package tunnel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// sendRandom writes n pseudo-random bytes (seeded) to w and returns their sha256.
func sendRandom(w io.Writer, n int64, seed uint64) ([32]byte, error) {
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	h := sha256.New()
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		chunk := buf[:min(int64(len(buf)), n)]
		rng.Read(chunk)
		h.Write(chunk)
		if _, err := w.Write(chunk); err != nil {
			return [32]byte{}, err
		}
		n -= int64(len(chunk))
	}
	return [32]byte(h.Sum(nil)), nil
}

func hashAll(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 256<<10))
	return [32]byte(h.Sum(nil)), n, err
}

func size(short, full int64) int64 {
	if testing.Short() {
		return short
	}
	return full
}

// TestRoundTripLarge sends 256 MiB each way at once through client → server → echo backend.
func TestRoundTripLarge(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := e.dial(ctx)
	defer st.Close()
	n := size(16<<20, 256<<20)

	type res struct {
		sum [32]byte
		err error
	}
	sent := make(chan res, 1)
	go func() {
		sum, err := sendRandom(st, n, 1)
		if err == nil {
			err = st.CloseWrite()
		}
		sent <- res{sum, err}
	}()
	got, gotN, err := hashAll(st)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	s := <-sent
	if s.err != nil {
		t.Fatalf("write: %v", s.err)
	}
	if gotN != n || got != s.sum {
		t.Fatalf("echoed %d bytes sha %x, sent %d bytes sha %x", gotN, got, n, s.sum)
	}
	waitFor(t, "backend to count its bytes", func() bool { return e.backend.bytes.Load() == n })
}

// TestConcurrentStreams runs 1,000 streams at once, each checking its own sha256.
func TestConcurrentStreams(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const streams = 1000
	per := size(4<<10, 64<<10)
	var wg, opened sync.WaitGroup
	opened.Add(streams)
	errs := make(chan error, streams)
	for i := range streams {
		wg.Go(func() {
			st, err := e.client.Dial(ctx, e.target())
			opened.Done()
			if err != nil {
				errs <- fmt.Errorf("stream %d: dial: %w", i, err)
				return
			}
			defer st.Close()
			opened.Wait() // all 1,000 are open at once before any byte moves
			sent := make(chan [32]byte, 1)
			go func() {
				sum, err := sendRandom(st, per, uint64(i)+100)
				if err != nil {
					errs <- fmt.Errorf("stream %d: write: %w", i, err)
				}
				st.CloseWrite()
				sent <- sum
			}()
			got, n, err := hashAll(st)
			want := <-sent
			if err != nil || n != per || got != want {
				errs <- fmt.Errorf("stream %d: got %d bytes sha %x err %v, want %d bytes sha %x", i, n, got[:4], err, per, want[:4])
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := e.backend.accepted.Load(); got != streams {
		t.Errorf("backend accepted %d connections, want %d", got, streams)
	}
	if c := e.client.pool.dials.Load(); c < streams/100 || c > streams/100+2 {
		t.Errorf("pool dialed %d HBONE connections for %d streams at 100 per connection", c, streams)
	}
}

// TestHalfCloseClientFirst: the client ends its side; the backend reads to EOF, then still answers.
func TestHalfCloseClientFirst(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.backend = newBackend(t, func(c *net.TCPConn, b *backend) {
		req, err := io.ReadAll(c) // to EOF: the client's CloseWrite must arrive as FIN
		if err != nil {
			return
		}
		time.Sleep(50 * time.Millisecond) // the reply comes well after the half-close
		fmt.Fprintf(c, "got %d bytes: %s", len(req), req)
		c.CloseWrite()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := e.dial(ctx)
	defer st.Close()
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); err == nil {
		t.Error("write after CloseWrite succeeded")
	}
	reply, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if string(reply) != "got 5 bytes: hello" {
		t.Fatalf("reply %q", reply)
	}
}

// TestHalfCloseServerFirst: the backend ends its side first; the client keeps sending after
// reading EOF, and the backend still receives it.
func TestHalfCloseServerFirst(t *testing.T) {
	e := newEnv(t, envOpts{})
	got := make(chan string, 1)
	e.backend = newBackend(t, func(c *net.TCPConn, b *backend) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		rest, _ := io.ReadAll(c)
		got <- string(rest)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := e.dial(ctx)
	defer st.Close()
	banner, err := io.ReadAll(st)
	if err != nil || string(banner) != "banner" {
		t.Fatalf("banner %q, %v", banner, err)
	}
	if _, err := st.Write([]byte("after-eof")); err != nil {
		t.Fatalf("write after the peer's half-close: %v", err)
	}
	st.CloseWrite()
	select {
	case s := <-got:
		if s != "after-eof" {
			t.Fatalf("backend read %q", s)
		}
	case <-ctx.Done():
		t.Fatal("backend never saw the client's bytes and FIN")
	}
}

// TestResetPropagates: a backend that resets its TCP connection resets the stream.
func TestResetPropagates(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.backend = newBackend(t, func(c *net.TCPConn, b *backend) {
		buf := make([]byte, 4)
		io.ReadFull(c, buf)
		c.SetLinger(0) // close with RST
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := e.dial(ctx)
	defer st.Close()
	st.Write([]byte("ping"))
	_, err := io.ReadAll(st)
	var re *ResetError
	if !errors.As(err, &re) || !re.Remote {
		t.Fatalf("read after backend RST = %v, want a remote stream reset", err)
	}
}

// TestBackpressureBlocksNotDrops: a backend that stops reading makes the client's writes block
// (flow control), and every byte arrives once it reads again (ztunnel#1945).
func TestBackpressureBlocksNotDrops(t *testing.T) {
	e := newEnv(t, envOpts{})
	release := make(chan struct{})
	total := make(chan int64, 1)
	e.backend = newBackend(t, func(c *net.TCPConn, b *backend) {
		<-release
		n, _ := io.Copy(io.Discard, c)
		total <- n
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := e.dial(ctx)
	defer st.Close()
	n := int64(64 << 20) // far more than windows plus socket buffers hold
	written := make(chan error, 1)
	go func() {
		_, err := sendRandom(st, n, 7)
		st.CloseWrite()
		written <- err
	}()
	select {
	case err := <-written:
		t.Fatalf("64 MiB written to a backend that reads nothing (err %v): no backpressure", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-written; err != nil {
		t.Fatalf("write: %v", err)
	}
	if got := <-total; got != n {
		t.Fatalf("backend got %d bytes, want %d", got, n)
	}
}

// TestStreamReadDeadline covers the net.Conn deadline contract.
func TestStreamReadDeadline(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := e.dial(ctx)
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := st.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past deadline = %v, want a timeout", err)
	}
	st.SetReadDeadline(time.Time{})
	st.Write([]byte("ok"))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(st, buf); err != nil || !bytes.Equal(buf, []byte("ok")) {
		t.Fatalf("read after clearing the deadline: %q %v", buf, err)
	}
}

// TestHalfCloseThenOtherStream: one stream's END_STREAM leaves no trace on the next frames of
// the shared connection — another stream's DATA after it must not end that stream too (the
// frame header buffer is reused from frame to frame).
func TestHalfCloseThenOtherStream(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first := e.dial(ctx)
	defer first.Close()
	if _, err := first.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	if err := first.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if echo, err := io.ReadAll(first); err != nil || string(echo) != "bye" {
		t.Fatalf("first stream's echo %q, %v", echo, err)
	}
	second := e.dial(ctx)
	defer second.Close()
	if n := e.client.pool.dials.Load(); n != 1 {
		t.Fatalf("%d HBONE connections: the two streams must share one for this test", n)
	}
	buf := make([]byte, 5)
	for i := range 3 {
		msg := fmt.Sprintf("msg-%d", i)
		if _, err := second.Write([]byte(msg)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, err := io.ReadFull(second, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %d: %q, %v (the stream was ended by the other's END_STREAM?)", i, buf, err)
		}
	}
}
