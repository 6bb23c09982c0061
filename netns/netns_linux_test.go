package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
)

// newNetns makes a named namespace with loopback up and one address on a veth pair of its own, removed
// when the test ends.
func newNetns(t *testing.T, addr string) string {
	t.Helper()
	testenv.RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "amt" + hex.EncodeToString(b)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run("-n", name, "link", "set", "lo", "up")
	run("-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	run("-n", name, "addr", "add", addr+"/24", "dev", "d0")
	run("-n", name, "link", "set", "d0", "up")
	run("-n", name, "link", "set", "d1", "up")
	return "/run/netns/" + name
}

func TestNamespaces(t *testing.T) {
	path := newNetns(t, "10.99.7.2")
	self, err := SelfCookie()
	if err != nil {
		t.Fatal(err)
	}
	other, err := Cookie(path)
	if err != nil {
		t.Fatal(err)
	}
	if other == self {
		t.Fatalf("cookie of %s = own cookie %d", path, self)
	}
	if again, _ := SelfCookie(); again != self {
		t.Fatalf("own cookie changed after Cookie: %d then %d (the thread was not switched back)", self, again)
	}

	addrs, err := Addrs(path)
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddr("10.99.7.2")
	if !slices.Contains(addrs, want) || slices.ContainsFunc(addrs, netip.Addr.IsLoopback) {
		t.Fatalf("Addrs(%s) = %v, want %v in it and no loopback address", path, addrs, want)
	}

	// A listener and a dial in the namespace meet there; the address exists nowhere else.
	ln, err := ListenTCP(path, "10.99.7.2:0", net.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = c.Write([]byte("hi"))
			_ = c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialContext(ctx, path, "tcp", ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "hi" {
		t.Fatalf("read %q, %v; want \"hi\"", got, err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), 200*time.Millisecond); err == nil {
		t.Fatalf("%s reachable from the test's own namespace", ln.Addr())
	}

	if err := Do("/nonexistent/netns", func() error { return nil }); err == nil {
		t.Fatal("Do on a missing path succeeded")
	}
}

func TestScanner(t *testing.T) {
	path := newNetns(t, "10.99.8.2")
	var s Scanner
	if got := s.Find([]netip.Addr{netip.MustParseAddr("10.99.8.2")}); got == "" {
		t.Fatalf("Find did not find the namespace holding 10.99.8.2 (%s)", path)
	} else if c1, c2 := mustCookie(t, got), mustCookie(t, path); c1 != c2 {
		t.Fatalf("Find returned %s (cookie %d), want the namespace of %s (cookie %d)", got, c1, path, c2)
	}
	// A miss right after a scan does not rescan (at most once per Rescan).
	if got := s.Find([]netip.Addr{netip.MustParseAddr("10.99.9.9")}); got != "" {
		t.Fatalf("Find(10.99.9.9) = %s, want none", got)
	}
}

// TestScannerPrefersTheAttachedNamespace: namespaces that are no pod of the node (another lab
// node's, a test's) reuse pod addresses; of several holding an IP the one attached to Home by a
// link wins, and where links do not settle it none is found (enrolling the wrong namespace would
// steer someone else's traffic).
func TestScannerPrefersTheAttachedNamespace(t *testing.T) {
	home := newBareNetns(t)
	elsewhere := newBareNetns(t)
	pod := newBareNetns(t)
	stranger := newBareNetns(t)
	lone := newBareNetns(t)
	twinA, twinB := newBareNetns(t), newBareNetns(t)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	// pod and stranger both hold 10.99.10.2: pod by a veth into home, stranger by one into
	// elsewhere. lone alone holds 10.99.11.2, attached nowhere. twinA and twinB both hold
	// 10.99.12.2, attached nowhere.
	veth := func(ns, peerNS, addr string) {
		n := filepath.Base(ns)
		ip("-n", n, "link", "add", "e0", "type", "veth", "peer", "name", "p"+n[3:], "netns", filepath.Base(peerNS))
		ip("-n", n, "addr", "add", addr+"/32", "dev", "e0")
		ip("-n", n, "link", "set", "e0", "up")
	}
	veth(pod, home, "10.99.10.2")
	veth(stranger, elsewhere, "10.99.10.2")
	veth(lone, elsewhere, "10.99.11.2")
	veth(twinA, elsewhere, "10.99.12.2")
	veth(twinB, elsewhere, "10.99.12.2")

	s := Scanner{Home: home}
	for _, tc := range []struct {
		name, ip, want string
	}{
		{"of two, the one attached to home", "10.99.10.2", pod},
		{"the only one, attached or not", "10.99.11.2", lone},
		{"two, neither attached: none", "10.99.12.2", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.scanned = time.Time{} // each case may rescan
			got := s.Find([]netip.Addr{netip.MustParseAddr(tc.ip)})
			switch {
			case tc.want == "" && got != "":
				t.Fatalf("Find(%s) = %s, want none", tc.ip, got)
			case tc.want != "" && got == "":
				t.Fatalf("Find(%s) found none, want %s", tc.ip, tc.want)
			case tc.want != "" && mustCookie(t, got) != mustCookie(t, tc.want):
				t.Fatalf("Find(%s) = %s, want %s", tc.ip, got, tc.want)
			}
			// What was not chosen is reported, with every namespace that holds the IP.
			amb := s.Ambiguous([]netip.Addr{netip.MustParseAddr(tc.ip)})
			if wantAmb := tc.want == ""; wantAmb != (len(amb) == 2) {
				t.Fatalf("Ambiguous(%s) = %v; want the two namespaces only when none is found", tc.ip, amb)
			}
		})
	}
}

// newBareNetns makes a named namespace with loopback up, removed when the test ends.
func newBareNetns(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "amt" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v: %s", name, err, out)
	}
	return "/run/netns/" + name
}

func mustCookie(t *testing.T, path string) uint64 {
	t.Helper()
	c, err := Cookie(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// threads is the process's OS thread count.
func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads: in /proc/self/status")
	return 0
}

// TestDialBlackholeThreads is the attacker's test for the thread exhaustion of the hostile
// peers issue: many dials that hang (to an address nobody answers) must not each hold a
// locked OS thread for their whole timeout, or a pod connecting to a black-holed address
// drives the agent to the Go runtime's 10,000-thread abort.
func TestDialBlackholeThreads(t *testing.T) {
	path := newNetns(t, "10.99.10.2")
	n, timeout := 300, 1500*time.Millisecond
	if testing.Short() {
		n = 150
	}
	before := threads(t)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			// 10.99.10.0/24 is on the veth; nobody has .77, so the SYN never leaves (no ARP
			// answer) and the connect hangs until the context ends.
			c, err := DialContext(ctx, path, "tcp", "10.99.10.77:80", nil)
			if err == nil {
				c.Close()
			}
			errs <- err
		}()
	}
	peak := before
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-time.After(50 * time.Millisecond):
			peak = max(peak, threads(t))
		}
	}
	elapsed := time.Since(start)
	t.Logf("%d hanging dials: threads %d before, %d at peak; all returned in %v", n, before, peak, elapsed)
	if peak-before > 40 {
		t.Fatalf("%d hanging dials raised the thread count from %d to %d: dials hold OS threads", n, before, peak)
	}
	close(errs)
	for err := range errs {
		if err == nil {
			t.Fatal("a dial to a black-holed address succeeded")
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial error %v, want the context's deadline", err)
		}
	}
	if elapsed > timeout+2*time.Second {
		t.Fatalf("dials took %v to give up, want about their %v timeout", elapsed, timeout)
	}
}

