package lab

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/workload/file"
)

// netnsList is `ip netns list`, names only.
func netnsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

func withPrefix(names []string, prefix string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// hostLinks is the names of the links of this process's namespace.
func hostLinks(t *testing.T) []string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	slices.Sort(names)
	return names
}

func output(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return string(out)
}

// echo has to listen in to, and from dial it, and checks that the bytes come back and that
// to saw from's own address (the lab routes, it does not NAT).
func echo(t *testing.T, from interface {
	Dial(context.Context, string) (net.Conn, error)
}, fromIP netip.Addr, to *Pod) {
	t.Helper()
	ln, err := to.Listen(netip.AddrPortFrom(to.IP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	peer := make(chan netip.AddrPort, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Echo(ln, func(c net.Conn) {
			select {
			case peer <- c.RemoteAddr().(*net.TCPAddr).AddrPort():
			default: // only the first connection is the one checked
			}
		})
	}()
	defer func() { ln.Close(); <-done }()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, netip.AddrPortFrom(to.IP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte(fmt.Sprintf("hello %s from %s", to.Name, fromIP))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Errorf("echo %q, want %q", got, msg)
	}
	if src := <-peer; src.Addr() != fromIP {
		t.Errorf("%s saw the connection from %s, want %s", to.Name, src, fromIP)
	}
}

func hostSysctl(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestLab(t *testing.T) {
	testenv.RequireRoot(t)
	linksBefore := hostLinks(t)
	forwardBefore := hostSysctl(t, "net/ipv4/ip_forward")
	start := time.Now()
	l, err := New(t.Context(), testConfig(""))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built lab %s in %v", l.Prefix, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() { l.Close() }) // if a check below stops the test before its own Close
	web1, api1, api2 := l.Pod("web-1"), l.Pod("api-1"), l.Pod("api-2")
	node1, node2 := l.Node("node1"), l.Node("node2")

	t.Run("namespaces", func(t *testing.T) {
		want := []string{l.Prefix + "-node1", l.Prefix + "-node1-api-1", l.Prefix + "-node1-web-1",
			l.Prefix + "-node2", l.Prefix + "-node2-api-2", l.Prefix + "-sw"}
		got := withPrefix(netnsList(t), l.Prefix)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("namespaces %v, want %v", got, want)
		}
		if got := hostLinks(t); !slices.Equal(got, linksBefore) {
			t.Errorf("links here %v, were %v: the lab must make links only in its namespaces", got, linksBefore)
		}
	})

	t.Run("addresses, routes and sysctls", func(t *testing.T) {
		ctx := t.Context()
		for _, p := range l.Pods() {
			if out := output(t, l.Command(ctx, p.Netns, "ip", "-4", "-o", "addr", "show", "dev", "eth0")); !strings.Contains(out, p.IP.String()+"/32") {
				t.Errorf("pod %s eth0: %s", p.Name, out)
			}
			routes := output(t, l.Command(ctx, p.Netns, "ip", "-4", "route", "show"))
			if !strings.Contains(routes, "default via 169.254.1.1 dev eth0") || !strings.Contains(routes, "169.254.1.1 dev eth0 scope link") {
				t.Errorf("pod %s routes:\n%s", p.Name, routes)
			}
			for _, key := range []string{"conf/" + p.hostVeth + "/proxy_arp", "neigh/" + p.hostVeth + "/proxy_delay"} {
				want := map[bool]string{true: "1", false: "0"}[strings.HasPrefix(key, "conf")]
				if got := strings.TrimSpace(output(t, l.Command(ctx, p.Node.Netns, "cat", "/proc/sys/net/ipv4/"+key))); got != want {
					t.Errorf("node %s: %s = %s, want %s", p.Node.Name, key, got, want)
				}
			}
		}
		for _, n := range l.Nodes {
			if got := strings.TrimSpace(output(t, l.Command(ctx, n.Netns, "cat", "/proc/sys/net/ipv4/ip_forward"))); got != "1" {
				t.Errorf("node %s: ip_forward = %s", n.Name, got)
			}
		}
		if got := output(t, l.Command(ctx, node1.Netns, "ip", "-4", "route", "show", "10.20.2.0/24")); !strings.Contains(got, "via 10.250.0.2 dev eth0") {
			t.Errorf("node1 route to node2's pods: %q", got)
		}
		if got := hostSysctl(t, "net/ipv4/ip_forward"); got != forwardBefore {
			t.Errorf("host ip_forward %s, was %s", got, forwardBefore)
		}
	})

	t.Run("pod to pod on one node", func(t *testing.T) {
		echo(t, web1, web1.IP, api1)
		echo(t, api1, api1.IP, web1)
	})
	t.Run("pod to pod across nodes", func(t *testing.T) {
		echo(t, web1, web1.IP, api2)
		echo(t, api2, api2.IP, web1)
	})
	t.Run("node to pod", func(t *testing.T) {
		echo(t, node2, node2.IP, web1)
		echo(t, node1, node1.IP, web1)
	})
	t.Run("pod to node", func(t *testing.T) {
		ln, err := node2.Listen(netip.AddrPortFrom(node2.IP, 9000).String())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}
		}()
		c, err := web1.Dial(t.Context(), netip.AddrPortFrom(node2.IP, 9000).String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	})
	t.Run("rr against echo", func(t *testing.T) {
		ln, err := api2.Listen(":" + EchoPort)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); Echo(ln, nil) }()
		defer func() { ln.Close(); <-done }()
		for _, o := range []RROptions{{Requests: 200}, {Requests: 200, Rate: 1000}} {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			start := time.Now()
			p50, p99, err := RR(ctx, web1, api2, o)
			took := time.Since(start)
			cancel()
			if err != nil {
				t.Fatalf("%+v: %v", o, err)
			}
			if p50 <= 0 || p99 < p50 {
				t.Errorf("%+v: p50 %v, p99 %v", o, p50, p99)
			}
			if o.Rate > 0 && took < 190*time.Millisecond {
				t.Errorf("%+v: took %v, faster than the rate allows", o, took)
			}
		}
		if _, _, err := RR(t.Context(), web1, api2, RROptions{}); err == nil {
			t.Error("RR with no requests did not fail")
		}
	})

	t.Run("state", func(t *testing.T) {
		if err := l.WriteState("state.yaml", "", ""); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(l.Dir, "state.yaml")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s, err := file.Parse(path, data)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range l.Pods() {
			w := s.WorkloadByIP(p.IP)
			if w == nil || w.Name != p.Name || w.Netns != p.Netns {
				t.Errorf("pod %s (%s, %s): workload %+v", p.Name, p.IP, p.Netns, w)
				continue
			}
			if _, err := os.Stat(w.Netns); err != nil {
				t.Errorf("workload %s: netns: %v", w.Name, err)
			}
		}
	})

	t.Run("capture", func(t *testing.T) { testCapture(t, l, web1, api2) })

	t.Run("processes", func(t *testing.T) {
		ctx := t.Context()
		p, err := l.Start(ctx, web1.Netns, "sh.log", "sh", "-c", "ip -4 -o addr show dev eth0; echo ready; exec sleep 60")
		if err != nil {
			t.Fatal(err)
		}
		log := waitLog(t, p, "ready")
		if !strings.Contains(log, web1.IP.String()) {
			t.Errorf("the process does not run in %s:\n%s", web1.Netns, log)
		}
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		var exit *exec.ExitError
		if err := p.Wait(); !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Errorf("after SIGTERM: Wait = %v", err)
		}
		if err := p.Kill(); err != nil {
			t.Errorf("Kill after exit: %v", err)
		}

		// Kill kills the group: a child the shell left in the background too.
		p, err = l.Start(ctx, api2.Netns, "", "sh", "-c", "sleep 60 & echo child $!; wait")
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(p.LogPath) != l.Dir {
			t.Errorf("default log %s is not in %s", p.LogPath, l.Dir)
		}
		_, after, _ := strings.Cut(waitLog(t, p, "child "), "child ")
		child, err := strconv.Atoi(strings.TrimSpace(after))
		if err != nil {
			t.Fatalf("child pid: %v", err)
		}
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		p.Wait()
		waitGone(t, child)
	})

	// Last: Close, and what it leaves.
	procs := []*Proc{}
	for _, p := range []*Pod{web1, api2} {
		proc, err := l.Start(context.Background(), p.Netns, "", "sleep", "300")
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, proc)
	}
	leftCapture, err := l.Capture()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, p := range procs {
		select {
		case <-p.Done():
		case <-time.After(5 * time.Second):
			t.Errorf("%s still runs after Close", p.name())
		}
	}
	leftCapture.Stop()
	if left := withPrefix(netnsList(t), l.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
	if _, err := os.Stat(l.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir %s after Close: %v", l.Dir, err)
	}
	if got := hostLinks(t); !slices.Equal(got, linksBefore) {
		t.Errorf("links here after Close %v, were %v", got, linksBefore)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := l.Start(t.Context(), web1.Netns, "", "true"); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v", err)
	}
}

