package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/identity"
)

// BenchmarkHandshake is one HBONE TLS handshake, both sides in this process over a pipe, with
// the SVIDs issued beforehand: the CPU a new HBONE connection costs the two agents together.
func BenchmarkHandshake(b *testing.B) {
	ca, err := identity.NewCA(testTD, identity.CAConfig{})
	if err != nil {
		b.Fatal(err)
	}
	src := identity.NewCache(ca, nil)
	defer src.Close()
	ctx := context.Background()
	cid, sid := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/c"), spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/s")
	for _, id := range []spiffeid.ID{cid, sid} {
		if _, err := src.SVID(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name   string
		curves []tls.CurveID
	}{{"default", nil}, {"x25519", []tls.CurveID{tls.X25519}}} {
		b.Run(tc.name, func(b *testing.B) {
			scfg := serverTLS(src, sid)
			var presented *x509.Certificate
			ccfg := clientTLS(src, cid, sid, &presented)
			ccfg.CurvePreferences = tc.curves
			b.ReportAllocs()
			for range b.N {
				a, z := net.Pipe()
				errc := make(chan error, 1)
				go func() {
					errc <- tls.Server(z, scfg).HandshakeContext(ctx)
				}()
				c := tls.Client(a, ccfg)
				if err := c.HandshakeContext(ctx); err != nil {
					b.Fatal(err)
				}
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
				// The pipe, not the TLS connections: their close_notify would block both ends
				// writing to an unbuffered pipe.
				a.Close()
				z.Close()
			}
		})
	}
}
