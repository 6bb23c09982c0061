// Command amesh-demo shows amesh's HBONE tunnel on one machine's loopback: a built-in CA issues
// SPIFFE identities, a client workload reaches a server workload over HTTP/2 CONNECT in mutual
// TLS 1.3, a workload without an ALLOW is refused, a plaintext client is refused, and a small
// latency table compares direct TCP with the tunnel. (The netns lab with eBPF redirection
// replaces this loopback set-up once the node agent lands.)
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/tunnel"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "amesh-demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	web, _ := identity.WorkloadID(td, "shop", "web")
	api, _ := identity.WorkloadID(td, "shop", "api")
	intruder, _ := identity.WorkloadID(td, "shop", "intruder")

	ca, err := identity.NewCA(td, identity.CAConfig{})
	if err != nil {
		return err
	}
	src := identity.NewCache(ca, nil)
	defer src.Close()
	fmt.Printf("built-in CA for trust domain %s (root serial %x)\n\n", td, ca.Root().SerialNumber.Bytes()[:6])

	// The "api" application: plain HTTP on loopback, unaware of the mesh.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from api (client address as the app sees it: %s)\n", r.RemoteAddr)
	})}
	go app.Serve(appLn)
	defer app.Close()
	appAddr := netip.MustParseAddrPort(appLn.Addr().String())

	// The HBONE server in front of it, presenting api's SVID, allowing only web.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := tunnel.NewServer(tunnel.ServerConfig{
		Source: src,
		Logger: log,
		Authorize: func(ctx context.Context, req *tunnel.Request) error {
			if req.Peer != web {
				return fmt.Errorf("no ALLOW policy for %s", req.Peer)
			}
			fmt.Printf("  server: %s -> %s allowed (client cert serial %x…)\n", req.Peer, req.Authority, req.PeerCert.SerialNumber.Bytes()[:6])
			return nil
		},
	})
	if err != nil {
		return err
	}
	hboneLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go srv.Serve(ctx, hboneLn, api)
	defer srv.Close()
	hboneAddr := netip.MustParseAddrPort(hboneLn.Addr().String())

	client, err := tunnel.NewClient(tunnel.ClientConfig{Source: src, Logger: log})
	if err != nil {
		return err
	}
	defer client.Close()
	httpVia := func(from spiffeid.ID) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return client.Dial(ctx, tunnel.Target{Source: from, Dest: api, Addr: hboneAddr, Authority: appAddr})
			},
		}}
	}

	fmt.Printf("1. %s -> %s over HBONE (HTTP/2 CONNECT, mTLS 1.3, %s)\n", web, api, hboneAddr)
	resp, err := httpVia(web).Get("http://" + appAddr.String() + "/")
	if err != nil {
		return fmt.Errorf("web -> api: %w", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("  client: HTTP %d, verified the server is %s\n  app:    %s\n", resp.StatusCode, api, strings.TrimSpace(string(body)))

	fmt.Printf("2. %s -> %s: no ALLOW policy names it\n", intruder, api)
	_, err = httpVia(intruder).Get("http://" + appAddr.String() + "/")
	fmt.Printf("  refused: reason %s (%v)\n", tunnel.ReasonOf(err), shorten(err))

	fmt.Printf("3. a plaintext client to the HBONE port %s\n", hboneAddr)
	c, err := net.DialTimeout("tcp", hboneAddr.String(), time.Second)
	if err != nil {
		return err
	}
	before := srv.Counters().Get(tunnel.ReasonHandshake)
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: api\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, rerr := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if rerr == nil || line != "" {
		return fmt.Errorf("plaintext client got an answer: %q", line)
	}
	for i := 0; i < 100 && srv.Counters().Get(tunnel.ReasonHandshake) == before; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Printf("  refused: closed without a byte of HTTP; server counters now %v\n", srv.Counters().Snapshot())

	fmt.Println("4. latency, 1 KiB request/response, 2,000 round trips each on one connection")
	direct, err := net.Dial("tcp", echoAddr(ctx))
	if err != nil {
		return err
	}
	defer direct.Close()
	dst := netip.MustParseAddrPort(direct.RemoteAddr().String())
	tun, err := client.Dial(ctx, tunnel.Target{Source: web, Dest: api, Addr: hboneAddr, Authority: dst})
	if err != nil {
		return err
	}
	defer tun.Close()
	fmt.Printf("  %-18s %10s %10s\n", "path", "p50", "p99")
	for _, p := range []struct {
		name string
		c    net.Conn
	}{{"direct TCP", direct}, {"amesh HBONE", tun}} {
		p50, p99, err := rr(p.c, 2000)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		fmt.Printf("  %-18s %10s %10s\n", p.name, p50.Round(time.Microsecond), p99.Round(time.Microsecond))
	}
	fmt.Println("\ndone: everything ran on loopback and has been torn down.")
	return nil
}

// echoAddr starts an echo server for the latency run and returns its address.
func echoAddr(ctx context.Context) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func rr(c net.Conn, n int) (p50, p99 time.Duration, err error) {
	msg := make([]byte, 1024)
	buf := make([]byte, 1024)
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, 0, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	return lat[n/2], lat[n*99/100], nil
}

func shorten(err error) string {
	if err == nil {
		return "no error"
	}
	var re *tunnel.RefusedError
	if errors.As(err, &re) {
		return fmt.Sprintf("HTTP %d from the server", re.Status)
	}
	return err.Error()
}
