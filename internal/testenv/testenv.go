// Package testenv holds the rules tests follow about their environment: a test that needs root
// (network namespaces, eBPF) skips loudly when run by a user, and fails when CI=true, because CI
// runs as root and a skip there would hide that the test never ran. It also holds WaitFor, the
// one polling wait the test packages share.
package testenv

import (
	"os"
	"testing"
	"time"
)

// InCI reports whether the run is CI's (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// RequireRoot stops t unless the process is root: a failure under CI, a loud skip elsewhere.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatalf("%s needs root (netns/eBPF) and CI=true: refusing to skip", t.Name())
	}
	t.Skipf("SKIPPED LOUDLY: %s needs root (netns/eBPF); run `sudo make test` to run it", t.Name())
}

// WaitFor polls cond until it holds, and fails t, naming what it waited for, if d passes first.
// It polls every 5 ms at first and backs off to every 50 ms, so a condition that holds at once
// is seen at once and one that takes seconds (a line in an agent's log) is not read thousands of
// times.
func WaitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for wait := 5 * time.Millisecond; !cond(); wait = min(2*wait, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(wait)
	}
}
