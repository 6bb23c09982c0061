package tunnel

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// TestRelayCountsBothWays: a 1 MiB echo through client relay → HBONE → server relay counts
// exactly 1 MiB each way on both sides, whichever way the bytes reach the TCP socket (the
// stream's read loop writes straight into an idle relay's socket, and those bytes count too).
func TestRelayCountsBothWays(t *testing.T) {
	var mu sync.Mutex
	var served []StreamResult
	done := make(chan struct{}, 1)
	e := newEnv(t, envOpts{server: func(c *ServerConfig) {
		c.OnStream = func(_ *Request, res StreamResult) {
			mu.Lock()
			served = append(served, res)
			mu.Unlock()
			done <- struct{}{}
		}
	}})
	const size = 1 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type counts struct{ in, out int64 }
	relayed := make(chan counts, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		st := e.dial(context.Background())
		in, out, _ := Relay(c, st)
		relayed <- counts{in, out}
	}()
	app, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	app.SetDeadline(time.Now().Add(20 * time.Second))
	payload := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	go func() {
		app.Write(payload)
		app.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(app)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	c := <-relayed
	if c.in != size || c.out != size {
		t.Errorf("client relay counted %d out and %d back, want %d both ways", c.in, c.out, size)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the server never reported the stream")
	}
	mu.Lock()
	defer mu.Unlock()
	if r := served[0]; r.BytesIn != size || r.BytesOut != size {
		t.Errorf("server counted %d in and %d out, want %d both ways", r.BytesIn, r.BytesOut, size)
	}
}
