package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/test/lab"
)

// CurvesConfig is the "cost curves" section: how amesh's cross-node cost grows with load, beside
// direct TCP and the best L4 mTLS peer (a ghostunnel pair) on the same path.
type CurvesConfig struct {
	Self       []string      // the command line that reaches Main again (its echo server runs in a pod)
	Agent      string        // amesh-agent binary
	Ghostunnel string        // ghostunnel binary; the peer's points are left out when absent
	Conns      []int         // latency curve: concurrent connections, e.g. 1, 10, 100, 1,000
	Rates      []int         // CPU curve: offered requests per second (0: as fast as they go)
	Open       []int         // memory curve: open idle connections, e.g. 1,000 and 10,000
	Pods       []int         // enrolment curve: pods on the node, e.g. 10, 100, 500
	Duration   time.Duration // of each load run
	OutDir     string        // curves.md, curves.json, curves.png
}

// Curve names, and the paths each is measured on.
const (
	curveLatency   = "latency"   // x: concurrent connections at curveLatencyRPS in total
	curveCPU       = "cpu"       // x: offered RPS (0: max) over curveCPUConns connections
	curveMemory    = "memory"    // x: open idle connections
	curveEnrolment = "enrolment" // x: pods on the node

	pathAmesh  = "amesh"
	pathDirect = "direct"
	pathGhost  = "ghostunnel pair"
)

// The latency curve's total rate (the suite's), the CPU curve's connections (enough to offer
// 10,000 RPS: one connection does about 5,000 here), and the memory curve's client pods (a
// source pod may hold at most tunnel.ServerConfig.MaxStreamsPerPeer streams on a node, so a
// node's 10,000 connections come from several pods, as they would).
const (
	curveLatencyRPS = 1000
	curveCPUConns   = 10
	curveClients    = 10
)

// CurvePoint is one point of one curve on one path.
type CurvePoint struct {
	Curve string `json:"curve"`
	Path  string `json:"path"`
	X     int    `json:"x"` // connections, offered RPS (0: max), open connections or pods
	// Latency and load (latency, cpu).
	P50      float64 `json:"p50_us,omitempty"`
	P99      float64 `json:"p99_us,omitempty"`
	Achieved float64 `json:"achieved_rps,omitempty"`
	Failed   int     `json:"failed,omitempty"`
	// The proxies' (both agents', or both ghostunnels') CPU over the run, and per 1,000 RPS.
	VCPU      float64 `json:"proxy_vcpu,omitempty"`
	VCPUPer1k float64 `json:"proxy_vcpu_per_1000rps,omitempty"`
	// Memory: the proxies' RSS with the connections open, its growth over the same proxies
	// with none open, and that growth per connection.
	RSSMiB     float64 `json:"proxy_rss_mib,omitempty"`
	GrowthMiB  float64 `json:"proxy_rss_growth_mib,omitempty"`
	KiBPerConn float64 `json:"kib_per_connection,omitempty"`
	// The same growth per connection in the source side's proxy (node1's agent, the client
	// ghostunnel) and in the destination side's.
	SourceKiB float64 `json:"source_proxy_kib_per_connection,omitempty"`
	DestKiB   float64 `json:"destination_proxy_kib_per_connection,omitempty"`
	// Enrolment: from the agent's start until every pod of its node was enrolled.
	Seconds float64 `json:"seconds,omitempty"`
}

// curvePath is one path the curves measure: who dials what, and whose CPU and memory count.
type curvePath struct {
	name    string
	clients []*lab.Pod // the pods that dial (the memory curve spreads over them; others use the first)
	addr    string     // as the clients dial it
	memAddr string     // the same for the memory curve (whose server is not this process)
	procs   []int      // the proxies' pids, source side first (none for direct)
}

// RunCurves builds a two-node lab (node1: meshed clients a0..a9 and the plain c1; node2: the
// meshed server b and the plain s2), runs the latency, CPU and memory curves on amesh (a* → b
// through both agents), direct (c1 → s2) and a ghostunnel pair (c1 → s2 through a client proxy in
// c1 and a server proxy in s2), then the enrolment curve in a lab per pod count, and writes
// curves.md, curves.json and curves.png.
func RunCurves(ctx context.Context, cfg CurvesConfig) error {
	var pts []CurvePoint
	if len(cfg.Conns)+len(cfg.Rates)+len(cfg.Open) > 0 {
		p, err := curvesOnPaths(ctx, cfg)
		if err != nil {
			return err
		}
		pts = append(pts, p...)
	}
	for _, n := range cfg.Pods {
		p, err := enrolmentPoint(ctx, cfg.Agent, n)
		if err != nil {
			return fmt.Errorf("cost curves, enrolment of %d pods: %w", n, err)
		}
		pts = append(pts, p)
		fmt.Fprintf(os.Stderr, "bench: cost curves: enrolment of %d pods done\n", n)
	}
	return writeCurves(cfg.OutDir, cfg.Duration, pts)
}