// waitLog waits until p's log holds want, and returns the log.
func waitLog(t *testing.T, p *Proc, want string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(p.LogPath)
		if bytes.Contains(b, []byte(want)) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q in %s after 5s:\n%s", p.name(), want, p.LogPath, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitGone waits until pid no longer exists (reparented, the orphan is reaped by init).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for unix.Kill(pid, 0) == nil {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); bytes.Contains(b, []byte(") Z ")) {
			return // dead, waiting for its reaper
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still runs after its group was killed", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testCapture sends a marker in plaintext, split in two segments, and another only sealed in a
// TLS-looking record, from one node's pod to the other's, and looks for both on the underlay.
func testCapture(t *testing.T, l *Lab, from, to *Pod) {
	c, err := l.Capture()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	ln, err := to.Listen(netip.AddrPortFrom(to.IP, 9443).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan []byte)
	go func() {
		defer close(received)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, _ := io.ReadAll(c)
			c.Close()
			received <- b
		}
	}()
	send := func(chunks ...[]byte) {
		t.Helper()
		conn, err := from.Dial(t.Context(), netip.AddrPortFrom(to.IP, 9443).String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var all []byte
		for i, chunk := range chunks {
			if i > 0 {
				time.Sleep(20 * time.Millisecond) // its own segment: Go sets TCP_NODELAY
			}
			if _, err := conn.Write(chunk); err != nil {
				t.Fatal(err)
			}
			all = append(all, chunk...)
		}
		conn.(*net.TCPConn).CloseWrite()
		if got := <-received; !bytes.Equal(got, all) {
			t.Fatalf("received %d bytes, want %d", len(got), len(all))
		}
	}

	plain := []byte("amesh-lab-plaintext-" + rand.Text())
	half := len(plain) / 2
	send(plain[:half], plain[half:])

	secret := []byte("amesh-lab-secret-" + rand.Text())
	key := make([]byte, 16)
	rand.Read(key)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	nonce := make([]byte, aead.NonceSize())
	sealed := aead.Seal(nil, nonce, append(secret, make([]byte, 32<<10)...), nil)
	record := binary.BigEndian.AppendUint16([]byte{0x17, 0x03, 0x03}, uint16(len(sealed)))
	send(append(record, sealed...))
	ln.Close()
	<-received

	pkts := c.Stop()
	if !ContainsPayload(pkts, plain) {
		t.Errorf("the plaintext marker, split in two segments, was not seen in %d segments", len(pkts))
	}
	if ContainsPayload(pkts, secret) {
		t.Error("the sealed marker was seen in the clear")
	}
	if !ContainsPayload(pkts, sealed[:64]) || !ContainsPayload(pkts, sealed[len(sealed)-64:]) {
		t.Error("the sealed record was not seen: the capture misses traffic")
	}
	if ContainsPayload(pkts, []byte("amesh-lab-never-sent")) {
		t.Error("a marker never sent was seen")
	}
	// Each segment once: as it entered the switch, not again as it left it.
	firstHalf := 0
	for _, p := range pkts {
		if bytes.Equal(p.Payload, plain[:half]) {
			firstHalf++
			if p.Src.Addr() != from.IP || p.Dst != netip.AddrPortFrom(to.IP, 9443) {
				t.Errorf("the segment went %s -> %s, want %s -> %s:9443", p.Src, p.Dst, from.IP, to.IP)
			}
		}
	}
	if firstHalf != 1 {
		t.Errorf("the first half of the marker was seen in %d segments, want 1", firstHalf)
	}
	if d := c.Dropped(); d != 0 {
		t.Errorf("%d frames dropped", d)
	}
	if again := c.Stop(); len(again) != len(pkts) {
		t.Errorf("second Stop: %d segments, first %d", len(again), len(pkts))
	}
}

