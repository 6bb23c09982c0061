package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
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
	c, err := DialContext(ctx, path, "tcp", ln.Addr().String(), net.Dialer{})
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

func mustCookie(t *testing.T, path string) uint64 {
	t.Helper()
	c, err := Cookie(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
