package redirect

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/netns"
)

// pair is two network namespaces joined by a veth: "pod" (to be enrolled) and "peer".
type pair struct {
	pod, peer     string // netns paths
	podIP, peerIP netip.Addr
	pinDir        string
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newPair builds the namespaces under a unique prefix and removes them, and every pin, when
// the test ends, however it ends.
func newPair(t *testing.T) *pair {
	testenv.RequireRoot(t)
	b := make([]byte, 3)
	rand.Read(b)
	id := "amt" + hex.EncodeToString(b)
	pod, peer := id+"-pod", id+"-peer"
	// 10.251.x.0/30 is used only on this veth, inside namespaces the test owns.
	x := int(b[0])
	p := &pair{
		pod:    "/run/netns/" + pod,
		peer:   "/run/netns/" + peer,
		podIP:  netip.AddrFrom4([4]byte{10, 251, byte(x), 1}),
		peerIP: netip.AddrFrom4([4]byte{10, 251, byte(x), 2}),
		pinDir: "/sys/fs/bpf/" + id,
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", pod).Run()
		exec.Command("ip", "netns", "del", peer).Run()
		os.RemoveAll(p.pinDir)
	})
	run(t, "ip", "netns", "add", pod)
	run(t, "ip", "netns", "add", peer)
	run(t, "ip", "link", "add", id+"a", "netns", pod, "type", "veth", "peer", "name", id+"b", "netns", peer)
	run(t, "ip", "-n", pod, "addr", "add", p.podIP.String()+"/30", "dev", id+"a")
	run(t, "ip", "-n", peer, "addr", "add", p.peerIP.String()+"/30", "dev", id+"b")
	for _, ns := range []string{pod, peer} {
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", pod, "link", "set", id+"a", "up")
	run(t, "ip", "-n", peer, "link", "set", id+"b", "up")
	return p
}

func openRedirector(t *testing.T, p *pair) *Redirector {
	t.Helper()
	r, err := Open(Config{PinDir: p.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Uninstall() })
	return r
}

// serve accepts on l and writes what each connection's local address was, then closes it.
func serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%s", c.LocalAddr())
		c.Close()
	}
}

// dialIn connects from inside ns, with control (nil for an app's plain socket).
func dialIn(t *testing.T, ns, addr string, control func(string, string, syscall.RawConn) error) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	return netns.DialContext(ctx, ns, "tcp", addr, control)
}

// agentListen opens a listener as the agent does: marked, so its connections skip the capture.
func agentListen(path, addr string) (*net.TCPListener, error) {
	return netns.ListenTCP(path, addr, net.ListenConfig{Control: MarkControl})
}

