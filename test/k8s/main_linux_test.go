package k8s

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"
)

// agentUser is the node agent's ServiceAccount, as deploy/rbac.yaml binds it; baselineUser is
// another ServiceAccount of its namespace, which nothing binds: what the default roles give it.
var (
	agentUser    = ServiceAccountUser("amesh-system", "amesh-agent")
	baselineUser = ServiceAccountUser("amesh-system", "baseline")
)

// shared is the one RBAC control plane the tests that need no control plane of their own share
// (starting one takes ~4 s); TestMain stops it.
var shared struct {
	once sync.Once
	cp   *ControlPlane
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.cp != nil {
		if err := shared.cp.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop the shared control plane: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// sharedControlPlane starts the shared control plane on first use.
func sharedControlPlane(t *testing.T) *ControlPlane {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared.cp, shared.err = Start(ctx, Config{Users: []User{agentUser, baselineUser}, Logger: testLogger()})
	})
	if shared.err != nil {
		t.Fatalf("start the shared control plane: %v", shared.err)
	}
	return shared.cp
}

// startControlPlane starts a control plane of the test's own, stopped at the end of the test.
func startControlPlane(t *testing.T, cfg Config) *ControlPlane {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	return cp
}

// testLogger logs the control plane's lifecycle with -v only (building the binaries, when they
// are missing, takes minutes: -v shows why).
func testLogger() *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testContext is bounded by the test's deadline (minus a margin for cleanup) and by a minute.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	if d, ok := t.Deadline(); ok {
		var cancelDeadline context.CancelFunc
		ctx, cancelDeadline = context.WithDeadline(ctx, d.Add(-5*time.Second))
		t.Cleanup(cancelDeadline)
	}
	return ctx
}

// uniqueName returns prefix and six random hex digits: namespaces are never reused (deleting
// one never finishes here).
func uniqueName(prefix string) string {
	b := make([]byte, 3)
	rand.Read(b)
	return fmt.Sprintf("%s-%x", prefix, b)
}