// TestNewCleansUpOnFailure makes New fail half-way, at a namespace someone else already has,
// and checks that it removed what it had made, and only that.
func TestNewCleansUpOnFailure(t *testing.T) {
	testenv.RequireRoot(t)
	prefix := randomPrefix()
	theirs := prefix + "-node2"
	output(t, exec.Command("ip", "netns", "add", theirs))
	t.Cleanup(func() { exec.Command("ip", "netns", "del", theirs).Run() })

	_, err := New(t.Context(), testConfig(prefix))
	if err == nil || !strings.Contains(err.Error(), "node node2") || !strings.Contains(err.Error(), "clean-lab") {
		t.Fatalf("New over an existing namespace: %v", err)
	}
	if left := withPrefix(netnsList(t), prefix); !slices.Equal(left, []string{theirs}) {
		t.Errorf("namespaces after a failed New: %v, want only %s", left, theirs)
	}
	if dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*")); len(dirs) > 0 {
		t.Errorf("dirs after a failed New: %v", dirs)
	}
}

func TestNewStopsOnCancel(t *testing.T) {
	testenv.RequireRoot(t)
	prefix := randomPrefix()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := New(ctx, testConfig(prefix)); err == nil {
		t.Fatal("New with a cancelled context succeeded")
	}
	if left := withPrefix(netnsList(t), prefix); len(left) > 0 {
		t.Errorf("namespaces after a cancelled New: %v", left)
	}
}

func TestCleanupStale(t *testing.T) {
	testenv.RequireRoot(t)
	// A prefix of our own, never DefaultPrefixBase: other labs may be running.
	prefix := randomPrefix()
	output(t, exec.Command("ip", "netns", "add", prefix+"-sw"))
	dir, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", prefix+"-sw").Run()
		os.RemoveAll(dir)
	})
	if err := CleanupStale(prefix); err != nil {
		t.Fatal(err)
	}
	if left := withPrefix(netnsList(t), prefix); len(left) > 0 {
		t.Errorf("namespaces after CleanupStale: %v", left)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir %s after CleanupStale: %v", dir, err)
	}
	if err := CleanupStale("Not A Prefix"); err == nil {
		t.Error("CleanupStale accepted an invalid prefix")
	}
}
