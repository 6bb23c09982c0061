package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
)

// TestHostileEndpoints: the agent's readiness (:15021) and metrics (:15020) ports listen on
// every address of the node, as the DaemonSet's do (hostNetwork), so anything that reaches the
// node can connect to them. A host on another node opens over a thousand connections to both and
// holds them (half say nothing, half trickle a request one byte a second, reopening whatever is
// cut two seconds later) for a few seconds. The agent must bound what they cost it (descriptors, memory), cut the
// excess and count it, while the node's own readiness probe and scrape, a scrape from a pod,
// and the pods' traffic carry on.
func TestHostileEndpoints(t *testing.T) {
	c := newCluster(t, "--health-addr", "0.0.0.0:15021", "--metrics-addr", "0.0.0.0:15020")
	node1, node2 := c.lab.Node("node1"), c.lab.Node("node2")
	conns, dur := 1200, 8*time.Second
	if soak() {
		conns, dur = 10000, 60*time.Second
	}
	w := c.watch(t, []string{"node1"}, [2]string{"web", "other"})
	fdBase := w.base["node1"].fds

	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var opened, cut atomic.Int64
	var wg sync.WaitGroup
	for i := range conns {
		port := []string{"15020", "15021"}[i%2]
		slow := i%4 >= 2
		wg.Go(func() {
			addr := net.JoinHostPort(node1.IP.String(), port)
			for ctx.Err() == nil {
				dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
				conn, err := node2.Dial(dctx, addr)
				dcancel()
				if err != nil {
					select {
					case <-ctx.Done():
					case <-time.After(50 * time.Millisecond):
					}
					continue
				}
				opened.Add(1)
				hold(ctx, conn, slow)
				if ctx.Err() == nil {
					cut.Add(1)
					// Back again in two seconds: holding connections is the attack here,
					// not a connection rate (which would only measure this machine's two
					// CPUs, shared by attacker, agent and the race detector).
					select {
					case <-ctx.Done():
					case <-time.After(2 * time.Second):
					}
				}
			}
		})
	}

	// What must keep working meanwhile: the node's own probe and scrape (the kubelet and a
	// node-local collector), and Prometheus scraping from a pod.
	var probes, failed int
	var fails []string
	get := func(dial func(ctx context.Context, addr string) (net.Conn, error), url string) error {
		cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
			DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
			DisableKeepAlives: true,
		}}
		resp, err := cl.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		return nil
	}
	nodeIP := node1.IP.String()
	checks := []struct {
		what string
		dial func(ctx context.Context, addr string) (net.Conn, error)
		url  string
	}{
		{"probe from the node", node1.Dial, "http://127.0.0.1:15021/healthz/ready"},
		{"probe of the node's address", node1.Dial, "http://" + nodeIP + ":15021/healthz/ready"},
		{"scrape from the node", node1.Dial, "http://127.0.0.1:15020/metrics"},
		{"scrape from a pod", c.lab.Pod("other").Dial, "http://" + nodeIP + ":15020/metrics"},
	}
	time.Sleep(time.Second) // let the flood build up
	for ctx.Err() == nil {
		for _, ch := range checks {
			probes++
			if err := get(ch.dial, ch.url); err != nil {
				failed++
				fails = append(fails, fmt.Sprintf("%s: %v", ch.what, err))
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	wg.Wait()
	w.stop()
	peak := w.peak["node1"]
	t.Logf("%d attackers against :15020 and :15021 for %v: %d connections opened, %d cut by the agent; agent fds %d -> peak %d; %d checks, %d failed",
		conns, dur, opened.Load(), cut.Load(), fdBase, peak.fds, probes, failed)
	w.check(t, "endpoint flood")
	if failed > 0 {
		t.Errorf("the node's probes and scrapes failed during the flood (%d of %d): %v", failed, probes, fails[:min(len(fails), 5)])
	}
	if d := peak.fds - fdBase; d > 400 {
		t.Errorf("agent held %d more descriptors during the flood (budget 400): the endpoints' connections are not bounded", d)
	}
	if cut.Load() == 0 {
		t.Errorf("no attacking connection was cut")
	}
	if refused, _ := sum(scrape(t, node1), "amesh_endpoint_refusals_total", nil); refused == 0 {
		t.Errorf("amesh_endpoint_refusals_total counts nothing after the flood")
	}
	testenv.WaitFor(t, "node1's agent back near its baseline of descriptors", 15*time.Second, func() bool {
		return statOf(t, c.agentPid("node1")).fds <= fdBase+8
	})
}

// hold keeps conn open until ctx is done or the agent closes it: silent, or trickling a
// request one byte a second.
func hold(ctx context.Context, conn net.Conn, slow bool) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if !slow {
		io.Copy(io.Discard, conn)
		return
	}
	req := "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 4096)
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, conn); close(done) }()
	for i := 0; i < len(req); i++ {
		if _, err := conn.Write([]byte{req[i]}); err != nil {
			return
		}
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
