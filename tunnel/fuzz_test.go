package tunnel

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzParseConnect feeds arbitrary header lists to the CONNECT parser: it must never panic,
// and whatever it accepts must be a CONNECT to a literal, non-zero ip:port.
func FuzzParseConnect(f *testing.F) {
	f.Add("CONNECT", "10.0.0.1:80", "", "", false)
	f.Add("CONNECT", "[fd00::1]:8080", "baggage", "k=v", false)
	f.Add("GET", "10.0.0.1:80", ":path", "/", false)
	f.Add("CONNECT", "example.com:443", "", "", false)
	f.Add("CONNECT", "10.0.0.1:0", "", "", false)
	f.Add("CONNECT", "[fe80::1%eth0]:80", "", "", false)
	f.Add("CONNECT", "::ffff:10.0.0.1:80", ":protocol", "websocket", true)
	f.Fuzz(func(t *testing.T, method, authority, name, value string, truncated bool) {
		fields := []hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":authority", Value: authority}}
		if name != "" {
			fields = append(fields, hpack.HeaderField{Name: name, Value: value})
		}
		req, reason, err := parseConnect(fields, truncated)
		if err != nil {
			if reason == ReasonNone || reason.Status() == 0 {
				t.Fatalf("refusal %v without an HTTP reason (%v)", err, reason)
			}
			return
		}
		if method != "CONNECT" || truncated || strings.HasPrefix(name, ":") {
			t.Fatalf("accepted method %q truncated %v extra %q", method, truncated, name)
		}
		if !req.Authority.IsValid() || req.Authority.Port() == 0 || req.Authority.Addr().Zone() != "" {
			t.Fatalf("accepted authority %q as %v", authority, req.Authority)
		}
	})
}

// frames builds a byte stream of HTTP/2 frames for seeds.
func frames(build func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer)) []byte {
	var out, hb bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	enc := hpack.NewEncoder(&hb)
	build(fr, enc, &hb)
	return out.Bytes()
}

// FuzzServerFrames feeds arbitrary bytes after the client preface to a server connection: it
// must not panic, must not hang, and must release every goroutine when the input ends.
func FuzzServerFrames(f *testing.F) {
	connect := func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, id uint32, end bool) {
		hb.Reset()
		enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
		enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.1.2.3:80"})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: end})
	}
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		fr.WriteSettings()
		connect(fr, enc, hb, 1, false)
		fr.WriteData(1, false, []byte("hello"))
		fr.WriteData(1, true, nil)
	}))
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
		connect(fr, enc, hb, 1, false)
		connect(fr, enc, hb, 3, true)
		fr.WriteWindowUpdate(1, 1<<31-1)
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
		fr.WritePing(false, [8]byte{1})
		fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	}))
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		fr.WriteSettings()
		fr.WriteData(1, false, []byte("data on an idle stream"))
		connect(fr, enc, hb, 2, false) // even stream ID from a client
	}))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		runServerOn(t, data)
	})
}

// runServerOn runs one server connection over an in-memory pipe fed with data.
func runServerOn(t *testing.T, data []byte) {
	srv, err := NewServer(ServerConfig{
		Source: staticSource{},
		DialUpstream: func(ctx context.Context, req *Request) (net.Conn, error) {
			a, b := net.Pipe()
			go func() { io.Copy(b, b); b.Close() }()
			return a, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	cli, sc := net.Pipe()
	c := newH2Conn(sc, false, slog.New(slog.DiscardHandler))
	c.maxPeerStreams = 100
	c.ctx, c.cancel = context.WithCancel(context.Background())
	var streams sync.WaitGroup
	c.onStream = func(st *Stream) {
		streams.Add(1)
		go func() {
			defer streams.Done()
			defer c.handlerDone()
			srv.serveStream(st, clientID, nil, serverID, srv.log)
		}()
	}
	drained := make(chan struct{})
	go func() { io.Copy(io.Discard, cli); close(drained) }()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if readPreface(sc) != nil || c.handshake(100) != nil {
			c.closeWith(errBadPreface)
			return
		}
		go c.ctrlLoop()
		c.readLoop()
	}()
	cli.Write([]byte(http2.ClientPreface))
	cli.Write(data)
	cli.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server connection did not end after its input did")
	}
	c.closeWith(io.EOF)
	streams.Wait()
	<-drained
}