// fileLimit is the most descriptors a process of this machine may hold (the hard limit, which
// Go raises the soft one to at start; raising the hard one needs CAP_SYS_RESOURCE, which the
// lab does not assume).
func fileLimit() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Max > 1<<30 {
		return 1 << 30
	}
	return int(lim.Max)
}

// The memory curve's echo server on amesh's path, a process of its own in b: this one holds
// the clients' ends, and would run out of descriptors holding both ends of 10,000 connections.
const curveEchoPort = "9100"

func curvesOnPaths(ctx context.Context, cfg CurvesConfig) ([]CurvePoint, error) {
	spec := lab.Config{Nodes: []lab.NodeSpec{
		{Name: "node1", Pods: []lab.PodSpec{{Name: "c1", Namespace: "plain", Mode: "none"}}},
		{Name: "node2", Pods: []lab.PodSpec{
			{Name: "b", Namespace: "curves", ServiceAccount: "server"},
			{Name: "s2", Namespace: "plain", Mode: "none"},
		}},
	}}
	for i := range curveClients {
		spec.Nodes[0].Pods = append(spec.Nodes[0].Pods, lab.PodSpec{Name: fmt.Sprintf("a%d", i), Namespace: "curves", ServiceAccount: "client"})
	}
	l, err := lab.New(ctx, spec)
	if err != nil {
		return nil, err
	}
	defer closeLab(l, cfg.Agent)
	stopEchoes, err := serveEchoes(l)
	if err != nil {
		return nil, err
	}
	defer stopEchoes()
	s := &suite{lab: l, agentBin: cfg.Agent, agents: map[string]*lab.Proc{}}
	var ca *identity.CA
	s.state, s.caDir, ca, err = writeLabConfig(l, "")
	if err != nil {
		return nil, err
	}
	defer s.stopAgents()
	if err := s.startCurveAgents(ctx); err != nil {
		return nil, err
	}
	agentPids := []int{s.agents["node1"].Cmd.Process.Pid, s.agents["node2"].Cmd.Process.Pid}
	var clients []*lab.Pod
	for i := range curveClients {
		clients = append(clients, l.Pod(fmt.Sprintf("a%d", i)))
	}
	c1, s2 := l.Pod("c1"), l.Pod("s2")
	paths := []curvePath{
		{name: pathAmesh, clients: clients, addr: net.JoinHostPort(l.Pod("b").IP.String(), lab.EchoPort),
			memAddr: net.JoinHostPort(l.Pod("b").IP.String(), curveEchoPort), procs: agentPids},
		{name: pathDirect, clients: []*lab.Pod{c1}, addr: net.JoinHostPort(s2.IP.String(), lab.EchoPort)},
	}
	if _, err := os.Stat(cfg.Ghostunnel); err == nil {
		peers, stop, err := startPeers(ctx, l, ca, cfg.Ghostunnel)
		defer stop()
		if err != nil {
			return nil, err
		}
		for _, p := range peers {
			if p.name == pathGhost {
				// Its server proxy targets this process's echo: the pair is left out of
				// the memory curve's counts that would need more descriptors than that takes.
				paths = append(paths, curvePath{name: pathGhost, clients: []*lab.Pod{c1}, addr: p.rrAddr, memAddr: p.rrAddr, procs: p.pids})
			}
		}
	} else {
		fmt.Fprintf(os.Stderr, "bench: cost curves: no ghostunnel at %s (make peers builds it): the peer's points are left out\n", cfg.Ghostunnel)
	}
	var pts []CurvePoint
	add := func(p CurvePoint, err error) error {
		if err != nil {
			return fmt.Errorf("cost curves, %s on %s at %d: %w", p.Curve, p.Path, p.X, err)
		}
		pts = append(pts, p)
		return nil
	}
	// Round by round, every path at each x before the next x, so a noisy moment of the machine
	// touches the paths alike.
	for _, n := range cfg.Conns {
		for _, p := range paths {
			if err := add(loadPoint(ctx, curveLatency, p, n, curveLatencyRPS, cfg.Duration)); err != nil {
				return nil, err
			}
		}
	}
	for _, rate := range cfg.Rates {
		for _, p := range paths {
			if err := add(loadPoint(ctx, curveCPU, p, curveCPUConns, rate, cfg.Duration)); err != nil {
				return nil, err
			}
		}
	}
	if len(cfg.Open) > 0 {
		b := l.Pod("b")
		echo, err := l.Start(ctx, b.Netns, filepath.Join(l.Dir, "b-echo.log"), cfg.Self[0], append(slices.Clone(cfg.Self[1:]), "serve", "-addr", ":"+curveEchoPort)...)
		if err != nil {
			return nil, err
		}
		defer echo.Kill()
		if err := waitEcho(ctx, l.Pod("a0"), net.JoinHostPort(b.IP.String(), curveEchoPort), 10*time.Second); err != nil {
			return nil, fmt.Errorf("the memory curve's echo server in b: %w", err)
		}
		limit := fileLimit()
		for _, n := range cfg.Open {
			for _, p := range paths {
				if p.name == pathDirect {
					continue // no proxy to weigh
				}
				// A ghostunnel client holds both ends of every connection in one process (and
				// this one both ends of its echo's).
				if need := 2*n + 256; p.name == pathGhost && need > limit {
					fmt.Fprintf(os.Stderr, "bench: cost curves: %s left out at %d open connections: its client proxy would hold %d descriptors, over this machine's limit of %d\n", p.name, n, need, limit)
					continue
				}
				p.addr = p.memAddr
				if err := add(memoryPoint(ctx, p, n)); err != nil {
					return nil, fmt.Errorf("%w%s", err, agentLogs(l))
				}
			}
		}
	}
	fmt.Fprintln(os.Stderr, "bench: cost curves: latency, CPU and memory done")
	return pts, nil
}