// TestDialControlAndRefusal: the control function runs on the socket before it connects, and
// a refused connect is an error at once.
func TestDialControlAndRefusal(t *testing.T) {
	path := newNetns(t, "10.99.11.2")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var ran bool
	_, err := DialContext(ctx, path, "tcp", "10.99.11.2:1", func(network, address string, c syscall.RawConn) error {
		ran = network == "tcp" && address == "10.99.11.2:1"
		return nil
	})
	if !ran {
		t.Fatal("control did not run with the dial's network and address")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port: %v, want ECONNREFUSED", err)
	}
	boom := errors.New("boom")
	if _, err := DialContext(ctx, path, "tcp", "10.99.11.2:1", func(string, string, syscall.RawConn) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("control's error: got %v, want it returned", err)
	}
	if _, err := DialContext(ctx, path, "tcp", "example.com:80", nil); err == nil {
		t.Fatal("a host name was dialed; only IP literals are")
	}
}

// TestDestroyTCP: a connection of another namespace, aborted from outside its data path, ends
// at both ends.
func TestDestroyTCP(t *testing.T) {
	path := newNetns(t, "10.99.12.2")
	ln, err := ListenTCP(path, "10.99.12.2:0", net.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialContext(ctx, path, "tcp", ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := <-accepted
	defer srv.Close()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	remote := netip.MustParseAddrPort(c.RemoteAddr().String())
	if err := DestroyTCP(path, local, remote); err != nil {
		t.Fatal(err)
	}
	for name, conn := range map[string]net.Conn{"client": c, "server": srv} {
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s side after DestroyTCP: read %v, want the connection aborted", name, err)
		}
	}
	if err := DestroyTCP(path, local, remote); err == nil {
		t.Error("destroying a socket that is gone succeeded")
	}
}

// TestProbeDestroy: the kernels amesh is tested on can abort a connection from outside it.
func TestProbeDestroy(t *testing.T) {
	testenv.RequireRoot(t)
	if err := ProbeDestroy(); err != nil {
		t.Fatal(err)
	}
}
