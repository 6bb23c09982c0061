package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/netns"
	"github.com/amesh-dev/amesh/test/lab"
	"golang.org/x/sys/unix"
)

// revokingPolicies turn web away from the api pods, and let only web into perm: after they are
// written, web's open connections to api1 (same node, splice) and api2 (HBONE) and plain's
// plaintext one to perm must end.
const revokingPolicies = `
  - name: api-allow-web
    namespace: shop
    selector: {app: api}
    action: ALLOW
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/nosy"]}}]
  - name: perm-allow-web
    namespace: shop
    selector: {app: perm}
    action: ALLOW
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
`

// TestRevokeOnPolicyChange: a policy change reaches connections already open (ztunnel#311): on
// each path the agent decides (HBONE inbound, splice, plaintext to a PERMISSIVE pod) an open
// connection the new policies deny is reset within a second, with an access line saying
// revoked and by which policy; a connection they still allow is untouched.
func TestRevokeOnPolicyChange(t *testing.T) {
	c := newCluster(t, "--same-node", "splice")
	open := func(from, to string) net.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := c.lab.Pod(from).Dial(ctx, net.JoinHostPort(c.lab.Pod(to).IP.String(), lab.EchoPort))
		if err != nil {
			t.Fatalf("%s -> %s: %v", from, to, err)
		}
		t.Cleanup(func() { conn.Close() })
		if err := roundTrip(conn); err != nil {
			t.Fatalf("%s -> %s before the change: %v", from, to, err)
		}
		return conn
	}
	conns := []struct {
		from, to, node, path string
		revoked              bool
		conn                 net.Conn
	}{
		{from: "web", to: "api2", node: "node2", path: "hbone", revoked: true},
		{from: "web", to: "api1", node: "node1", path: "splice", revoked: true},
		{from: "plain", to: "perm", node: "node2", path: "plaintext", revoked: true},
		{from: "web", to: "other", node: "node2", path: "hbone", revoked: false},
	}
	for i := range conns {
		conns[i].conn = open(conns[i].from, conns[i].to)
	}
	if err := c.lab.WriteState(c.state, services, revokingPolicies); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	for _, cc := range conns {
		name := fmt.Sprintf("%s -> %s (%s)", cc.from, cc.to, cc.path)
		if !cc.revoked {
			continue
		}
		// The reset reaches the client: a read fails (the echo has nothing to send).
		cc.conn.SetReadDeadline(changed.Add(3 * time.Second))
		_, err := cc.conn.Read(make([]byte, 1))
		took := time.Since(changed)
		if err == nil || errors.Is(err, io.EOF) || isTimeout(err) {
			t.Errorf("%s: read after the change: %v after %v, want a reset", name, err, took)
			continue
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: %v, want a reset (ECONNRESET)", name, err)
		}
		if took > time.Second+500*time.Millisecond {
			t.Errorf("%s: reset %v after the change, want within 1 s", name, took)
		}
		t.Logf("%s: reset %v after the change", name, took.Round(time.Millisecond))
		testenv.WaitFor(t, name+": its revoked access line", 5*time.Second, func() bool {
			for _, l := range c.accessLines(cc.node) {
				if l["result"] == "revoked" && l["path"] == cc.path && strings.Contains(fmt.Sprint(l["reason"]), "shop/") {
					return true
				}
			}
			return false
		})
	}
	// The allowed one still works, after every revocation was done.
	for _, cc := range conns {
		if !cc.revoked {
			if err := roundTrip(cc.conn); err != nil {
				t.Errorf("%s -> %s (still allowed): %v after the change", cc.from, cc.to, err)
			}
		}
	}
}