// startCurveAgents starts both agents with the defaults a user has (same-node auto; cross-node
// is what the curves measure), access log off as in the cost section, and waits until every
// meshed pod is enrolled and a0 reaches b.
func (s *suite) startCurveAgents(ctx context.Context) error {
	for _, n := range s.lab.Nodes {
		p, err := startAgent(ctx, s.lab, n, s.agentBin, s.state, s.caDir, "--access-log", "off", "--metrics-addr", metricsAddr)
		if err != nil {
			return err
		}
		s.agents[n.Name] = p
		if err := waitPinned(n, meshedPods(n), 60*time.Second); err != nil {
			return err
		}
	}
	return waitEcho(ctx, s.lab.Pod("a0"), net.JoinHostPort(s.lab.Pod("b").IP.String(), lab.EchoPort), 30*time.Second)
}

// agentLogs is the end of each node's agent log, for an error: the lab's directory goes with it.
func agentLogs(l *lab.Lab) string {
	var b strings.Builder
	for _, n := range l.Nodes {
		if log, err := os.ReadFile(filepath.Join(l.Dir, n.Name+"-agent.log")); err == nil {
			fmt.Fprintf(&b, "\n%s's agent log:\n%s", n.Name, tailOf(string(log), 15))
		}
	}
	return b.String()
}

// loadPoint opens conns connections on the path (from its first client), offers rate requests
// per second over them (0: each as fast as it goes) for d, and reports latency, the rate
// achieved and the proxies' CPU.
func loadPoint(ctx context.Context, curve string, p curvePath, conns, rate int, d time.Duration) (CurvePoint, error) {
	pt := CurvePoint{Curve: curve, Path: p.name, X: rate}
	if curve == curveLatency {
		pt.X = conns
	}
	cs, err := openConns(ctx, p.clients[:1], p.addr, conns)
	defer closeAll(cs)
	if err != nil {
		return pt, err
	}
	cpu0 := pidsCPU(p.procs)
	res := offer(ctx, cs, rate, d)
	pt.VCPU = (pidsCPU(p.procs) - cpu0) / res.elapsed.Seconds()
	pt.Failed = res.failed
	if len(res.lat) == 0 {
		return pt, errors.New("no request completed")
	}
	pt.P50, pt.P99 = res.lat[len(res.lat)/2], res.lat[min(len(res.lat)-1, len(res.lat)*99/100)]
	pt.Achieved = float64(len(res.lat)) / res.elapsed.Seconds()
	if len(p.procs) > 0 {
		pt.VCPUPer1k = pt.VCPU / pt.Achieved * 1000
	}
	if res.failed > 0 {
		return pt, fmt.Errorf("%d connections failed", res.failed)
	}
	return pt, nil
}