// appListen opens a listener as an app would: unmarked (agentListen is for the agent's own).
func appListen(ns, addr string) (net.Listener, error) {
	var l net.Listener
	err := netns.Do(ns, func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		l, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	return l, err
}

func stat(t *testing.T, r *Redirector, name string) uint64 {
	t.Helper()
	s, err := r.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s[name]
}

func TestRedirect(t *testing.T) {
	p := newPair(t)
	r := openRedirector(t, p)
	// The peer runs a real server; nothing must reach it from the enrolled pod unmarked.
	peerLn, err := agentListen(p.peer, netip.AddrPortFrom(p.peerIP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer peerLn.Close()
	go serve(peerLn)
	// The agent's outbound listener in the pod.
	out, err := agentListen(p.pod, "127.0.0.1:15001")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	out6, err := agentListen(p.pod, "[::1]:15001")
	if err != nil {
		t.Fatal(err)
	}
	defer out6.Close()
	pod, err := r.Enroll(p.pod, []netip.Addr{p.podIP})
	if err != nil {
		t.Fatal(err)
	}
	peerDst := netip.AddrPortFrom(p.peerIP, 8080)

	t.Run("outbound is captured with its original destination", func(t *testing.T) {
		before := stat(t, r, "connect4_redirected")
		c, err := dialIn(t, p.pod, peerDst.String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := c.RemoteAddr().String(); got != peerDst.String() {
			t.Errorf("the app sees remote %s, want its own destination %s", got, peerDst)
		}
		a, err := out.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		orig, err := r.OriginalDst(pod.Cookie, netip.MustParseAddrPort(a.RemoteAddr().String()))
		if err != nil || orig != peerDst {
			t.Fatalf("OriginalDst = %v, %v; want %v", orig, err, peerDst)
		}
		if _, err := r.OriginalDst(pod.Cookie, netip.MustParseAddrPort(a.RemoteAddr().String())); err == nil {
			t.Error("OriginalDst answered twice for one connection")
		}
		if stat(t, r, "connect4_redirected") != before+1 {
			t.Error("connect4_redirected did not count the capture")
		}
		// Once the connection is gone, so is what the programs kept of it.
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var cookie uint64
		rc.Control(func(fd uintptr) { cookie, _ = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) })
		var od ameshOrigDst
		if err := r.objs.OrigByCookie.Lookup(cookie, &od); err != nil {
			t.Fatalf("no original destination kept for the open connection (cookie %d): %v", cookie, err)
		}
		c.Close()
		a.Close()
		deadline := time.Now().Add(2 * time.Second)
		for r.objs.OrigByCookie.Lookup(cookie, &od) == nil {
			if time.Now().After(deadline) {
				t.Fatal("the original destination of a closed connection is still kept")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("v4-mapped destination on a dual-stack socket is captured", func(t *testing.T) {
		var fd int
		err := netns.Do(p.pod, func() error {
			var err error
			fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
			if err != nil {
				return err
			}
			sa := &unix.SockaddrInet6{Port: 8080, Addr: netip.AddrFrom16(p.peerIP.As16()).As16()}
			return unix.Connect(fd, sa)
		})
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		a, err := out.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		orig, err := r.OriginalDst(pod.Cookie, netip.MustParseAddrPort(a.RemoteAddr().String()))
		if err != nil || orig != peerDst {
			t.Fatalf("v4-mapped connect: OriginalDst = %v, %v; want %v", orig, err, peerDst)
		}
	})

	t.Run("a socket with the agent's mark but not registered by it is captured", func(t *testing.T) {
		// A pod with CAP_NET_RAW sets SO_MARK to the agent's own mark to skip the mesh.
		c, err := dialIn(t, p.pod, peerDst.String(), MarkControl)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		out.SetDeadline(time.Now().Add(2 * time.Second))
		defer out.SetDeadline(time.Time{})
		a, err := out.AcceptTCP()
		if err != nil {
			t.Fatalf("a pod socket with the agent's mark was not captured (the agent's :15001 accepted nothing: %v)", err)
		}
		defer a.Close()
		orig, err := r.OriginalDst(pod.Cookie, netip.MustParseAddrPort(a.RemoteAddr().String()))
		if err != nil || orig != peerDst {
			t.Fatalf("marked pod socket: OriginalDst = %v, %v; want it captured for %v", orig, err, peerDst)
		}
	})

	t.Run("the agent's registered sockets, loopback and the pod's own IP are not captured", func(t *testing.T) {
		c, err := dialIn(t, p.pod, peerDst.String(), r.AgentControl)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != peerDst.String() {
			t.Errorf("the agent's connection reached %q, want the real server", got)
		}
		own, err := agentListen(p.pod, netip.AddrPortFrom(p.podIP, 9090).String())
		if err != nil {
			t.Fatal(err)
		}
		defer own.Close()
		go serve(own)
		lo, err := agentListen(p.pod, "127.0.0.1:9091")
		if err != nil {
			t.Fatal(err)
		}
		defer lo.Close()
		go serve(lo)
		for _, dst := range []string{netip.AddrPortFrom(p.podIP, 9090).String(), "127.0.0.1:9091"} {
			c, err := dialIn(t, p.pod, dst, nil)
			if err != nil {
				s, _ := r.Stats()
				t.Fatalf("%s: %v (stats %v)", dst, err, s)
			}
			got, _ := io.ReadAll(c)
			c.Close()
			if string(got) != dst {
				t.Errorf("connection to %s reached %q", dst, got)
			}
		}
	})

	t.Run("the host and unenrolled namespaces are untouched", func(t *testing.T) {
		before := stat(t, r, "connect4_redirected")
		hostLn, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer hostLn.Close()
		go serve(hostLn)
		c, err := net.Dial("tcp", hostLn.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != hostLn.Addr().String() {
			t.Errorf("host connection reached %q", got)
		}
		c, err = dialIn(t, p.peer, netip.AddrPortFrom(p.peerIP, 8080).String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		got, _ = io.ReadAll(c)
		c.Close()
		if string(got) != peerDst.String() {
			t.Errorf("unenrolled netns connection reached %q", got)
		}
		if n := stat(t, r, "connect4_redirected"); n != before {
			t.Errorf("%d host/unenrolled connections were captured", n-before)
		}
		if _, err := r.Enroll("/proc/self/ns/net", nil); err == nil {
			t.Error("enrolling the host network namespace succeeded")
		}
	})

	t.Run("inbound goes to the pod's agent listeners, with the original destination", func(t *testing.T) {
		hb, err := agentListen(p.pod, "127.0.0.1:15008")
		if err != nil {
			t.Fatal(err)
		}
		defer hb.Close()
		pt, err := agentListen(p.pod, "127.0.0.1:15006")
		if err != nil {
			t.Fatal(err)
		}
		defer pt.Close()
		if err := r.RegisterListener(p.podIP, KindHBONE, hb); err != nil {
			t.Fatal(err)
		}
		if err := r.RegisterListener(p.podIP, KindPlaintext, pt); err != nil {
			t.Fatal(err)
		}
		go serve(hb)
		go serve(pt)
		for _, port := range []uint16{15008, 80, 443} {
			dst := netip.AddrPortFrom(p.podIP, port).String()
			c, err := dialIn(t, p.peer, dst, nil)
			if err != nil {
				t.Fatalf("dial %s: %v", dst, err)
			}
			got, _ := io.ReadAll(c)
			c.Close()
			if string(got) != dst {
				t.Errorf("inbound to %s: the listener saw local address %q", dst, got)
			}
		}
		if stat(t, r, "lookup_assigned") < 3 {
			t.Error("sk_lookup did not count its assignments")
		}

		// Fail closed: the agent's listeners gone, inbound is dropped, not passed to the app.
		app, err := agentListen(p.pod, netip.AddrPortFrom(p.podIP, 80).String())
		if err != nil {
			t.Fatal(err)
		}
		defer app.Close()
		go serve(app)
		hb.Close()
		pt.Close()
		before := stat(t, r, "lookup_dropped_no_listener")
		c, err := dialIn(t, p.peer, netip.AddrPortFrom(p.podIP, 80).String(), nil)
		if err == nil {
			got, _ := io.ReadAll(c)
			c.Close()
			t.Fatalf("with no agent listener, inbound reached %q: fail open", got)
		}
		if stat(t, r, "lookup_dropped_no_listener") <= before {
			t.Error("the drop was not counted")
		}
	})

	t.Run("the agent reaches the app from the client's IP", func(t *testing.T) {
		if err := SetupTransparentRouting(p.pod); err != nil {
			t.Fatal(err)
		}
		if err := SetupTransparentRouting(p.pod); err != nil {
			t.Fatalf("second SetupTransparentRouting (must be idempotent): %v", err)
		}
		app, err := appListen(p.pod, netip.AddrPortFrom(p.podIP, 8081).String())
		if err != nil {
			t.Fatal(err)
		}
		defer app.Close()
		seen := make(chan string, 1)
		go func() {
			c, err := app.Accept()
			if err != nil {
				return
			}
			seen <- c.RemoteAddr().String()
			c.Write([]byte("hi"))
			c.Close()
		}()
		client := netip.MustParseAddr("10.99.1.7") // a pod on another node
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := r.DialTransparent(ctx, p.pod, client, netip.AddrPortFrom(p.podIP, 8081))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != "hi" {
			t.Errorf("read %q from the app", got)
		}
		if addr := <-seen; !strings.HasPrefix(addr, "10.99.1.7:") {
			t.Errorf("the app saw peer %s, want the client's IP 10.99.1.7", addr)
		}
	})

	t.Run("an MPTCP listener is refused with a clear error", func(t *testing.T) {
		var l net.Listener
		err := netns.Do(p.pod, func() error {
			var lc net.ListenConfig
			lc.SetMultipathTCP(true)
			var err error
			l, err = lc.Listen(context.Background(), "tcp", "127.0.0.1:15108")
			return err
		})
		if err != nil {
			t.Skipf("MPTCP not available here: %v", err)
		}
		defer l.Close()
		err = r.RegisterListener(p.podIP, KindHBONE, l.(*net.TCPListener))
		if err == nil || !strings.Contains(err.Error(), "MPTCP") {
			t.Errorf("registering an MPTCP listener: %v, want an error naming MPTCP", err)
		}
	})
}

// TestFailClosedAcrossRestart: with the agent's handles gone (killed) the pinned programs keep
// refusing an enrolled pod's connections; a new Redirector re-adopts the pod.
func TestFailClosedAcrossRestart(t *testing.T) {
	p := newPair(t)
	r, err := Open(Config{PinDir: p.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := r.Enroll(p.pod, []netip.Addr{p.podIP})
	if err != nil {
		r.Uninstall()
		t.Fatal(err)
	}
	peerLn, err := agentListen(p.peer, netip.AddrPortFrom(p.peerIP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer peerLn.Close()
	go serve(peerLn)
	r.Close() // as if the agent died: only the pins remain

	_, err = dialIn(t, p.pod, netip.AddrPortFrom(p.peerIP, 8080).String(), nil)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("with no agent, the enrolled pod's connect = %v, want connection refused", err)
	}

	r2 := openRedirector(t, p)
	pods := r2.Pods()
	if len(pods) != 1 || pods[0].Cookie != pod.Cookie || len(pods[0].IPs) != 1 || pods[0].IPs[0] != p.podIP {
		t.Fatalf("re-adopted pods %+v, want the one enrolled", pods)
	}
	if err := r2.Unenroll(pod.Cookie); err != nil {
		t.Fatal(err)
	}
	c, err := dialIn(t, p.pod, netip.AddrPortFrom(p.peerIP, 8080).String(), nil)
	if err != nil {
		t.Fatalf("after unenroll the pod's connect failed: %v", err)
	}
	c.Close()
}

// TestAdoptSkipsPodsWhoseNamespaceIsGone: a pod deleted while no agent ran (during an upgrade,
// say) leaves a pinned sk_lookup link the kernel has severed; the next agent drops it and
// starts, instead of failing to start at all and leaving every pod of the node without one.
func TestAdoptSkipsPodsWhoseNamespaceIsGone(t *testing.T) {
	p := newPair(t)
	gone := newPair(t)
	r, err := Open(Config{PinDir: p.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	kept, err := r.Enroll(p.pod, []netip.Addr{p.podIP})
	if err != nil {
		r.Uninstall()
		t.Fatal(err)
	}
	dropped, err := r.Enroll(gone.pod, []netip.Addr{gone.podIP})
	if err != nil {
		r.Uninstall()
		t.Fatal(err)
	}
	r.Close() // as if the agent stopped: only the pins remain

	run(t, "ip", "netns", "del", filepath.Base(gone.pod))
	// The kernel severs the link when it tears the namespace down, a moment later.
	pin := filepath.Join(p.pinDir, podsDir, fmt.Sprint(dropped.Cookie), lookupPin)
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		if ns := info.NetNs(); ns != nil && ns.NetnsInode == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the deleted namespace's sk_lookup link was not severed in 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	r2 := openRedirector(t, p)
	pods := r2.Pods()
	if len(pods) != 1 || pods[0].Cookie != kept.Cookie {
		t.Fatalf("re-adopted pods %+v, want only the live one (cookie %d)", pods, kept.Cookie)
	}
	if _, err := os.Stat(filepath.Dir(pin)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the gone pod's pins: %v, want them removed", err)
	}
	var ep ameshEnrolledPod
	if err := r2.objs.Enrolled.Lookup(dropped.Cookie, &ep); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("the gone pod is still in the enrolled map: %v", err)
	}
}

// TestUninstallRemovesEverything checks no pin and no cgroup attachment survive Uninstall.
func TestUninstallRemovesEverything(t *testing.T) {
	p := newPair(t)
	r, err := Open(Config{PinDir: p.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Enroll(p.pod, []netip.Addr{p.podIP}); err != nil {
		t.Fatal(err)
	}
	info, err := r.objs.AmeshConnect4.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	cg, err := CgroupV2Root()
	if err != nil {
		t.Fatal(err)
	}
	attached := func() bool {
		f, err := os.Open(cg)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInet4Connect})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range res.Programs {
			if p.ID == id {
				return true
			}
		}
		return false
	}
	if !attached() {
		t.Fatal("connect4 is not attached at the cgroup root after Open")
	}
	if err := r.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir %s still there after Uninstall: %v", p.pinDir, err)
	}
	if attached() {
		t.Error("connect4 still attached at the cgroup root after Uninstall")
	}
	// The capture is gone: the pod's connect reaches the real peer.
	peerLn, err := agentListen(p.peer, netip.AddrPortFrom(p.peerIP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer peerLn.Close()
	go serve(peerLn)
	c, err := dialIn(t, p.pod, netip.AddrPortFrom(p.peerIP, 8080).String(), nil)
	if err != nil {
		t.Fatalf("after Uninstall the pod's connect failed: %v", err)
	}
	c.Close()
}

// TestNetSysctlThroughBindMount checks what the DaemonSet relies on to set a pod netns's
// tcp_fwmark_accept without the node's whole procfs: a bind mount of only /proc/sys/net (the
// container's own /proc/sys being read-only) still resolves to the netns of the thread that
// writes through it, not the netns of whoever mounted it.
func TestNetSysctlThroughBindMount(t *testing.T) {
	p := newPair(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "sys", "net")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "--bind", "/proc/sys/net", mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	read := func() string {
		b, err := os.ReadFile("/proc/" + fwmarkAcceptKey)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	own := read()
	err := netns.Do(p.pod, func() error {
		if got := read(); got != "0" {
			return fmt.Errorf("a new netns has tcp_fwmark_accept %s, want 0", got)
		}
		// The primary path fails as a read-only /proc/sys would; the bind is the fallback.
		if err := writeNetSysctl(filepath.Join(dir, "read-only", "x"), filepath.Join(dir, fwmarkAcceptKey), "1"); err != nil {
			return err
		}
		if got := read(); got != "1" {
			return fmt.Errorf("after the write through the bind, the pod netns has %s, want 1", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := read(); got != own {
		t.Fatalf("the test's own netns changed from %s to %s: the bind wrote to the mounter's netns", own, got)
	}
}

// TestCheckBPFFS: a pin directory's bpffs is checked at the deepest part of its path that exists,
// so a fresh node (no /sys/fs/bpf/amesh yet) starts, and a path off bpffs is refused.
func TestCheckBPFFS(t *testing.T) {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		if os.Getenv("CI") == "true" {
			t.Fatal("no bpffs on /sys/fs/bpf (make deps mounts it)")
		}
		t.Skip("SKIPPED LOUDLY: no bpffs on /sys/fs/bpf (make deps mounts it)")
	}
	for _, tc := range []struct {
		dir  string
		want string // "" for no error
	}{
		{"/sys/fs/bpf", ""},
		{"/sys/fs/bpf/amesh-test-absent/node1", ""},
		{t.TempDir(), "not on a bpffs"},
		{filepath.Join(t.TempDir(), "absent", "node1"), "not on a bpffs"},
	} {
		err := checkBPFFS(tc.dir)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("checkBPFFS(%s) = %v, want %q", tc.dir, err, tc.want)
		}
	}
}
