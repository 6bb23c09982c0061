// Package scale measures one node's agent against a cluster of thousands of pods: a real
// kube-apiserver and etcd (test/k8s) filled with N pods, M services with their EndpointSlices
// and P AuthorizationPolicies, one real amesh-agent (--kube) on a lab node, then churn (pods
// replaced at R per second, as a rolling deployment does). It reports the agent's memory, its
// CPU per watch event, how long an API change takes to be enforced on real traffic, and how many
// times the agent rebuilt its whole state. `make bench-scale` runs it (BenchmarkScale);
// TestScaleRuns runs a small one in `make test`.
//
// It is a developer's benchmark, not part of `ameshctl bench`: it floods an API server it
// starts itself, from binaries the Makefile builds.
package scale

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/amesh-dev/amesh/test/k8s"
	"github.com/amesh-dev/amesh/test/lab"
)

// Config says what to run.
type Config struct {
	// Agent is the amesh-agent binary.
	Agent string
	// AgentArgs are flags added to the agent's command line (e.g. --state-debounce=100ms), the
	// same for every size; the report names them.
	AgentArgs []string
	// Watcher, when set, is bench/scale/watcher's binary: the run then measures, beside the
	// agent and in the same churn-alone window, what a stock client-go informer and the bare
	// watch streams spend per event (Result's Informer* and Stream*).
	Watcher string
	// CRD is deploy/crd.yaml (the AuthorizationPolicy CRD the agent needs).
	CRD string
	// Sizes are the clusters to build, one after the other, each on a fresh API server.
	Sizes []Size
	// Churn are the replacement rates, pods per second, run one after the other on each size.
	Churn []int
	// Duration of each churn rate; 20 s when zero.
	Duration time.Duration
	// OutDir receives scale.json and scale.md; nothing written when empty.
	OutDir string
	// ProfileDir, when set, receives the agent's pprof heap profiles after its first sync and after
	// each churn rate, and a CPU profile of each churn-alone window (heap-<pods>.pb.gz,
	// heap-<pods>-after-<rate>.pb.gz, cpu-<pods>-<rate>.pb.gz), to see
	// where a pod's bytes and an event's microseconds go. The profiler's own cost is in that
	// window's CPU figure, so a profiled run's CPU per event reads slightly high.
	ProfileDir string
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

// Size is one cluster: pods spread over nodes of 100 and namespaces of 100, services selecting
// them evenly, policies on the first services.
type Size struct {
	Pods, Services, Policies int
}

// Result is one size at one churn rate.
type Result struct {
	Pods       int `json:"pods"`
	Services   int `json:"services"`
	Policies   int `json:"policies"`
	Namespaces int `json:"namespaces"`
	Nodes      int `json:"nodes"`
	// SyncSeconds: agent started → ready (caches synced, first state applied).
	SyncSeconds float64 `json:"sync_seconds"`
	// RSSMiB and HeapMiB (Go heap in use) of the agent, settled, before this churn rate.
	RSSMiB  float64 `json:"rss_mib"`
	HeapMiB float64 `json:"heap_mib"`
	// BaseRSSMiB: an agent with the probe's 2 pods only; BytesPerPod: the growth over it, per
	// pod of the cluster.
	BaseRSSMiB  float64 `json:"base_rss_mib"`
	BytesPerPod float64 `json:"bytes_per_pod"`
	// Churn offered (pods replaced per second), Replaced achieved, Events the API server sent
	// the agent's watches for them (eventsPerReplacement each), over both windows: Seconds of churn alone (CPU), then as long
	// with the probe (enforcement).
	Churn    int     `json:"churn"`
	Replaced int     `json:"replaced"`
	Events   int     `json:"events"`
	Seconds  float64 `json:"seconds"`
	IdleVCPU float64 `json:"idle_vcpu"`
	// ChurnVCPU: the agent's CPU during churn alone; MicrosPerEvent: that, less the idle rate,
	// per event of that window.
	ChurnVCPU      float64 `json:"churn_vcpu"`
	MicrosPerEvent float64 `json:"micros_per_event"`
	// InformerMicrosPerEvent and StreamMicrosPerEvent: the same for the peers of
	// Config.Watcher in the same window (stock informers on the agent's four resources with
	// handlers that only count; the four watch streams read and dropped); InformerEvents: the
	// handler calls the informer peer counted from the window's start until it stopped, ~1 s
	// after the window; StreamBytes: what the stream peer read in that time; WindowEvents: the
	// events of the churn-alone window, which every per-event figure divides by. Zero without
	// Config.Watcher.
	InformerMicrosPerEvent float64 `json:"informer_micros_per_event,omitempty"`
	StreamMicrosPerEvent   float64 `json:"stream_micros_per_event,omitempty"`
	InformerEvents         int64   `json:"informer_events,omitempty"`
	StreamBytes            int64   `json:"stream_bytes,omitempty"`
	WindowEvents           int     `json:"window_events"`
	RSSAfterMiB            float64 `json:"rss_after_mib"`
	// Policy*: a DENY policy created (or deleted) → the pair's next connection refused (or
	// served); Endpoint*: a pod added to (or removed from) a service's EndpointSlice → a
	// connection to the service's VIP served by it (or refused). Milliseconds, from before the
	// API call to the first connection that shows the change.
	PolicyP50   float64 `json:"policy_p50_ms"`
	PolicyP99   float64 `json:"policy_p99_ms"`
	EndpointP50 float64 `json:"endpoint_p50_ms"`
	EndpointP99 float64 `json:"endpoint_p99_ms"`
	Samples     int     `json:"samples"`
	// Timeouts: changes not seen enforced within probeLimit (counted, left out of the
	// percentiles).
	Timeouts int `json:"timeouts"`
	// FullBuilds and Incremental: state builds the agent made from every object it caches, and
	// from one change, during this churn rate.
	FullBuilds  uint64 `json:"full_builds"`
	Incremental uint64 `json:"incremental_builds"`
}

// Run builds each size in turn and measures it at each churn rate.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Duration = cmp.Or(cfg.Duration, 20*time.Second)
	if cfg.Agent == "" || cfg.CRD == "" {
		return nil, errors.New("scale: Config needs Agent and CRD")
	}
	bins, err := k8s.EnsureBinaries(ctx)
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	l, err := lab.New(ctx, lab.Config{Nodes: []lab.NodeSpec{
		{Name: "node1", Pods: []lab.PodSpec{
			{Name: "a", Namespace: probeNS, ServiceAccount: "client", Labels: map[string]string{"app": "client"}},
			{Name: "b", Namespace: probeNS, ServiceAccount: "server", Labels: map[string]string{"app": probeTarget}},
		}},
		{Name: "cp"},
	}})
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	defer func() {
		exec.Command(cfg.Agent, "--uninstall", "--pin-dir", l.Node("node1").PinDir).Run()
		l.Close()
	}()
	if out, err := l.Command(ctx, l.Node("cp").Netns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("scale: lo up: %v %s", err, out)
	}
	ln, err := l.Pod("b").Listen(":" + lab.EchoPort)
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	defer ln.Close()
	go lab.Echo(ln, nil)

	var out []Result
	for _, size := range cfg.Sizes {
		rs, err := runSize(ctx, cfg, l, bins, size)
		out = append(out, rs...)
		if err != nil {
			return out, err
		}
	}
	if cfg.OutDir != "" {
		if err := write(cfg.OutDir, cfg.Duration, cfg.AgentArgs, out); err != nil {
			return out, err
		}
	}
	return out, nil
}

