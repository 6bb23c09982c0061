package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/workload"
)

// stateFile returns a valid state file with n workloads on node1.
func stateFile(n int) string {
	var b strings.Builder
	b.WriteString(header + "workloads:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {name: w%d, namespace: shop, serviceAccount: sa, node: node1, ips: [10.20.1.%d]}\n", i, i+1)
	}
	return b.String()
}

// writeRename replaces path atomically, as careful tools and many editors do.
func writeRename(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a log sink safe for the Run goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// nextState waits for a delivery whose state has n workloads, skipping others (coalescing may
// deliver an intermediate one).
func nextState(t *testing.T, ch <-chan *workload.State, n int) *workload.State {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case s := <-ch:
			if len(s.Workloads()) == n {
				return s
			}
		case <-deadline:
			t.Fatalf("no state with %d workloads within 5s", n)
		}
	}
}

func TestSource(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.yaml")
	writeRename(t, path, stateFile(1))

	logs := &syncBuffer{}
	src := &Source{
		Path:     path,
		Interval: 5 * time.Millisecond,
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	initial, err := src.Load()
	if err != nil || len(initial.Workloads()) != 1 {
		t.Fatalf("Load = %v, %v", initial, err)
	}

	store := workload.NewStore(initial)
	updates, cancel := store.Subscribe()
	defer cancel()
	if s := <-updates; s != initial { // Subscribe delivers the current state at once
		t.Fatal("first delivery is not the loaded state")
	}

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, store) }()
	defer func() {
		stop()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run = %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()

	// The file as Load read it is not applied again: an unchanged file is no change.
	select {
	case s := <-updates:
		t.Fatalf("Run re-applied the loaded file (%d workloads)", len(s.Workloads()))
	case <-time.After(5 * src.Interval):
	}

	// A valid edit, by rename, is picked up.
	writeRename(t, path, stateFile(2))
	good := nextState(t, updates, 2)
	if store.Load() != good {
		t.Fatal("store does not hold the delivered state")
	}

	// An invalid edit is rejected, counted and logged with its line; the good state stays.
	bad := stateFile(2) + "  - {name: w9, namespace: shop, serviceAccount: sa, node: node1, ips: [10.0.0.x]}\n"
	writeRename(t, path, bad)
	// Rejected counts before the Warn line is written: wait for both.
	testenv.WaitFor(t, "the rejection", 5*time.Second, func() bool {
		return src.Rejected() == 1 && strings.Contains(logs.String(), "state file rejected")
	})
	if store.Load() != good {
		t.Fatal("an invalid file replaced the state")
	}
	select {
	case s := <-updates:
		t.Fatalf("an invalid file was delivered: %d workloads", len(s.Workloads()))
	default:
	}
	if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, `state.yaml:8: workload shop/w9: ip \"10.0.0.x\" is not an IP address`) {
		t.Errorf("rejection log lacks the line:\n%s", l)
	}
	// The same bad content is not rejected again on every poll.
	time.Sleep(50 * time.Millisecond)
	if n := src.Rejected(); n != 1 {
		t.Errorf("Rejected = %d after the bad file stayed, want 1", n)
	}

	// Fixed again, written in place this time: picked up.
	if err := os.WriteFile(path, []byte(stateFile(3)), 0o644); err != nil {
		t.Fatal(err)
	}
	nextState(t, updates, 3)

	// The file disappears: logged once, the state stays.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the read error log", 5*time.Second, func() bool { return strings.Contains(logs.String(), "state file unreadable") })
	if n := len(store.Load().Workloads()); n != 3 {
		t.Errorf("state after the file vanished has %d workloads, want 3", n)
	}
	time.Sleep(30 * time.Millisecond)
	if c := strings.Count(logs.String(), "state file unreadable"); c != 1 {
		t.Errorf("read error logged %d times, want once", c)
	}
	// And comes back.
	writeRename(t, path, stateFile(1))
	nextState(t, updates, 1)
	// The bad version was rejected once, whatever else happened since: the in-place write above
	// may be caught half-written (truncated, not yet written) on a loaded machine, a version of
	// its own that is rightly rejected too.
	if c := strings.Count(logs.String(), `workload shop/w9`); c != 1 {
		t.Errorf("the bad version was rejected %d times, want once:\n%s", c, logs.String())
	}
}

func TestSourceLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := (&Source{Path: filepath.Join(dir, "missing.yaml")}).Load(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
	path := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(path, []byte("trustDomain: cluster.local\nnodes: [{name: n, ip: x}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := (&Source{Path: path}).Load()
	if err == nil || !strings.Contains(err.Error(), path+":2: node n: ip \"x\" is not an IP address") {
		t.Errorf("Load(bad) = %v", err)
	}
	if err := (&Source{Path: path}).Run(context.Background(), nil); err == nil {
		t.Error("Run(nil store) = nil")
	}
}