func roundTrip(conn net.Conn) error {
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	defer conn.SetDeadline(time.Time{})
	msg := []byte("ping")
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(conn, msg)
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// logCount counts node's agent log lines with msg.
func (c *cluster) logCount(node, msg string) int {
	n := 0
	for _, m := range c.logLines(node) {
		if m["msg"] == msg {
			n++
		}
	}
	return n
}

// countPath counts node's access lines of path from src_id to dst_id.
func (c *cluster) countPath(node, path, src, dst string) int {
	n := 0
	for _, m := range c.accessLines(node) {
		if m["path"] == path && m["src_id"] == src && m["dst_id"] == dst {
			n++
		}
	}
	return n
}

// TestKernelVerdictsSurviveUnrelatedChanges: a state change that touches no cached pair (a
// policy of a pod on another node) leaves the kernel path's cached verdicts alone, where every
// change used to flush them all and send the node's same-node traffic back through the agent;
// a change that denies a cached pair withdraws exactly that pair's verdict.
func TestKernelVerdictsSurviveUnrelatedChanges(t *testing.T) {
	c := newCluster(t, "--same-node", "kernel")
	const web, api = "spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/api"
	curl := func(from, to string) error {
		out, err := c.curl(from, c.url(to), "--max-time", "2")
		if err == nil && !strings.Contains(out, "hello from "+to) {
			err = fmt.Errorf("answer %q", out)
		}
		return err
	}
	// Two cached pairs on node1: web -> api1 and web -> nosy (no policy selects nosy).
	for _, to := range []string{"api1", "nosy"} {
		if err := curl("web", to); err != nil {
			t.Fatalf("web -> %s: %v", to, err)
		}
	}
	// Their access lines come when the relays end, just after curl's.
	testenv.WaitFor(t, "the two spliced connections' access lines", 3*time.Second, func() bool {
		return c.countPath("node1", "splice", web, api) > 0 && c.countPath("node1", "splice", web, "spiffe://cluster.local/ns/shop/sa/nosy") > 0
	})
	spliced := c.countPath("node1", "splice", web, api)
	changes := 5
	if soak() {
		changes = 100
	}
	for i := range changes {
		// Unrelated: a policy of "other", on node2.
		unrelated := policies + fmt.Sprintf(`
  - name: other-%d
    namespace: shop
    selector: {app: other}
    action: ALLOW
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
`, i)
		applied := c.logCount("node1", "state file applied")
		if err := c.lab.WriteState(c.state, services, unrelated); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, "node1 to apply the change", 5*time.Second, func() bool {
			return c.logCount("node1", "state file applied") > applied
		})
		if err := curl("web", "api1"); err != nil {
			t.Fatalf("web -> api1 after unrelated change %d: %v", i, err)
		}
	}
	if got := c.countPath("node1", "splice", web, api); got != spliced {
		t.Errorf("web -> api1 went through the agent %d more times over %d unrelated changes: its verdict was flushed", got-spliced, changes)
	}

	// Denying web -> api1 withdraws that verdict, and only it.
	if err := c.lab.WriteState(c.state, services, revokingPolicies); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "web -> api1 refused after the denying change", 5*time.Second, func() bool {
		return curl("web", "api1") != nil
	})
	nosySpliced := c.countPath("node1", "splice", web, "spiffe://cluster.local/ns/shop/sa/nosy")
	if err := curl("web", "nosy"); err != nil {
		t.Fatalf("web -> nosy after the change: %v", err)
	}
	testenv.WaitFor(t, "web -> nosy's kernel-path access line", 3*time.Second, func() bool {
		return c.countPath("node1", "kernel", web, "spiffe://cluster.local/ns/shop/sa/nosy") > 0
	})
	if got := c.countPath("node1", "splice", web, "spiffe://cluster.local/ns/shop/sa/nosy"); got != nosySpliced {
		t.Errorf("web -> nosy went through the agent after a change that denied only web -> api1: its verdict was withdrawn too")
	}
}

