package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// The benchmarks compare, in one run, paths to the same TCP backend on loopback:
//
//	direct:      client TCP → backend
//	tls:         client TLS 1.3 (mTLS, SVIDs) → Go TLS server relaying → backend
//	hbone:       client HBONE stream → HBONE server relaying → backend
//	hbone-relay: client TCP → local relay into HBONE (the agent's outbound hop) → server → backend
//	ghostunnel:  client TCP → ghostunnel client → mTLS → ghostunnel server → backend
//
// tls/hbone is the cost of HTTP/2 framing, hbone/direct the cost of the mesh hop, and
// hbone-relay/ghostunnel compares amesh with the L4 mTLS peer users would otherwise run (same
// hops: two proxies, one TLS session). ghostunnel runs when `make bench` has built it.
// Compare ratios within one run, not absolute numbers, on a noisy machine.

// sinkBackend reads an 8-byte length, then that many bytes, and answers with the count it got.
// (No half-close: ghostunnel turns a client's FIN into a full close.)
func sinkBackend(tb testing.TB) *backend {
	return newBackend(tb, func(c *net.TCPConn, b *backend) {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		want := int64(binary.BigEndian.Uint64(hdr[:]))
		buf := make([]byte, 256<<10)
		var n int64
		for n < want {
			k, err := c.Read(buf[:min(int64(len(buf)), want-n)])
			n += int64(k)
			if err != nil {
				break
			}
		}
		binary.BigEndian.PutUint64(hdr[:], uint64(n))
		c.Write(hdr[:])
	})
}

// benchPaths returns a dialer per path to the backend at addr.
func benchPaths(b *testing.B, be *backend) map[string]func() net.Conn {
	e := newBenchEnv(b, be)
	dialTCP := func(addr string) func() net.Conn {
		return func() net.Conn {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			return c
		}
	}
	paths := map[string]func() net.Conn{
		"hbone-relay": dialTCP(relayListener(b, e.env)),
		"direct": func() net.Conn {
			c, err := net.Dial("tcp", be.addr.String())
			if err != nil {
				b.Fatal(err)
			}
			return c
		},
		"tls": func() net.Conn {
			var presented *x509.Certificate
			c, err := tls.Dial("tcp", e.tlsAddr, clientTLS(e.src, clientID, serverID, &presented))
			if err != nil {
				b.Fatal(err)
			}
			return c
		},
		"hbone": func() net.Conn {
			st, err := e.client.Dial(context.Background(), e.target())
			if err != nil {
				b.Fatal(err)
			}
			return st
		},
	}
	if addr := ghostunnelPair(b, e.env, be.addr.String()); addr != "" {
		paths["ghostunnel"] = dialTCP(addr)
	} else {
		b.Logf("ghostunnel not built at %s: its scenario is left out (make bench builds it)", ghostunnelBin())
	}
	return paths
}

type benchEnv struct {
	*env
	tlsAddr string
}

// newBenchEnv builds the HBONE env for backend be plus a plain TLS 1.3 relay to it that presents
// and verifies the same SVIDs.
func newBenchEnv(b *testing.B, be *backend) *benchEnv {
	e := newEnv(b, envOpts{})
	e.backend = be
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	cfg := serverTLS(e.src, serverID)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				tc := tls.Server(c, cfg)
				if tc.Handshake() != nil {
					c.Close()
					return
				}
				up, err := net.Dial("tcp", be.addr.String())
				if err != nil {
					tc.Close()
					return
				}
				Relay(tc, up)
			})
		}
	})
	b.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return &benchEnv{env: e, tlsAddr: ln.Addr().String()}
}

var benchOrder = []string{"direct", "tls", "hbone", "hbone-relay", "ghostunnel"}

func BenchmarkThroughput(b *testing.B) {
	be := sinkBackend(b)
	paths := benchPaths(b, be)
	chunk := make([]byte, 256<<10)
	for _, name := range benchOrder {
		if paths[name] == nil {
			continue
		}
		b.Run(name, func(b *testing.B) {
			c := paths[name]()
			defer c.Close()
			b.SetBytes(int64(len(chunk)))
			var ack [8]byte
			binary.BigEndian.PutUint64(ack[:], uint64(b.N*len(chunk)))
			if _, err := c.Write(ack[:]); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := io.ReadFull(c, ack[:]); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if got := binary.BigEndian.Uint64(ack[:]); got != uint64(b.N*len(chunk)) {
				b.Fatalf("backend got %d bytes, sent %d", got, b.N*len(chunk))
			}
		})
	}
}

func BenchmarkRR(b *testing.B) {
	be := newEchoBackend(b)
	paths := benchPaths(b, be)
	msg := make([]byte, 1024)
	for _, name := range benchOrder {
		if paths[name] == nil {
			continue
		}
		b.Run(name, func(b *testing.B) {
			c := paths[name]()
			defer c.Close()
			buf := make([]byte, len(msg))
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
		})
	}
}
