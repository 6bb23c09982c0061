package handoff

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
)

// agent is a stand-in for one agent: a TCP listener whose connections it answers with its
// name, and the Handler that hands that listener over.
type agent struct {
	name    string
	ln      *net.TCPListener
	wg      sync.WaitGroup
	served  atomic.Int64
	aborted atomic.Int64
	state   json.RawMessage
}

func serveAs(name string, ln *net.TCPListener) *agent {
	a := &agent{name: name, ln: ln}
	a.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.served.Add(1)
			io.WriteString(c, a.name)
			c.Close()
		}
	})
	return a
}

func (a *agent) Offer() (map[string]*os.File, error) {
	f, err := a.ln.File()
	if err != nil {
		return nil, err
	}
	return map[string]*os.File{"listener": f}, nil
}

func (a *agent) Release() (json.RawMessage, error) {
	a.ln.Close()
	a.wg.Wait()
	return a.state, nil
}

func (a *agent) Abort() { a.aborted.Add(1) }

func listenTCP(t *testing.T) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func serveHandoff(t *testing.T, path string, h Handler) (errs chan error, served chan error) {
	t.Helper()
	srv, err := Listen(path, "node1")
	if err != nil {
		t.Fatal(err)
	}
	errs, served = make(chan error, 16), make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), h, func(err error) { errs <- err }) }()
	t.Cleanup(func() { srv.Close() })
	return errs, served
}

// TestHandOverUnderLoad: while clients connect without pause, the successor takes the
// listening socket, serves it, and the predecessor stops: no connect fails or goes
// unanswered, both agents answered some, and after Finish only the successor does.
func TestHandOverUnderLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "handoff.sock")
	old := serveAs("old", listenTCP(t))
	old.state = json.RawMessage(`{"conns":3}`)
	_, served := serveHandoff(t, path, old)
	addr := old.ln.Addr().String()

	var failed, answered atomic.Int64
	var firstErr atomic.Value
	var byName sync.Map
	stop := make(chan struct{})
	var load sync.WaitGroup
	for range 4 {
		load.Go(func() {
			for i := 0; i < 20000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name, err := ask(addr)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				answered.Add(1)
				v, _ := byName.LoadOrStore(name, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	tk, err := Take(context.Background(), path, "node1")
	if err != nil {
		t.Fatal(err)
	}
	f := tk.Files["listener"]
	if f == nil {
		t.Fatalf("handed over %v, want a listener", tk.Files)
	}
	fl, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	next := serveAs("new", fl.(*net.TCPListener))
	defer func() { fl.Close(); next.wg.Wait() }()
	time.Sleep(100 * time.Millisecond) // both serve the one socket for a while
	state, err := tk.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if string(state) != `{"conns":3}` {
		t.Errorf("state handed over %s, want the predecessor's", state)
	}
	if err := <-served; err != nil {
		t.Errorf("predecessor's Serve after the hand-over: %v", err)
	}
	oldServed := old.served.Load()
	time.Sleep(200 * time.Millisecond)
	close(stop)
	load.Wait()
	counts := map[string]int64{}
	byName.Range(func(k, v any) bool { counts[k.(string)] = v.(*atomic.Int64).Load(); return true })
	t.Logf("%d connects answered (%v), %d failed", answered.Load(), counts, failed.Load())
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d connects failed across the hand-over; first: %v", n, firstErr.Load())
	}
	if counts["old"] == 0 || counts["new"] == 0 {
		t.Errorf("answers %v: want both agents to have served", counts)
	}
	if old.served.Load() != oldServed {
		t.Errorf("the predecessor served %d connections after it released", old.served.Load()-oldServed)
	}
}

func ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if len(b) == 0 {
		return "", errors.New("connection closed unanswered")
	}
	return string(b), nil
}

// TestAbortKeepsServing: a successor that takes the sockets and goes away before it is ready
// changes nothing; the next one can take over.
func TestAbortKeepsServing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "handoff.sock")
	old := serveAs("old", listenTCP(t))
	errs, served := serveHandoff(t, path, old)
	tk, err := Take(context.Background(), path, "node1")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range tk.Files {
		f.Close()
	}
	tk.Abort()
	if err := <-errs; err == nil || !strings.Contains(err.Error(), "did not take") {
		t.Errorf("predecessor's error for the abandoned offer: %v", err)
	}
	if old.aborted.Load() != 1 {
		t.Errorf("Abort called %d times, want 1", old.aborted.Load())
	}
	if name, err := ask(old.ln.Addr().String()); err != nil || name != "old" {
		t.Fatalf("after an abandoned hand-over: %q, %v; want the predecessor serving", name, err)
	}
	tk, err = Take(context.Background(), path, "node1")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range tk.Files {
			f.Close()
		}
	}()
	if _, err := tk.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Error(err)
	}
}