// memoryPoint weighs the path's proxies with no connection of the curve open, then with n
// open and idle (each spread over the path's clients and carried one echo end to end), and
// reports the growth per connection.
func memoryPoint(ctx context.Context, p curvePath, n int) (CurvePoint, error) {
	pt := CurvePoint{Curve: curveMemory, Path: p.name, X: n}
	before := lab.SettledRSS(p.procs)
	cs, err := openConns(ctx, p.clients, p.addr, n)
	defer func() {
		closeAll(cs)
		// Let the proxies see the closes before the next point weighs them.
		time.Sleep(2 * time.Second)
	}()
	if err != nil {
		return pt, err
	}
	after := lab.SettledRSS(p.procs)
	for i := range after {
		pt.RSSMiB += after[i]
		pt.GrowthMiB += after[i] - before[i]
	}
	pt.KiBPerConn = pt.GrowthMiB * 1024 / float64(n)
	pt.SourceKiB = (after[0] - before[0]) * 1024 / float64(n)
	pt.DestKiB = (after[1] - before[1]) * 1024 / float64(n)
	return pt, nil
}

// openConns dials n connections to addr, spread round-robin over the pods, 32 at a time, each
// carrying one 1 KiB echo before it counts as open (so it is set up end to end, as fortio warms
// a connection). On error it returns what it opened, for the caller to close.
func openConns(ctx context.Context, from []*lab.Pod, addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := from[i%len(from)].Dial(ctx, addr)
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err = c.Write(make([]byte, 1024)); err == nil {
				_, err = io.ReadFull(c, make([]byte, 1024))
			}
			c.SetDeadline(time.Time{})
			errs[i] = err
		})
	}
	wg.Wait()
	open := slices.DeleteFunc(conns, func(c net.Conn) bool { return c == nil })
	if err := errors.Join(errs...); err != nil {
		failed := 0
		for _, e := range errs {
			if e != nil {
				failed++
			}
		}
		return open, fmt.Errorf("%d of %d connections to %s failed, first: %w", failed, n, addr, firstErr(errs))
	}
	return open, nil
}

