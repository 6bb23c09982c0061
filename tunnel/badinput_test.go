package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/amesh-dev/amesh/identity"
)

// rawH2 speaks HTTP/2 by hand over an mTLS connection made with src's SVID for id, sends one
// request with fields, and returns the response :status (0 if the stream was reset first).
func rawH2(t *testing.T, addr string, src identity.Source, id spiffeid.ID, fields []hpack.HeaderField) int {
	t.Helper()
	var presented *x509.Certificate
	cfg := clientTLS(src, id, serverID, &presented)
	tc, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("raw h2: TLS: %v", err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := tc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		enc.WriteField(f)
	}
	// Split the block so oversized header lists arrive as HEADERS + CONTINUATION.
	b := block.Bytes()
	first := b[:min(len(b), 16000)]
	rest := b[len(first):]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndHeaders: len(rest) == 0}); err != nil {
		t.Fatal(err)
	}
	for len(rest) > 0 {
		chunk := rest[:min(len(rest), 16000)]
		rest = rest[len(chunk):]
		if err := fr.WriteContinuation(1, len(rest) == 0, chunk); err != nil {
			t.Fatal(err)
		}
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("raw h2: read: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			var status int
			fmt.Sscan(f.PseudoValue("status"), &status)
			return status
		case *http2.RSTStreamFrame:
			return 0
		case *http2.GoAwayFrame:
			t.Fatalf("raw h2: GOAWAY %v %s", f.ErrCode, f.DebugData())
		}
	}
}