// TestNoPredecessor: Take finds nobody where there is no socket or a stale one, Listen replaces
// a stale socket, and refuses a path another agent serves.
func TestNoPredecessor(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "handoff.sock")
	if _, err := Take(context.Background(), path, "node1"); !errors.Is(err, ErrNoPredecessor) {
		t.Fatalf("Take with no socket: %v, want ErrNoPredecessor", err)
	}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close() // the file stays, nobody listens: an agent that was killed
	if _, err := Take(context.Background(), path, "node1"); !errors.Is(err, ErrNoPredecessor) {
		t.Fatalf("Take with a stale socket: %v, want ErrNoPredecessor", err)
	}
	srv, err := Listen(path, "node1")
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer srv.Close()
	if _, err := Listen(path, "node1"); err == nil || !strings.Contains(err.Error(), "another agent serves it") {
		t.Fatalf("second Listen: %v, want a refusal", err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
}

// handoffPeerEnv makes the test binary a successor running as another user (see
// TestRefusesOtherUser).
const handoffPeerEnv = "AMESH_HANDOFF_PEER"

func TestMain(m *testing.M) {
	if path := os.Getenv(handoffPeerEnv); path != "" {
		tk, err := Take(context.Background(), path, "node1")
		if err != nil {
			fmt.Println("refused:", err)
			os.Exit(0)
		}
		fmt.Printf("took %d sockets\n", len(tk.Files))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRefusesOtherUser is the attacker's test: a process of another user that reaches the
// socket (the modes loosened by hand or a mount) must get no listener.
func TestRefusesOtherUser(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "handoff.sock")
	old := serveAs("old", listenTCP(t))
	errs, _ := serveHandoff(t, path, old)
	// Loosen everything on the way, so only the credential check stands.
	for _, p := range []string{filepath.Dir(dir), dir, path} {
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	// The test binary, where the other user may run it (go test builds in a 0700 directory).
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "peer.test")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), handoffPeerEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("peer as nobody: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "refused:") {
		t.Fatalf("a peer of another user got: %s", out)
	}
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "uid 65534") {
			t.Errorf("predecessor's error: %v, want one naming the peer's uid", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the predecessor reported no refusal")
	}
	if name, err := ask(old.ln.Addr().String()); err != nil || name != "old" {
		t.Errorf("after the refused peer: %q, %v; want the predecessor serving", name, err)
	}
}

// TestRefusesOtherOwner: two agents that share a host (a lab, or a mistaken path) never take
// each other's sockets: a successor for another node is refused, and the predecessor serves on.
func TestRefusesOtherOwner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "handoff.sock")
	old := serveAs("old", listenTCP(t))
	errs, _ := serveHandoff(t, path, old)
	if tk, err := Take(context.Background(), path, "node2"); err == nil || !strings.Contains(err.Error(), `serves "node1"`) {
		if tk != nil {
			tk.Abort()
		}
		t.Fatalf("Take for another owner: %v, want a refusal naming the owner", err)
	}
	if err := <-errs; err == nil || !strings.Contains(err.Error(), "node2") {
		t.Errorf("predecessor's error: %v", err)
	}
	if old.aborted.Load() != 0 {
		t.Error("an offer was made to a successor of another owner")
	}
	if name, err := ask(old.ln.Addr().String()); err != nil || name != "old" {
		t.Errorf("after the refusal: %q, %v; want the predecessor serving", name, err)
	}
}
