package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
)

// readiness asks node's agent for /healthz/ready (it listens on 127.0.0.1:15021 of the node's
// namespace in these tests) and returns the status line and body.
func (c *cluster) readiness(node string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := c.lab.Command(ctx, c.lab.Node(node).Netns, "curl", "-sS", "--max-time", "2", "-w", " %{http_code}", "http://127.0.0.1:15021/healthz/ready").CombinedOutput()
	return strings.TrimSpace(string(out))
}

// TestEnrollRetry: an enrollment that fails for a running pod (here its network namespace is
// not there yet) is retried with backoff, not left until the next change of the state (which,
// for a running pod, may never come); meanwhile readiness says which pod and why.
func TestEnrollRetry(t *testing.T) {
	c := newCluster(t, "--health-addr", "127.0.0.1:15021")
	testenv.WaitFor(t, "node2 ready", 10*time.Second, func() bool { return strings.HasSuffix(c.readiness("node2"), " 200") })

	// The state now puts pod "other" in a namespace path that does not exist yet.
	other := c.lab.Pod("other")
	realNetns := other.Netns
	late := realNetns + "-late"
	t.Cleanup(func() {
		_ = exec.Command("umount", late).Run()
		_ = os.Remove(late)
	})
	other.Netns = late
	c.writeState(nil)
	uid := other.Namespace + "/" + other.Name
	testenv.WaitFor(t, "the failed enrollment of "+uid, 10*time.Second, func() bool {
		return anyLine(c.logLines("node2"), map[string]string{"msg": "enroll failed: the pod's traffic is refused until it succeeds", "pod": uid})
	})
	if r := c.readiness("node2"); !strings.HasSuffix(r, " 503") || !strings.Contains(r, uid) {
		t.Fatalf("readiness while %s cannot enroll: %q, want 503 naming the pod", uid, r)
	}
	if out, err := c.curl("web", c.url("other")); err == nil {
		t.Fatalf("web -> other while other is not enrolled: %q, want refused", out)
	}

	// The namespace appears at that path, with no change of the state.
	failedAt := len(c.logLines("node2"))
	if err := os.WriteFile(late, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "--bind", realNetns, late).CombinedOutput(); err != nil {
		t.Fatalf("bind %s at %s: %v: %s", realNetns, late, err, out)
	}
	start := time.Now()
	testenv.WaitFor(t, uid+" enrolled by a retry", 40*time.Second, func() bool {
		lines := c.logLines("node2")
		return len(lines) > failedAt && anyLine(lines[failedAt:], map[string]string{"msg": "pod enrolled", "pod": uid})
	})
	t.Logf("enrolled %v after its namespace appeared", time.Since(start).Round(time.Millisecond))
	testenv.WaitFor(t, "node2 ready again", 5*time.Second, func() bool { return strings.HasSuffix(c.readiness("node2"), " 200") })
	if out, err := c.curl("web", c.url("other")); err != nil || !strings.Contains(out, "hello from other") {
		t.Fatalf("web -> other after the retry: %q, %v", out, err)
	}
}
