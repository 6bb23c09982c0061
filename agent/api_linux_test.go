package agent

import (
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
)

// peerClientEnv makes the test binary a unix-socket client (for TestEnrollmentSocketPeerCred's
// child process): it connects to the socket named by the variable, writes a byte and prints
// what it reads back until EOF.
const peerClientEnv = "AMESH_TEST_PEER_CLIENT"

func TestMain(m *testing.M) {
	if path := os.Getenv(peerClientEnv); path != "" {
		c, err := net.Dial("unix", path)
		if err != nil {
			os.Stdout.WriteString("dial: " + err.Error())
			os.Exit(0)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte{0})
		b, _ := io.ReadAll(c)
		os.Stdout.WriteString("read " + string(rune('0'+min(len(b), 9))))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestEnrollmentSocketPeerCred: whoever reaches the enrollment socket can take pods in and out
// of the mesh, so besides its 0600 mode in a 0700 directory (which a hostPath made by someone
// else may not have), the agent serves only peers running as its own user (SO_PEERCRED). The
// test opens the socket's permissions on purpose and connects as nobody.
func TestEnrollmentSocketPeerCred(t *testing.T) {
	testenv.RequireRoot(t)
	// A directory another user can enter (t.TempDir's parents are 0700), holding the socket
	// and a copy of this test binary for the child to run.
	dir, err := os.MkdirTemp("", "amesh-peercred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// An existing, open directory (a hostPath DirectoryOrCreate is 0755) is tightened.
	sockDir := filepath.Join(dir, "run")
	if err := os.Mkdir(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(sockDir, "cni.sock")
	a := &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ln, err := a.listenEnrollment(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if st, err := os.Stat(sockDir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory mode %v (%v), want 0700", st.Mode().Perm(), err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ok"))
			c.Close()
		}
	}()

	// The owner's process is served.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(c); string(b) != "ok" {
		t.Fatalf("root's connection read %q, want ok", b)
	}
	c.Close()

	// Loosen the socket and its directory as a careless mount would, then connect as nobody.
	if err := os.Chmod(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	client := filepath.Join(dir, "client")
	if err := os.WriteFile(client, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(client, "-test.run=^$")
	cmd.Env = append(os.Environ(), peerClientEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as nobody: %v: %s", err, out)
	}
	if string(out) != "read 0" {
		t.Fatalf("a connection from uid 65534 got %q, want it closed unserved (read 0)", out)
	}
	if got := a.enrollRefused.Load(); got != 1 {
		t.Fatalf("refused peers counted %d, want 1", got)
	}
}