func firstErr(errs []error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// loadResult is what offer measured: the latencies (µs, sorted), how long it ran, and how many
// connections failed (each stops at its first failure).
type loadResult struct {
	lat     []float64
	elapsed time.Duration
	failed  int
}

// offer sends 1 KiB echoes over conns for d: rate requests per second in total, each connection
// on its own fixed schedule and the schedules spread evenly over one interval, or with rate 0
// each connection as fast as its echoes come back. Every request is bounded by 5 s.
func offer(ctx context.Context, conns []net.Conn, rate int, d time.Duration) loadResult {
	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(len(conns)) / float64(rate))
	}
	start := time.Now()
	var mu sync.Mutex
	var res loadResult
	var wg sync.WaitGroup
	for i, conn := range conns {
		wg.Go(func() {
			msg, buf := make([]byte, 1024), make([]byte, 1024)
			next := start.Add(interval * time.Duration(i) / time.Duration(len(conns)))
			var mine []float64
			failed := 0
			for next.Before(start.Add(d)) && ctx.Err() == nil {
				if interval > 0 {
					time.Sleep(time.Until(next))
				}
				t0 := time.Now()
				conn.SetDeadline(t0.Add(5 * time.Second))
				_, err := conn.Write(msg)
				if err == nil {
					_, err = io.ReadFull(conn, buf)
				}
				if err != nil {
					failed++
					break
				}
				mine = append(mine, float64(time.Since(t0).Microseconds()))
				if interval > 0 {
					next = next.Add(interval)
				} else {
					next = time.Now()
				}
			}
			mu.Lock()
			res.lat = append(res.lat, mine...)
			res.failed += failed
			mu.Unlock()
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	slices.Sort(res.lat)
	return res
}

// pidsCPU is the user+system CPU seconds the processes have used.
func pidsCPU(pids []int) float64 {
	total := 0.0
	for _, pid := range pids {
		total += lab.CPUSeconds(pid)
	}
	return total
}

// enrolmentPoint builds a one-node lab with n meshed pods, starts an agent on it and times how
// long until every pod is enrolled (its netns in the agent's pinned maps).
func enrolmentPoint(ctx context.Context, agent string, n int) (CurvePoint, error) {
	pt := CurvePoint{Curve: curveEnrolment, Path: pathAmesh, X: n}
	spec := lab.Config{Nodes: []lab.NodeSpec{{Name: "node1"}}}
	for i := range n {
		spec.Nodes[0].Pods = append(spec.Nodes[0].Pods, lab.PodSpec{Name: fmt.Sprintf("e%03d", i), Namespace: "enrol", ServiceAccount: fmt.Sprintf("sa%03d", i%50)})
	}
	l, err := lab.New(ctx, spec)
	if err != nil {
		return pt, err
	}
	defer closeLab(l, agent)
	s := &suite{lab: l, agentBin: agent, agents: map[string]*lab.Proc{}}
	if s.state, s.caDir, _, err = writeLabConfig(l, ""); err != nil {
		return pt, err
	}
	defer s.stopAgents()
	node := l.Nodes[0]
	start := time.Now()
	p, err := startAgent(ctx, l, node, agent, s.state, s.caDir, "--access-log", "off")
	if err != nil {
		return pt, err
	}
	s.agents[node.Name] = p
	if err := waitPinned(node, n, 2*time.Minute); err != nil {
		return pt, fmt.Errorf("%w (log in %s)", err, l.Dir)
	}
	pt.Seconds = time.Since(start).Seconds()
	if m, err := lab.RSSMiB(p.Cmd.Process.Pid); err == nil {
		pt.RSSMiB = m
	}
	return pt, nil
}

// writeCurves writes curves.json, curves.md and curves.png, and prints the tables.
func writeCurves(outDir string, d time.Duration, pts []CurvePoint) error {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "duration": d.String(), "points": pts}, "", "  ")
	if err := os.WriteFile(filepath.Join(outDir, "curves.json"), js, 0o644); err != nil {
		return err
	}
	md := curvesMarkdown(d, pts)
	if err := os.WriteFile(filepath.Join(outDir, "curves.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	return writeCurvesPlot(filepath.Join(outDir, "curves.png"), pts)
}

func curvesMarkdown(d time.Duration, pts []CurvePoint) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Cost curves, %s, one round, each load %v, 1 KiB echoes across two lab nodes: amesh (pods a* on node1 → b on node2 through both agents, HBONE), direct (c1 → s2, no mesh), %s (c1 → s2 through a ghostunnel client in c1 and server in s2: the best L4 mTLS peer of the suite). Proxy CPU and RSS are summed over both proxies (both agents, or both ghostunnels).\n\n", time.Now().UTC().Format("2006-01-02"), d, pathGhost)
	of := func(curve string) []CurvePoint {
		return slices.DeleteFunc(slices.Clone(pts), func(p CurvePoint) bool { return p.Curve != curve })
	}
	ratio := func(p CurvePoint, v func(CurvePoint) float64, path string) string {
		for _, q := range pts {
			if q.Curve == p.Curve && q.X == p.X && q.Path == path && v(q) > 0 && p.Path != path {
				return fmt.Sprintf("%.2f", v(p)/v(q))
			}
		}
		return "–"
	}
	p50 := func(p CurvePoint) float64 { return p.P50 }
	if rows := of(curveLatency); len(rows) > 0 {
		fmt.Fprintf(&b, "**Latency vs concurrent connections** (%d RPS in total, spread evenly)\n\n", curveLatencyRPS)
		b.WriteString("| connections | path | p50 µs | p99 µs | achieved RPS | p50 × direct | p50 × peer |\n|---:|---|---:|---:|---:|---:|---:|\n")
		for _, p := range rows {
			fmt.Fprintf(&b, "| %d | %s | %.0f | %.0f | %.0f | %s | %s |\n", p.X, p.Path, p.P50, p.P99, p.Achieved, ratio(p, p50, pathDirect), ratio(p, p50, pathGhost))
		}
		b.WriteString("\n")
	}
	if rows := of(curveCPU); len(rows) > 0 {
		fmt.Fprintf(&b, "**Proxy CPU vs offered load** (%d connections; \"max\": each as fast as its echoes return)\n\n", curveCPUConns)
		b.WriteString("| offered RPS | path | achieved RPS | p50 µs | p99 µs | proxy vCPU | vCPU / 1k RPS | vCPU/1k × peer |\n|---:|---|---:|---:|---:|---:|---:|---:|\n")
		per1k := func(p CurvePoint) float64 { return p.VCPUPer1k }
		for _, p := range rows {
			offered := "max"
			if p.X > 0 {
				offered = fmt.Sprint(p.X)
			}
			cpu, per, vsPeer := "–", "–", "–"
			if p.Path != pathDirect {
				cpu, per, vsPeer = fmt.Sprintf("%.3f", p.VCPU), fmt.Sprintf("%.3f", p.VCPUPer1k), ratio(p, per1k, pathGhost)
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.0f | %.0f | %s | %s | %s |\n", offered, p.Path, p.Achieved, p.P50, p.P99, cpu, per, vsPeer)
		}
		b.WriteString("\n")
	}
	if rows := of(curveMemory); len(rows) > 0 {
		b.WriteString("**Proxy memory vs open connections** (idle, each carried one echo; growth over the same proxies with none of them open)\n\n")
		b.WriteString("| open connections | path | proxy RSS MiB | growth MiB | KiB per connection | of it, source proxy | destination proxy | per connection × peer |\n|---:|---|---:|---:|---:|---:|---:|---:|\n")
		kib := func(p CurvePoint) float64 { return p.KiBPerConn }
		for _, p := range rows {
			fmt.Fprintf(&b, "| %d | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %s |\n", p.X, p.Path, p.RSSMiB, p.GrowthMiB, p.KiBPerConn, p.SourceKiB, p.DestKiB, ratio(p, kib, pathGhost))
		}
		b.WriteString("\n")
	}
	if rows := of(curveEnrolment); len(rows) > 0 {
		b.WriteString("**Enrolment time vs pods on the node** (from the agent's start until every pod's netns is in its pinned maps; a lab of one node per count)\n\n")
		b.WriteString("| pods | seconds | agent RSS MiB |\n|---:|---:|---:|\n")
		for _, p := range rows {
			fmt.Fprintf(&b, "| %d | %.2f | %.1f |\n", p.X, p.Seconds, p.RSSMiB)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// writeCurvesPlot draws the four curves one above the other, a line per path.
func writeCurvesPlot(path string, pts []CurvePoint) error {
	type panel struct {
		curve, title, x, y string
		v                  func(CurvePoint) float64
	}
	panels := []panel{
		{curveLatency, fmt.Sprintf("p50 latency vs concurrent connections (%d RPS in total)", curveLatencyRPS), "connections", "µs", func(p CurvePoint) float64 { return p.P50 }},
		{curveCPU, fmt.Sprintf("proxy CPU vs achieved load (%d connections)", curveCPUConns), "achieved RPS", "vCPU", func(p CurvePoint) float64 { return p.VCPU }},
		{curveMemory, "proxy RSS vs open connections", "open connections", "MiB", func(p CurvePoint) float64 { return p.RSSMiB }},
		{curveEnrolment, "enrolment time vs pods on the node", "pods", "seconds", func(p CurvePoint) float64 { return p.Seconds }},
	}
	var plots []*plot.Plot
	for _, pn := range panels {
		pl := plot.New()
		pl.Title.Text, pl.X.Label.Text, pl.Y.Label.Text = pn.title, pn.x, pn.y
		drawn := false
		for i, name := range []string{pathAmesh, pathDirect, pathGhost} {
			var xys plotter.XYs
			for _, p := range pts {
				if p.Curve != pn.curve || p.Path != name || (pn.curve == curveCPU && name == pathDirect) {
					continue
				}
				x := float64(p.X)
				if pn.curve == curveCPU {
					x = p.Achieved
				}
				xys = append(xys, plotter.XY{X: x, Y: pn.v(p)})
			}
			if len(xys) == 0 {
				continue
			}
			slices.SortFunc(xys, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
			line, points, err := plotter.NewLinePoints(xys)
			if err != nil {
				return fmt.Errorf("plot: %w", err)
			}
			line.Color, points.Color = palette[i%len(palette)], palette[i%len(palette)]
			pl.Add(line, points)
			pl.Legend.Add(name, line, points)
			drawn = true
		}
		if !drawn {
			continue // a curve this run left out
		}
		if pn.curve == curveLatency || pn.curve == curveMemory {
			pl.X.Scale, pl.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{}
		}
		pl.Legend.Top, pl.Legend.Left = true, true
		plots = append(plots, pl)
	}
	if len(plots) == 0 {
		return nil
	}
	return writeStacked(path, 10*vg.Inch, vg.Length(4*len(plots))*vg.Inch, plots...)
}
