package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/test/lab"
)

// updateGolden rewrites testdata/ameshctl/*.golden from a run (go test -run TestAmeshctl
// ./test/e2e -update-golden); never edit them by hand.
var updateGolden = flag.Bool("update-golden", false, "rewrite the ameshctl golden files from this run")

// TestAmeshctl: each ameshctl command against node1's running agent prints what its golden file
// holds (certificate serials and dates, which differ per run, masked), -o json parses, and an
// unreachable admin API is a clear error.
func TestAmeshctl(t *testing.T) {
	c := newCluster(t, "--admin-addr", adminAddr)
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := c.lab.Command(ctx, c.lab.Node("node1").Netns, ctlBin, args...).CombinedOutput()
		return string(out), err
	}
	masks := []struct {
		re   *regexp.Regexp
		with string
	}{
		{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`), "<time>"},
		{regexp.MustCompile(`(Available\s+)\d+`), "${1}<serial>"},
	}
	tests := []struct {
		golden string
		args   []string
	}{
		{"workloads", []string{"workloads"}},
		{"services", []string{"services"}},
		{"policies", []string{"policies"}},
		{"certificates", []string{"certificates"}},
		{"connections", []string{"connections"}},
		{"log-debug", []string{"log", "--level", "debug"}},
		{"version", []string{"version"}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			out, err := run(tt.args...)
			if err != nil {
				t.Fatalf("ameshctl %s: %v\n%s", strings.Join(tt.args, " "), err, out)
			}
			for _, m := range masks {
				out = m.re.ReplaceAllString(out, m.with)
			}
			if tt.golden == "certificates" {
				// Serials differ in length, and with them the columns' alignment.
				out = regexp.MustCompile(` {2,}`).ReplaceAllString(out, "  ")
			}
			path := filepath.Join("testdata", "ameshctl", tt.golden+".golden")
			if *updateGolden {
				if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update-golden to make it)", err)
			}
			if out != string(want) {
				t.Errorf("ameshctl %s:\n%s\nwant (%s):\n%s", strings.Join(tt.args, " "), out, path, want)
			}
		})
	}
	// policy check says what the agent enforces: each case is checked, then tried for real.
	for _, tc := range []struct{ from, to string }{{"web", "api1"}, {"nosy", "api1"}, {"other", "api1"}, {"web", "nosy"}, {"nosy", "web"}} {
		id := "spiffe://cluster.local/ns/" + c.lab.Pod(tc.from).Spec.Namespace + "/sa/" + c.lab.Pod(tc.from).Spec.ServiceAccount
		to := net.JoinHostPort(c.lab.Pod(tc.to).IP.String(), lab.EchoPort)
		out, err := run("policy", "check", "--from", id, "--to", to, "-o", "json")
		var pc struct {
			Allowed bool   `json:"allowed"`
			Policy  string `json:"policy"`
		}
		if err != nil || json.Unmarshal([]byte(out), &pc) != nil {
			t.Errorf("policy check %s -> %s: %v\n%s", tc.from, tc.to, err, out)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		conn, err := c.lab.Pod(tc.from).Dial(ctx, to)
		cancel()
		if err == nil {
			err = roundTrip(conn)
			conn.Close()
		}
		if enforced := err == nil; enforced != pc.Allowed {
			t.Errorf("policy check %s -> %s says allowed=%v (policy %q), the agent enforced allowed=%v (%v)", tc.from, tc.to, pc.Allowed, pc.Policy, enforced, err)
		}
	}
	if out, err := run("policy", "check", "--from", "spiffe://cluster.local/ns/shop/sa/nosy", "--to", net.JoinHostPort(c.lab.Pod("api1").IP.String(), "9000")); err != nil || !strings.HasPrefix(out, "DENY ") {
		t.Errorf("policy check nosy -> api1: %v\n%s", err, out)
	}

	out, err := run("workloads", "-o", "json")
	var ws []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &ws) != nil || len(ws) != len(c.lab.Pods()) {
		t.Errorf("ameshctl workloads -o json: %v, %d workloads:\n%s", err, len(ws), out)
	}
	if out, err := run("policies", "-o", "yaml"); err != nil || !strings.Contains(out, "name: api-allow-web") {
		t.Errorf("ameshctl policies -o yaml: %v\n%s", err, out)
	}
	if out, err := run("--admin-addr", "127.0.0.1:1", "workloads"); err == nil || !strings.Contains(out, "cannot reach the agent's admin API at 127.0.0.1:1") {
		t.Errorf("ameshctl with no agent: %v\n%s", err, out)
	}
}
