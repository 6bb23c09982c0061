package e2e

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/test/lab"
)

// flow is a pair of pods a connection goes between, and the path it takes.
type flow struct{ from, to, path string }

// upgradeFlows are the pairs the upgrade test drives through node1, the node upgraded: within
// it on the kernel path, out of it and into it over HBONE.
var upgradeFlows = []flow{
	{"web", "api1", "kernel"},
	{"nosy", "web", "kernel"},
	{"web", "api2", "hbone"},
	{"api2", "web", "hbone"},
}

// TestUpgradeDropsNothing is issue 16 §3's acceptance: node1's agent is upgraded (a second
// agent started beside it takes its sockets over the hand-off socket, then the old one gets
// SIGTERM and drains) under a loop of 50 new connections a second across and within the node,
// with 100 long-lived connections open. No connect may fail; every long-lived kernel-path
// connection survives (no agent is in its path); connections shorter than the drain window
// complete; the HBONE ones still open at the old agent's drain deadline are cut, and counted.
func TestUpgradeDropsNothing(t *testing.T) {
	const drain = 3 * time.Second
	c := newCluster(t, "--same-node", "kernel", "--drain-timeout", drain.String(), handoffInLab)
	dial := func(f flow) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		conn, err := c.lab.Pod(f.from).Dial(ctx, net.JoinHostPort(c.lab.Pod(f.to).IP.String(), lab.EchoPort))
		if err != nil {
			return nil, err
		}
		if err := roundTrip(conn); err != nil {
			conn.Close()
			return nil, fmt.Errorf("first round trip: %w", err)
		}
		return conn, nil
	}
	// The first connection of a same-node pair is spliced; the ones after it take the kernel
	// path, which the long-lived ones below must be on.
	for _, f := range upgradeFlows {
		conn, err := dial(f)
		if err != nil {
			t.Fatalf("%s -> %s: %v", f.from, f.to, err)
		}
		conn.Close()
	}
	type held struct {
		f    flow
		conn net.Conn
	}
	var long []held
	for i := range 100 {
		f := upgradeFlows[i%len(upgradeFlows)]
		conn, err := dial(f)
		if err != nil {
			t.Fatalf("long-lived %s -> %s #%d: %v", f.from, f.to, i, err)
		}
		t.Cleanup(func() { conn.Close() })
		long = append(long, held{f, conn})
	}

	// The loop: one new connection every 80 ms on each of the four flows (50 a second), each
	// a round trip, bounded by count and time.
	var loopOK, loopFailed atomic.Int64
	var firstFail atomic.Value
	stop := make(chan struct{})
	var loop sync.WaitGroup
	for _, f := range upgradeFlows {
		loop.Go(func() {
			tick := time.NewTicker(80 * time.Millisecond)
			defer tick.Stop()
			for range 500 {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				conn, err := dial(f)
				if err != nil {
					loopFailed.Add(1)
					firstFail.CompareAndSwap(nil, fmt.Sprintf("%s -> %s: %v", f.from, f.to, err))
					continue
				}
				conn.Close()
				loopOK.Add(1)
			}
		})
	}
	// Short connections: opened just before the hand-over, each living 1 s (< the drain),
	// round-tripping every 100 ms; every one must complete.
	var short sync.WaitGroup
	var shortFailed atomic.Int64
	var firstShort atomic.Value
	startShort := func() {
		for i := range 20 {
			f := upgradeFlows[2+i%2] // the HBONE flows: the ones the old agent relays
			short.Go(func() {
				conn, err := dial(f)
				if err != nil {
					shortFailed.Add(1)
					firstShort.CompareAndSwap(nil, err.Error())
					return
				}
				defer conn.Close()
				for range 10 {
					time.Sleep(100 * time.Millisecond)
					if err := roundTrip(conn); err != nil {
						shortFailed.Add(1)
						firstShort.CompareAndSwap(nil, fmt.Sprintf("%s -> %s: %v (at %v)", f.from, f.to, err, time.Now().Format("15:04:05.000")))
						return
					}
				}
			})
		}
	}
	time.Sleep(500 * time.Millisecond)
	startShort()
	time.Sleep(200 * time.Millisecond)

	// The upgrade: the new agent starts beside the old one and takes over.
	old, oldLog := c.agents["node1"], c.logs["node1"]
	upgraded := time.Now()
	c.startAgentLogging("node1", filepath.Join(c.lab.Dir, "node1-agent-new.log"))
	testenv.WaitFor(t, "the new agent to take over", 10*time.Second, func() bool {
		return c.logCount("node1", "took over from the previous agent") == 1
	})
	tookOver := time.Since(upgraded)
	startShort() // and more short connections, now on the new agent's side of the drain
	// As the DaemonSet controller does once the new pod is ready: the old one gets SIGTERM.
	if err := old.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.Done():
	case <-time.After(drain + 5*time.Second):
		t.Fatalf("the old agent did not exit within %v of SIGTERM", drain+5*time.Second)
	}
	oldExited := time.Since(upgraded)
	time.Sleep(time.Second)
	close(stop)
	loop.Wait()
	short.Wait()

	oldLines := logLinesOf(t, oldLog)
	if !anyLine(oldLines, map[string]string{"msg": "handed over to the new agent: draining"}) {
		t.Error("the old agent never said it handed over")
	}
	cutReported := "none (drained)"
	for _, m := range oldLines {
		if m["msg"] == "drain deadline: cutting the connections still open" {
			cutReported = fmt.Sprint(m["cut"])
		}
	}
	survived := map[string]int{}
	cut := map[string]int{}
	for _, h := range long {
		if err := roundTrip(h.conn); err != nil {
			cut[h.f.path]++
			continue
		}
		survived[h.f.path]++
	}
	t.Logf("upgrade: the new agent took over %v after it started; the old one exited %v after; "+
		"loop: %d connections, %d failed; short: %d failed; long-lived: survived %v, cut %v (the old agent reported %s cut at its %v deadline)",
		tookOver.Round(time.Millisecond), oldExited.Round(time.Millisecond), loopOK.Load(), loopFailed.Load(),
		shortFailed.Load(), survived, cut, cutReported, drain)
	if n := loopFailed.Load(); n > 0 {
		t.Errorf("%d of %d new connections failed during the upgrade; first: %v", n, n+loopOK.Load(), firstFail.Load())
	}
	if loopOK.Load() < 100 {
		t.Errorf("only %d loop connections: the loop did not run through the upgrade", loopOK.Load())
	}
	if n := shortFailed.Load(); n > 0 {
		t.Errorf("%d of 40 connections shorter than the drain failed; first: %v", n, firstShort.Load())
	}
	if cut["kernel"] > 0 {
		t.Errorf("%d long-lived kernel-path connections did not survive the upgrade (no agent is in their path)", cut["kernel"])
	}
	if survived["kernel"] != 50 {
		t.Errorf("%d of 50 long-lived kernel-path connections survived", survived["kernel"])
	}
	if t.Failed() {
		for _, m := range oldLines {
			if m["msg"] != "access" || (m["result"] != "ok" && m["path"] != "kernel") {
				t.Logf("old agent: %v", m)
			}
		}
		for _, m := range c.logLines("node1") {
			if m["msg"] != "access" || (m["result"] != "ok" && m["path"] != "kernel") {
				t.Logf("new agent: %v", m)
			}
		}
	}
	// The new agent serves: the loop's late connections went through it, and it logs them.
	if !anyLine(c.accessLines("node1"), map[string]string{"result": "ok"}) {
		t.Error("the new agent logged no connection")
	}
}