// TestBadInput is the table of everything a server or client must refuse: each case is refused,
// counted under exactly its reason, and not one byte reaches the backend.
func TestBadInput(t *testing.T) {
	var deny, wrongSource atomic.Bool
	e := newEnv(t, envOpts{server: func(c *ServerConfig) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.Authorize = func(ctx context.Context, req *Request) error {
			if deny.Load() {
				return fmt.Errorf("no ALLOW policy matches %s", req.Peer)
			}
			if wrongSource.Load() {
				return Refuse(ReasonSourceIdentity, fmt.Errorf("%s is not the identity at %s", req.Peer, req.Client.Addr()))
			}
			return nil
		}
	}})
	now := time.Now()
	issue := func(ca *identity.CA, id spiffeid.ID, from, to time.Time) staticSource {
		s, err := ca.IssueValidity(context.Background(), id, from, to)
		if err != nil {
			t.Fatal(err)
		}
		return staticSource{svid: s, bundle: e.ca}
	}
	rogue, err := identity.NewCA(testTD, identity.CAConfig{}) // same trust domain, other root
	if err != nil {
		t.Fatal(err)
	}
	otherTD := spiffeid.RequireTrustDomainFromString("other.org")
	foreign, err := identity.NewCA(otherTD, identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	foreignID := spiffeid.RequireFromPath(otherTD, "/ns/shop/sa/client")
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	addr := e.ln.Addr().String()

	// clientDial dials through a Client whose source is src, expecting a refusal.
	clientDial := func(src identity.Source, mod func(*Target)) func(t *testing.T) error {
		return func(t *testing.T) error {
			c := e.newClient(src, nil)
			tg := e.target()
			if mod != nil {
				mod(&tg)
			}
			st, err := c.Dial(context.Background(), tg)
			if err == nil {
				st.Close()
			}
			return err
		}
	}
	rawTLS := func(cfg *tls.Config) func(t *testing.T) error {
		return func(t *testing.T) error {
			tc, err := tls.Dial("tcp", addr, cfg)
			if err != nil {
				return err
			}
			defer tc.Close()
			// TLS 1.3 client certificate errors surface on the client's first read.
			tc.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, err = tc.Read(make([]byte, 1))
			return err
		}
	}
	request := func(fields ...hpack.HeaderField) func(t *testing.T) error {
		return func(t *testing.T) error {
			if st := rawH2(t, addr, e.src, clientID, fields); st != 200 {
				return fmt.Errorf("status %d", st)
			}
			return nil
		}
	}
	connect := func(authority string) []hpack.HeaderField {
		return []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: authority}}
	}
	backendAuth := e.backend.addr.String()

	tests := []struct {
		name   string
		run    func(t *testing.T) error
		side   string // whose counter: "server" or "client"
		reason Reason
		status int // the error's status, when the refusal is an HTTP answer
	}{
		{"expired client cert", clientDial(issue(e.ca, clientID, now.Add(-2*time.Hour), now.Add(-time.Hour)), nil), "server", ReasonCertExpired, 0},
		{"not yet valid client cert", clientDial(issue(e.ca, clientID, now.Add(time.Hour), now.Add(2*time.Hour)), nil), "server", ReasonCertNotYetValid, 0},
		{"wrong trust domain", clientDial(issue(foreign, foreignID, now, now.Add(time.Hour)), func(tg *Target) { tg.Source = foreignID }), "server", ReasonWrongTrustDomain, 0},
		{"self-signed / other root", clientDial(issue(rogue, clientID, now, now.Add(time.Hour)), nil), "server", ReasonUntrusted, 0},
		{"no client cert", rawTLS(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}), "server", ReasonNoClientCert, 0},
		{"TLS 1.2 client", rawTLS(&tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}), "server", ReasonTLSVersion, 0},
		{"ALPN http/1.1", rawTLS(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}}), "server", ReasonALPN, 0},
		{"no ALPN", rawTLS(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}), "server", ReasonALPN, 0},
		{"stalled handshake", func(t *testing.T) error {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			c.Write([]byte{0x16, 0x03, 0x01}) // the first bytes of a ClientHello, then nothing
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, err = c.Read(make([]byte, 1))
			return err
		}, "server", ReasonHandshakeTimeout, 0},
		{"plaintext HTTP/1.1 to the HBONE port", func(t *testing.T) error {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := c.Read(make([]byte, 64))
			if err == nil {
				return fmt.Errorf("got %d bytes back", n)
			}
			return err
		}, "server", ReasonHandshake, 0},
		{"GET instead of CONNECT", request(
			hpack.HeaderField{Name: ":method", Value: "GET"}, hpack.HeaderField{Name: ":scheme", Value: "https"},
			hpack.HeaderField{Name: ":path", Value: "/"}, hpack.HeaderField{Name: ":authority", Value: backendAuth},
		), "server", ReasonBadMethod, 400},
		{"authority is a name", request(connect("example.com:80")...), "server", ReasonBadAuthority, 400},
		{"authority without port", request(connect("127.0.0.1")...), "server", ReasonBadAuthority, 400},
		{"oversized headers", request(append(connect(backendAuth), hpack.HeaderField{Name: "x-big", Value: strings.Repeat("a", 20<<10)})...), "server", ReasonHeadersTooLarge, 431},
		{"denied by authorization", func(t *testing.T) error {
			deny.Store(true)
			defer deny.Store(false)
			return request(connect(backendAuth)...)(t)
		}, "server", ReasonDenied, 401},
		{"refused by authorization with a reason of its own", func(t *testing.T) error {
			wrongSource.Store(true)
			defer wrongSource.Store(false)
			return request(connect(backendAuth)...)(t)
		}, "server", ReasonSourceIdentity, 401},
		{"destination refused", request(connect(closedAddr)...), "server", ReasonUpstreamDial, 503},
		{"wrong server SPIFFE ID", clientDial(e.src, func(tg *Target) {
			tg.Dest = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/someone-else")
		}), "client", ReasonWrongServerID, 0},
		// Client-side cases last: the server also logs the aborted handshakes they cause.
		{"client sees 503 with its reason", clientDial(e.src, func(tg *Target) { tg.Authority = mustAddrPort(closedAddr) }), "client", ReasonUpstreamDial, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			counters := &e.srv.counters
			before := e.srv.counters.Snapshot()
			err := tt.run(t)
			if err == nil {
				t.Fatal("accepted; want refused")
			}
			if tt.status != 0 && !strings.Contains(err.Error(), fmt.Sprint(tt.status)) {
				t.Errorf("refusal %q does not carry status %d", err, tt.status)
			}
			switch tt.side {
			case "server":
				defer func() {
					if t.Failed() {
						t.Logf("server counted %v", delta(before, counters.Snapshot()))
					}
				}()
				waitFor(t, "server to count "+tt.reason.String(), func() bool {
					return counters.Get(tt.reason) > 0 && delta(before, counters.Snapshot())[tt.reason.String()] == 1
				})
				if d := delta(before, counters.Snapshot()); len(d) != 1 {
					t.Errorf("server counted %v, want only %s", d, tt.reason)
				}
			case "client":
				if got := ReasonOf(err); got != tt.reason {
					t.Errorf("client refusal reason %s (%v), want %s", got, err, tt.reason)
				}
			}
			if n := e.backend.accepted.Load(); n != 0 {
				t.Errorf("backend accepted %d connections: a refused request reached it", n)
			}
		})
	}
	// And the tunnel still works for a good client after all that.
	st := e.dial(context.Background())
	st.Close()
}

func delta(before, after map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
