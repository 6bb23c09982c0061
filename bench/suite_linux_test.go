package bench

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
)

// TestMain lets the suite re-execute this test binary as its load client inside a pod's netns.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == "rr" || os.Args[1] == "cps" || os.Args[1] == "http" || os.Args[1] == "serve") {
		os.Exit(Main(nil, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// buildBinary builds cmd/<name> into dir and returns its path.
func buildBinary(t *testing.T, dir, name string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/amesh-dev/amesh/cmd/"+name).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	return bin
}

// TestSuiteRuns is a short run of the whole suite (one round, short loads, no peers): every
// scenario yields non-zero figures of every kind, and the three outputs are written.
func TestSuiteRuns(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("-short: the suite's smoke run belongs to the full (non-race) run")
	}
	dir := t.TempDir()
	agent, waypoint := buildBinary(t, dir, "amesh-agent"), buildBinary(t, dir, "amesh-waypoint")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out := filepath.Join(dir, "out")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// No ghostunnel here (and stunnel4 only where installed): the peers are what `make bench` adds.
	if err := run(ctx, []string{self}, agent, waypoint, out, 300*time.Millisecond, 1, filepath.Join(dir, "no-ghostunnel")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var saved struct{ Results []Result }
	if err := json.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	got := map[string]Result{}
	for _, r := range saved.Results {
		got[r.Scenario] = r
	}
	md, _ := os.ReadFile(filepath.Join(out, "results.md"))
	for _, name := range []string{
		"direct same-node (no mesh)", "direct cross-node (no mesh)",
		"amesh same-node (kernel)", "amesh same-node (splice)", "amesh same-node (hbone)", "amesh cross-node (HBONE)",
		"amesh cross-node (HBONE, scraped 1/s)",
		httpDirect, httpNoWaypoint, httpWaypoint,
	} {
		r, ok := got[name]
		if !ok {
			t.Errorf("no result for %q (have %v)", name, saved.Results)
			continue
		}
		if r.RR1000["p50"] <= 0 || r.RR1000["p99.9"] < r.RR1000["p50"] || r.RRMax["p50"] <= 0 || r.RRMaxQPS <= 0 {
			t.Errorf("%s: incomplete latency figures %+v", name, r)
		}
		// The HTTP scenarios have no throughput or CPS (the waypoint carries HTTP only).
		if r.HTTP != strings.Contains(name, "HTTP") || (!r.HTTP && (r.Gbps1 <= 0 || r.Gbps4 <= 0 || r.CPS <= 0)) {
			t.Errorf("%s: incomplete figures %+v", name, r)
		}
		if strings.HasPrefix(name, "amesh") && r.AgentRSSMiB <= 0 {
			t.Errorf("%s: no agent RSS", name)
		}
		if !strings.Contains(string(md), name) {
			t.Errorf("results.md lacks %q", name)
		}
	}
	if r := got[httpWaypoint]; r.Base != httpNoWaypoint {
		t.Errorf("%s compared with %q, want %q", httpWaypoint, r.Base, httpNoWaypoint)
	}
	if want := "- " + httpWaypoint + " vs " + httpNoWaypoint + ": p50 "; !strings.Contains(string(md), want) || strings.Contains(string(md), want+"–") {
		t.Errorf("results.md has no ratio of the waypoint to no waypoint (%q):\n%s", want, md)
	}
	if r := got["amesh cross-node (HBONE, scraped 1/s)"]; r.Scrapes == 0 {
		t.Error("the scraped scenario scraped nothing")
	}
	if st, err := os.Stat(filepath.Join(out, "results.png")); err != nil || st.Size() < 1000 {
		t.Errorf("results.png: %v", err)
	}
}

// TestCostRuns is the short "cost per node" run of make test: 3 pods a node at 300 RPS, amesh
// only (no ghostunnel here: the sidecar half says it is left out). The figures must be the
// agents' (RunCost checks their connection counters), and the three outputs written.
func TestCostRuns(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("-short: the cost run belongs to the full (non-race) run")
	}
	dir := t.TempDir()
	agent := buildBinary(t, dir, "amesh-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := filepath.Join(dir, "out")
	if err := RunCost(ctx, CostConfig{Agent: agent, Ghostunnel: filepath.Join(dir, "no-ghostunnel"), Pods: []int{3}, Rates: []int{300}, Duration: 500 * time.Millisecond, OutDir: out}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "cost.json"))
	if err != nil {
		t.Fatal(err)
	}
	var saved struct{ Results []CostResult }
	if err := json.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	if len(saved.Results) != 1 {
		t.Fatalf("results %+v, want the amesh row alone", saved.Results)
	}
	r := saved.Results[0]
	if r.Mode != "amesh" || r.Pods != 3 || r.Procs != 1 || r.RSSMiB <= 0 || r.P50 <= 0 || r.P99 < r.P50 || r.Done < 100 || r.Failed != 0 {
		t.Errorf("amesh row %+v", r)
	}
	// Each request crosses both agents, and each reads it, writes it on, reads the answer and
	// writes it back: fewer I/O system calls than that, and the counters were not the agents'.
	if r.IOPerReq < 8 || r.KernelPerReq > r.CPUPerReq || r.SwitchesPerReq <= 0 {
		t.Errorf("per request: %.1f I/O syscalls (want >= 8), %.1f of %.1f CPU µs in the kernel, %.1f context switches", r.IOPerReq, r.KernelPerReq, r.CPUPerReq, r.SwitchesPerReq)
	}
	for _, f := range []string{"cost.md", "cost.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestCurvesRuns is the short "cost curves" run of make test: every curve at small sizes,
// amesh and direct (no ghostunnel here). Each point must carry its figures: the memory point the
// agents' growth with connections open (so the connections went through them), the enrolment
// point the time until the agent pinned every pod.
func TestCurvesRuns(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("-short: the curves run belongs to the full (non-race) run")
	}
	dir := t.TempDir()
	agent := buildBinary(t, dir, "amesh-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := filepath.Join(dir, "out")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := CurvesConfig{Self: []string{self}, Agent: agent, Ghostunnel: filepath.Join(dir, "no-ghostunnel"), Conns: []int{1, 4}, Rates: []int{200, 0},
		Open: []int{50}, Pods: []int{3}, Duration: 300 * time.Millisecond, OutDir: out}
	if err := RunCurves(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "curves.json"))
	if err != nil {
		t.Fatal(err)
	}
	var saved struct{ Points []CurvePoint }
	if err := json.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, p := range saved.Points {
		count[p.Curve+"/"+p.Path]++
		switch p.Curve {
		case curveLatency, curveCPU:
			if p.P50 <= 0 || p.P99 < p.P50 || p.Achieved <= 0 || p.Failed != 0 {
				t.Errorf("point %+v", p)
			}
			if p.Path == pathAmesh && (p.VCPU <= 0 || p.VCPUPer1k <= 0) {
				t.Errorf("amesh point without the agents' CPU: %+v", p)
			}
		case curveMemory:
			// 50 streams, their sockets and relays: well over 100 KiB in both agents together.
			if p.Path != pathAmesh || p.RSSMiB <= 0 || p.GrowthMiB < 0.1 || p.KiBPerConn <= 0 {
				t.Errorf("memory point %+v", p)
			}
		case curveEnrolment:
			if p.Seconds <= 0 || p.RSSMiB <= 0 {
				t.Errorf("enrolment point %+v", p)
			}
		}
	}
	want := map[string]int{"latency/amesh": 2, "latency/direct": 2, "cpu/amesh": 2, "cpu/direct": 2, "memory/amesh": 1, "enrolment/amesh": 1}
	for k, n := range want {
		if count[k] != n {
			t.Errorf("%s: %d points, want %d (all: %v)", k, count[k], n, count)
		}
	}
	for _, f := range []string{"curves.md", "curves.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}