// TestKernelVerdictRace: a policy change that lands while the first connection of a pair is
// still being dialed (its decision made on the old state) must not leave that decision cached
// for the kernel path. The app's accept queue is held full so that the agent's dial to it waits
// for a SYN retransmit; the change lands meanwhile; the queue is then freed and the dial
// completes. The pair's next connection must be decided on the new state (refused), not go
// pod to pod on the stale verdict.
func TestKernelVerdictRace(t *testing.T) {
	c := newCluster(t, "--same-node", "kernel")
	api1 := c.lab.Pod("api1")
	addr := netip.AddrPortFrom(api1.IP, 9005)
	// A listener with a backlog of 0: one connection waiting in its queue fills it.
	var fd int
	err := netns.Do(api1.Netns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
			return err
		}
		return unix.Listen(fd, 0)
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(os.NewFile(uintptr(fd), "slow-app"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The pod's own connection to itself (never captured) fills the queue.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	filler, err := netns.DialContext(ctx, api1.Netns, "tcp", addr.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()

	// web's first connection: decided (allowed) now, its dial stuck on the full queue.
	first := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		conn, err := c.lab.Pod("web").Dial(ctx, addr.String())
		if err == nil {
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = conn.Read(make([]byte, 1)) // until the agent's dial completes or gives up
			conn.Close()
		}
		first <- err
	}()
	testenv.WaitFor(t, "the agent's dial to the app to be under way", 5*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		out, _ := c.lab.Command(ctx, api1.Netns, "ss", "-Htn", "state", "syn-sent", "( dport = :9005 )").Output()
		return strings.TrimSpace(string(out)) != ""
	})
	// The change lands during the dial: web may no longer reach the api pods.
	applied := c.logCount("node1", "state file applied")
	if err := c.lab.WriteState(c.state, services, revokingPolicies); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "node1 to apply the change", 5*time.Second, func() bool {
		return c.logCount("node1", "state file applied") > applied
	})
	// Free the queue and serve from now on: the agent's retransmitted SYN gets through.
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Write([]byte("x"))
			conn.Close()
		}
	}()
	<-first
	// Whatever became of the first connection, the pair's next one is decided on the new state.
	time.Sleep(200 * time.Millisecond)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	conn, err := c.lab.Pod("web").Dial(ctx2, addr.String())
	if err == nil {
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, rerr := conn.Read(make([]byte, 1))
		conn.Close()
		if n == 1 {
			t.Fatalf("web -> api1:9005 after a denying change reached the app (%v): a stale kernel-path verdict", rerr)
		}
	}
	if got := c.countPath("node1", "kernel", "spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/api"); got != 0 {
		t.Fatalf("%d connections took the kernel path after the denying change", got)
	}
}

// TestRevokeKernelPath: a short-circuited connection has no agent in its data path; when a
// change denies it, the agent aborts it from the kernel side (SOCK_DESTROY), within a second,
// with a revoked access line.
func TestRevokeKernelPath(t *testing.T) {
	c := newCluster(t, "--same-node", "kernel")
	const web = "spiffe://cluster.local/ns/shop/sa/web"
	// The pair's first connection is spliced (and decided); the next one is pod to pod.
	first, err := c.lab.Pod("web").Dial(context.Background(), net.JoinHostPort(c.lab.Pod("api1").IP.String(), lab.EchoPort))
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(first); err != nil {
		t.Fatal(err)
	}
	first.Close()
	conn, err := c.lab.Pod("web").Dial(context.Background(), net.JoinHostPort(c.lab.Pod("api1").IP.String(), lab.EchoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := roundTrip(conn); err != nil {
		t.Fatal(err)
	}
	// The first one's access line comes when its relay ends; the second must not add one.
	testenv.WaitFor(t, "the first connection's splice access line", 3*time.Second, func() bool {
		return c.countPath("node1", "splice", web, "spiffe://cluster.local/ns/shop/sa/api") > 0
	})
	if n := c.countPath("node1", "splice", web, "spiffe://cluster.local/ns/shop/sa/api"); n != 1 {
		t.Fatalf("%d spliced connections, want 1 (the second must be on the kernel path)", n)
	}
	if err := c.lab.WriteState(c.state, services, revokingPolicies); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	conn.SetReadDeadline(changed.Add(3 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	took := time.Since(changed)
	if err == nil || isTimeout(err) || errors.Is(err, io.EOF) {
		t.Fatalf("kernel-path connection after the denying change: %v after %v, want it aborted", err, took)
	}
	if took > time.Second+500*time.Millisecond {
		t.Errorf("aborted %v after the change, want within 1 s", took)
	}
	t.Logf("kernel-path connection aborted %v after the change: %v", took.Round(time.Millisecond), err)
	testenv.WaitFor(t, "its revoked access line", 5*time.Second, func() bool {
		for _, l := range c.accessLines("node1") {
			if l["path"] == "kernel" && l["result"] == "revoked" && strings.Contains(fmt.Sprint(l["reason"]), "shop/") {
				return true
			}
		}
		return false
	})
}