// runSize measures one size: a fresh control plane, the cluster, the agent, then each churn rate.
func runSize(ctx context.Context, cfg Config, l *lab.Lab, bins k8s.Binaries, size Size) ([]Result, error) {
	log := cfg.Logger.With("pods", size.Pods, "services", size.Services)
	cpNode := l.Node("cp")
	dir, err := os.MkdirTemp(l.Dir, "size-")
	if err != nil {
		return nil, err
	}
	cp, err := k8s.Start(ctx, k8s.Config{Netns: cpNode.Netns, BindIP: cpNode.IP.String(), Authorization: k8s.AuthorizationAlwaysAllow, Binaries: bins, Dir: dir})
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	defer cp.Stop()
	if out, err := cp.Kubectl(ctx, "", "apply", "-f", cfg.CRD); err != nil {
		return nil, fmt.Errorf("scale: apply %s: %v: %s", cfg.CRD, err, out)
	}
	if out, err := cp.Kubectl(ctx, "", "wait", "--for=condition=Established", "--timeout=30s", "crd/authorizationpolicies.security.amesh.io"); err != nil {
		return nil, fmt.Errorf("scale: CRD: %v: %s", err, out)
	}
	rc := cp.RESTConfig("")
	rc.QPS, rc.Burst = 5000, 5000 // the harness writes thousands of objects; the server is ours
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	c := newCluster(cs, dyn, l, size)
	if err := c.probeObjects(ctx); err != nil {
		return nil, err
	}
	// The agent's memory with the probe's pods only: what the cluster's pods add is measured
	// against it.
	base, err := startAgent(ctx, l, cp, cfg.Agent, dir, cfg.AgentArgs...)
	if err != nil {
		return nil, err
	}
	baseRSS := lab.SettledRSS([]int{base.pid()})[0]
	base.stop()

	start := time.Now()
	if err := c.populate(ctx); err != nil {
		return nil, err
	}
	log.Info("cluster populated", "seconds", time.Since(start).Seconds())
	ag, err := startAgent(ctx, l, cp, cfg.Agent, dir, cfg.AgentArgs...)
	if err != nil {
		return nil, err
	}
	defer ag.stop()
	p := &prober{c: c, from: l.Pod("a"), to: l.Pod("b")}
	if err := p.ready(ctx); err != nil {
		return nil, fmt.Errorf("scale: %w (agent log %s)", err, ag.logPath)
	}
	var out []Result
	for _, rate := range cfg.Churn {
		r := Result{
			Pods: size.Pods, Services: size.Services, Policies: size.Policies,
			Namespaces: c.namespaces, Nodes: c.nodes, Churn: rate, SyncSeconds: ag.syncSeconds,
		}
		r.RSSMiB, r.BaseRSSMiB = lab.SettledRSS([]int{ag.pid()})[0], baseRSS
		r.HeapMiB = ag.heapMiB(ctx)
		if cfg.ProfileDir != "" && rate == cfg.Churn[0] {
			if err := ag.profile(ctx, "/debug/pprof/heap", filepath.Join(cfg.ProfileDir, fmt.Sprintf("heap-%d.pb.gz", size.Pods))); err != nil {
				return out, err
			}
		}
		if size.Pods > 0 {
			r.BytesPerPod = (r.RSSMiB - baseRSS) * (1 << 20) / float64(size.Pods)
		}
		var peers []*peer
		if cfg.Watcher != "" {
			if peers, err = startPeers(ctx, l, cfg.Watcher, ag.kubeconfig, dir, rate); err != nil {
				return out, err
			}
		}
		pids := []int{ag.pid()}
		for _, pe := range peers {
			pids = append(pids, pe.pid())
		}
		m := startMeter(pids)
		time.Sleep(3 * time.Second)
		idle, _ := m.vcpu()
		r.IdleVCPU = idle[0]

		// CPU first, with churn alone (the probe's connections would be the agent's work too),
		// then enforcement under the same churn.
		b0 := ag.builds(ctx)
		prof := make(chan error, 1)
		if cfg.ProfileDir != "" {
			go func() {
				path := fmt.Sprintf("/debug/pprof/profile?seconds=%d", max(1, int(cfg.Duration.Seconds())-1))
				prof <- ag.profile(ctx, path, filepath.Join(cfg.ProfileDir, fmt.Sprintf("cpu-%d-%d.pb.gz", size.Pods, rate)))
			}()
		} else {
			prof <- nil
		}
		m = startMeter(pids)
		_, err := c.churn(ctx, rate, cfg.Duration, nil, &r)
		busy, seconds := m.vcpu()
		r.Seconds, r.ChurnVCPU = seconds, busy[0]
		events := r.Events
		r.WindowEvents = events
		perEvent := func(i int) float64 {
			if events == 0 {
				return 0
			}
			return max(0, busy[i]-idle[i]) * seconds / float64(events) * 1e6
		}
		r.MicrosPerEvent = perEvent(0)
		if perr := <-prof; perr != nil && err == nil {
			err = perr
		}
		if len(peers) > 0 {
			// Events still on their way when the window closed reach the peers before they stop.
			time.Sleep(time.Second)
			for i, pe := range peers {
				n, bytes, serr := pe.stop()
				err = errors.Join(err, serr)
				switch pe.mode {
				case "informer":
					r.InformerMicrosPerEvent, r.InformerEvents = perEvent(i+1), n
				case "stream":
					r.StreamMicrosPerEvent, r.StreamBytes = perEvent(i+1), bytes
				}
			}
		}
		if err != nil {
			return out, fmt.Errorf("scale: churn %d/s: %w (agent log %s)", rate, err, ag.logPath)
		}
		lat, err := c.churn(ctx, rate, cfg.Duration, p, &r)
		if err != nil {
			return out, fmt.Errorf("scale: churn %d/s: %w (agent log %s)", rate, err, ag.logPath)
		}
		b1 := ag.builds(ctx)
		r.FullBuilds, r.Incremental = b1.full-b0.full, b1.incremental-b0.incremental
		r.PolicyP50, r.PolicyP99 = percentile(lat.policy, 50), percentile(lat.policy, 99)
		r.EndpointP50, r.EndpointP99 = percentile(lat.endpoint, 50), percentile(lat.endpoint, 99)
		r.Samples = len(lat.policy) + len(lat.endpoint)
		r.RSSAfterMiB = lab.SettledRSS([]int{ag.pid()})[0]
		if cfg.ProfileDir != "" {
			if err := ag.profile(ctx, "/debug/pprof/heap", filepath.Join(cfg.ProfileDir, fmt.Sprintf("heap-%d-after-%d.pb.gz", size.Pods, rate))); err != nil {
				return out, err
			}
		}
		log.Info("churn measured", "rate", rate, "result", r)
		out = append(out, r)
	}
	return out, nil
}

// meter reads processes' CPU over a window.
type meter struct {
	pids  []int
	cpu   []float64
	start time.Time
}

func startMeter(pids []int) *meter {
	m := &meter{pids: pids, start: time.Now()}
	for _, pid := range pids {
		m.cpu = append(m.cpu, lab.CPUSeconds(pid))
	}
	return m
}

// vcpu returns each process's CPU since startMeter, in vCPUs, and the window's seconds.
func (m *meter) vcpu() ([]float64, float64) {
	secs := time.Since(m.start).Seconds()
	out := make([]float64, len(m.pids))
	for i, pid := range m.pids {
		out[i] = (lab.CPUSeconds(pid) - m.cpu[i]) / secs
	}
	return out, secs
}
