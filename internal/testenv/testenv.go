// Package testenv holds the rules tests follow about their environment: a test that needs root
// (network namespaces, eBPF) skips loudly when run by a user, and fails when CI=true, because CI
// runs as root and a skip there would hide that the test never ran.
package testenv

import (
	"os"
	"testing"
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
