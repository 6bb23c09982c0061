package bench

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"fortio.org/fortio/periodic"
	"fortio.org/fortio/tcprunner"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/test/lab"
)

// Main runs the suite with command-line args, or one of its parts when args[0] is rr, cps or
// plot, and returns the exit code. reexec is the command line that reaches Main again (for
// ameshctl, its path and "bench"): the suite runs its load clients that way inside pods.
func Main(reexec, args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "rr":
			return clientRR(args[1:])
		case "cps":
			return clientCPS(args[1:])
		case "plot":
			return replot(args[1:])
		}
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: ameshctl bench [flags]   (root; builds a two-node netns lab, runs every scenario, tears it down)\n       ameshctl bench plot -in results.json -out results.png\n\nFlags:")
		fs.PrintDefaults()
	}
	out := fs.String("out", "bench-out", "directory for results.md, results.json and results.png")
	dur := fs.Duration("duration", 3*time.Second, "length of each load run")
	runs := fs.Int("runs", 3, "rounds over all scenarios; each figure is the median")
	agentBin := fs.String("agent", "", "amesh-agent binary (default: beside this program, then $PATH)")
	ghost := fs.String("ghostunnel", filepath.Join(os.Getenv("HOME"), ".cache/amesh/bin/ghostunnel"), "ghostunnel binary (peer); skipped when absent")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (network namespaces and eBPF)")
		return 1
	}
	bin, err := findAgent(*agentBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *runs < 1 {
		*runs = 1
	}
	if err := run(ctx, reexec, bin, *out, *dur, *runs, *ghost); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

// findAgent resolves the amesh-agent binary: the flag, else beside this program, else $PATH.
func findAgent(flagged string) (string, error) {
	if flagged != "" {
		if _, err := os.Stat(flagged); err != nil {
			return "", fmt.Errorf("-agent: %w", err)
		}
		return flagged, nil
	}
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), "amesh-agent"); fileExists(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath("amesh-agent")
	if err != nil {
		return "", errors.New("no amesh-agent beside this program or on $PATH: pass -agent (`make bin` puts both in bin/)")
	}
	return p, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// Result is one scenario's figures.
type Result struct {
	Scenario    string             `json:"scenario"`
	Base        string             `json:"compared_with"`
	RR1000      map[string]float64 `json:"rr_1000rps_us"` // p50, p90, p99, p99.9 in µs
	RRMax       map[string]float64 `json:"rr_max_us"`
	RRMaxQPS    float64            `json:"rr_max_qps"`
	Gbps1       float64            `json:"throughput_1_stream_gbps"`
	Gbps4       float64            `json:"throughput_4_streams_gbps"`
	CPS         float64            `json:"new_connections_per_s"`
	AgentCPU    float64            `json:"agent_vcpu_per_1000rps,omitempty"`
	AgentRSSMiB float64            `json:"agent_rss_mib,omitempty"`
}

// scenario is a path to measure: the client pod, where its traffic is sent (address), the port
// iperf3 reaches, and the agents whose CPU counts.
type scenario struct {
	name      string
	from      string
	rrAddr    string // echo endpoint as the client dials it
	iperfAddr string // host:port of the iperf3 server as the client dials it
	iperfPod  string // where the iperf3 server runs
	agents    []string
	base      string // the direct scenario of the same placement, for ratios
}

// The direct scenarios, which the others are compared with.
const sameDirect, crossDirect = "direct same-node (no mesh)", "direct cross-node (no mesh)"

// suite is one run's lab and the agents on its nodes.
type suite struct {
	lab      *lab.Lab
	self     []string // the command line that reaches Main again, for the load clients
	agentBin string
	state    string               // the lab's state file, which the agents read
	caDir    string               // the CA's files, which the agents issue from
	agents   map[string]*lab.Proc // by node name
	mode     string               // the agents' --same-node; "" until they first start
}

func run(ctx context.Context, self []string, agentBin, outDir string, d time.Duration, runs int, ghost string) error {
	tmp, err := os.MkdirTemp("", "amesh-demo-bench-") // `make clean-lab` removes leftovers
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	l, err := newLab(ctx)
	if err != nil {
		return err
	}
	defer closeLab(l, agentBin)
	stopEchoes, err := serveEchoes(l)
	if err != nil {
		return err
	}
	defer stopEchoes()
	s := &suite{lab: l, self: self, agentBin: agentBin, agents: map[string]*lab.Proc{}}
	ca, err := s.writeConfig()
	if err != nil {
		return err
	}
	defer s.stopAgents()
	scenarios := labScenarios(l)
	peers, stopPeers, err := startPeers(ctx, l, ca, ghost)
	if err != nil {
		return err
	}
	defer stopPeers()
	scenarios = append(scenarios, peers...)
	all, err := s.rounds(ctx, scenarios, d, runs)
	if err != nil {
		return err
	}
	return writeResults(outDir, d, runs, all)
}

// newLab builds the suite's lab: on node1 a meshed client (web) and server (api1) and two
// unmeshed pods (c1, c1b); on node2 a meshed server (api2) and an unmeshed one (s2).
func newLab(ctx context.Context) (*lab.Lab, error) {
	return lab.New(ctx, lab.Config{Nodes: []lab.NodeSpec{
		{Name: "node1", Pods: []lab.PodSpec{
			{Name: "web", Namespace: "shop", ServiceAccount: "web"},
			{Name: "api1", Namespace: "shop", ServiceAccount: "api"},
			{Name: "c1", Namespace: "plain", ServiceAccount: "default", Mode: "none"},
			{Name: "c1b", Namespace: "plain", ServiceAccount: "default", Mode: "none"},
		}},
		{Name: "node2", Pods: []lab.PodSpec{
			{Name: "api2", Namespace: "shop", ServiceAccount: "api"},
			{Name: "s2", Namespace: "plain", ServiceAccount: "default", Mode: "none"},
		}},
	}})
}

// closeLab removes what the agents left in each node (their pins), then the lab.
func closeLab(l *lab.Lab, agentBin string) {
	for _, n := range l.Nodes {
		exec.Command(agentBin, "--uninstall", "--pin-dir", n.PinDir).Run()
	}
	l.Close()
}

// serveEchoes runs the lab's echo on :9000 in every pod; the function returned stops them.
func serveEchoes(l *lab.Lab) (func(), error) {
	var lns []net.Listener
	stop := func() {
		for _, ln := range slices.Backward(lns) {
			ln.Close()
		}
	}
	for _, p := range l.Pods() {
		ln, err := p.Listen(":" + lab.EchoPort)
		if err != nil {
			stop()
			return nil, err
		}
		go lab.Echo(ln, nil)
		lns = append(lns, ln)
	}
	return stop, nil
}

// writeConfig writes the agents' state file and a new CA, which it returns.
func (s *suite) writeConfig() (*identity.CA, error) {
	s.state = filepath.Join(s.lab.Dir, "state.yaml")
	if err := s.lab.WriteState(s.state, "", ""); err != nil {
		return nil, err
	}
	s.caDir = filepath.Join(s.lab.Dir, "ca")
	ca, err := identity.NewCA(spiffeid.RequireTrustDomainFromString(s.lab.TrustDomain), identity.CAConfig{})
	if err != nil {
		return nil, err
	}
	if err := ca.WriteFiles(s.caDir); err != nil {
		return nil, err
	}
	return ca, nil
}

// startAgents stops the agents that run, starts one per node with --same-node sameNode, and
// waits until the mesh carries traffic.
func (s *suite) startAgents(ctx context.Context, sameNode string) error {
	for name, p := range s.agents {
		p.Signal(syscall.SIGTERM)
		<-p.Done()
		delete(s.agents, name)
	}
	for _, n := range s.lab.Nodes {
		p, err := s.lab.Start(ctx, n.Netns, filepath.Join(s.lab.Dir, n.Name+"-agent.log"), s.agentBin, "--node", n.Name,
			"--state", s.state, "--ca-dir", s.caDir, "--pin-dir", n.PinDir, "--same-node", sameNode, "--log-level", "warn")
		if err != nil {
			return err
		}
		s.agents[n.Name] = p
	}
	return s.waitMesh(ctx)
}

// waitMesh waits, up to 20s, until web reaches api2 through the mesh (an echo of one byte).
func (s *suite) waitMesh(ctx context.Context) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := s.lab.Pod("web").Dial(ctx, net.JoinHostPort(s.lab.Pod("api2").IP.String(), "9000"))
		if err == nil {
			c.Write([]byte("x"))
			c.SetReadDeadline(time.Now().Add(time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return errors.New("agents did not come up")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopAgents stops the agents, each given 3s to exit before it is killed.
func (s *suite) stopAgents() {
	for _, p := range s.agents {
		p.Signal(syscall.SIGTERM)
		select {
		case <-p.Done():
		case <-time.After(3 * time.Second):
			p.Kill()
		}
	}
}

// labScenarios are the paths within the lab: direct and through amesh, on one node and across.
func labScenarios(l *lab.Lab) []scenario {
	ip := func(pod string) string { return l.Pod(pod).IP.String() }
	return []scenario{
		{name: sameDirect, from: "c1", rrAddr: ip("c1b") + ":9000", iperfAddr: ip("c1b") + ":5201", iperfPod: "c1b"},
		{name: crossDirect, from: "c1", rrAddr: ip("s2") + ":9000", iperfAddr: ip("s2") + ":5201", iperfPod: "s2"},
		{name: "amesh same-node (splice)", from: "web", rrAddr: ip("api1") + ":9000", iperfAddr: ip("api1") + ":5201", iperfPod: "api1", agents: []string{"node1"}, base: sameDirect},
		{name: "amesh same-node (kernel)", from: "web", rrAddr: ip("api1") + ":9000", iperfAddr: ip("api1") + ":5201", iperfPod: "api1", agents: []string{"node1"}, base: sameDirect},
		{name: "amesh same-node (hbone)", from: "web", rrAddr: ip("api1") + ":9000", iperfAddr: ip("api1") + ":5201", iperfPod: "api1", agents: []string{"node1"}, base: sameDirect},
		{name: "amesh cross-node (HBONE)", from: "web", rrAddr: ip("api2") + ":9000", iperfAddr: ip("api2") + ":5201", iperfPod: "api2", agents: []string{"node1", "node2"}, base: crossDirect},
	}
}

// rounds measures every scenario runs times and returns each one's results, round by round.
// Rounds go over every scenario in turn, so a slow spell of this noisy machine hits them all
// alike; each figure reported is the median over the rounds.
func (s *suite) rounds(ctx context.Context, scenarios []scenario, d time.Duration, runs int) ([][]Result, error) {
	all := make([][]Result, len(scenarios))
	for round := range runs {
		for i, sc := range scenarios {
			r, err := s.runScenario(ctx, sc, d)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "bench: round %d/%d: %s done\n", round+1, runs, sc.name)
			all[i] = append(all[i], r)
		}
	}
	return all, nil
}

// writeResults writes the medians of all to results.json (with every round), results.md and
// results.png in outDir, and prints the Markdown.
func writeResults(outDir string, d time.Duration, runs int, all [][]Result) error {
	results := make([]Result, len(all))
	for i := range all {
		results[i] = median(all[i])
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "duration": d.String(), "runs": runs,
		"results": results, "rounds": all}, "", "  ")
	if err := os.WriteFile(filepath.Join(outDir, "results.json"), js, 0o644); err != nil {
		return err
	}
	md := markdown(results, d, runs)
	if err := os.WriteFile(filepath.Join(outDir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := writePlot(filepath.Join(outDir, "results.png"), results); err != nil {
		return err
	}
	fmt.Print(md)
	return nil
}

// runScenario (re)starts the agents in the mode the scenario needs, then measures it.
func (s *suite) runScenario(ctx context.Context, sc scenario, d time.Duration) (Result, error) {
	mode := "splice"
	for _, m := range []string{"hbone", "kernel"} {
		if strings.Contains(sc.name, "("+m+")") {
			mode = m
		}
	}
	if s.mode == "" || (sc.agents != nil && s.mode != mode) {
		if err := s.startAgents(ctx, mode); err != nil {
			return Result{}, err
		}
		s.mode = mode
		if mode == "kernel" {
			// The pair's first connection is decided by the agent; measure the ones after it.
			warm(ctx, s.lab, sc)
		}
	}
	r, err := measure(ctx, s.lab, s.self, sc, s.agents, d)
	if err != nil {
		return r, fmt.Errorf("%s: %w", sc.name, err)
	}
	return r, nil
}

// median takes each figure's median over the rounds of one scenario.
func median(rs []Result) Result {
	med := func(get func(Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	out := Result{Scenario: rs[0].Scenario, Base: rs[0].Base, RR1000: map[string]float64{}, RRMax: map[string]float64{}}
	for _, p := range []string{"p50", "p90", "p99", "p99.9"} {
		out.RR1000[p] = med(func(r Result) float64 { return r.RR1000[p] })
		out.RRMax[p] = med(func(r Result) float64 { return r.RRMax[p] })
	}
	out.RRMaxQPS = med(func(r Result) float64 { return r.RRMaxQPS })
	out.Gbps1 = med(func(r Result) float64 { return r.Gbps1 })
	out.Gbps4 = med(func(r Result) float64 { return r.Gbps4 })
	out.CPS = med(func(r Result) float64 { return r.CPS })
	out.AgentCPU = med(func(r Result) float64 { return r.AgentCPU })
	out.AgentRSSMiB = med(func(r Result) float64 { return r.AgentRSSMiB })
	return out
}

// warm makes one connection of the scenario (echo and iperf3 ports), so that the kernel path's
// verdicts are cached before the measured runs.
func warm(ctx context.Context, l *lab.Lab, s scenario) {
	for _, addr := range []string{s.rrAddr, s.iperfAddr} {
		if c, err := l.Pod(s.from).Dial(ctx, addr); err == nil {
			c.Close()
		}
	}
	time.Sleep(100 * time.Millisecond)
}

// measure runs every workload of one scenario.
func measure(ctx context.Context, l *lab.Lab, self []string, s scenario, agents map[string]*lab.Proc, d time.Duration) (Result, error) {
	r := Result{Scenario: s.name, Base: s.base}
	cpu0 := agentCPU(agents, s.agents)
	rr, err := runClient(ctx, l, self, s.from, "rr", "-dest", s.rrAddr, "-qps", "1000", "-duration", d.String())
	if err != nil {
		return r, err
	}
	if s.agents != nil {
		r.AgentCPU = (agentCPU(agents, s.agents) - cpu0) / d.Seconds() * 1000 / rr["qps"]
		for _, n := range s.agents {
			rss, _ := lab.RSSMiB(agents[n].Cmd.Process.Pid)
			r.AgentRSSMiB = math.Max(r.AgentRSSMiB, rss)
		}
	}
	r.RR1000 = pct(rr)
	mx, err := runClient(ctx, l, self, s.from, "rr", "-dest", s.rrAddr, "-qps", "-1", "-duration", d.String())
	if err != nil {
		return r, err
	}
	r.RRMax, r.RRMaxQPS = pct(mx), mx["qps"]
	cps, err := runClient(ctx, l, self, s.from, "cps", "-dest", s.rrAddr, "-duration", d.String())
	if err != nil {
		return r, err
	}
	r.CPS = cps["cps"]
	for _, streams := range []int{1, 4} {
		g, err := l.Iperf(ctx, l.Pod(s.from), l.Pod(s.iperfPod), s.iperfAddr, streams, d)
		if err != nil {
			return r, err
		}
		if streams == 1 {
			r.Gbps1 = g
		} else {
			r.Gbps4 = g
		}
	}
	return r, nil
}

func pct(m map[string]float64) map[string]float64 {
	return map[string]float64{"p50": m["p50"], "p90": m["p90"], "p99": m["p99"], "p99.9": m["p99.9"]}
}

// runClient re-executes the suite's command inside the pod's netns as a load client.
func runClient(ctx context.Context, l *lab.Lab, self []string, pod, mode string, args ...string) (map[string]float64, error) {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	argv := append(append(slices.Clone(self[1:]), mode), args...)
	out, err := l.Command(cctx, l.Pod(pod).Netns, self[0], argv...).Output()
	if err != nil {
		return nil, fmt.Errorf("%s client in %s: %v %s", mode, pod, err, out)
	}
	var m map[string]float64
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("%s client output %q: %w", mode, out, err)
	}
	return m, nil
}

// replot is `bench plot -in results.json -out results.png`: redraw a saved run.
func replot(args []string) int {
	fs := flag.NewFlagSet("plot", flag.ExitOnError)
	in := fs.String("in", "bench-out/results.json", "results of a run")
	out := fs.String("out", "bench-out/results.png", "PNG to write")
	fs.Parse(args)
	b, err := os.ReadFile(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var saved struct{ Results []Result }
	if err := json.Unmarshal(b, &saved); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := writePlot(*out, saved.Results); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// clientRR is `bench rr`: fortio's TCP echo runner at a QPS (-1: max) on one connection.
func clientRR(args []string) int {
	fs := flag.NewFlagSet("rr", flag.ExitOnError)
	dest := fs.String("dest", "", "echo server host:port")
	qps := fs.Float64("qps", 1000, "requests per second (-1 for max)")
	d := fs.Duration("duration", 3*time.Second, "duration")
	fs.Parse(args)
	o := tcprunner.RunnerOptions{
		RunnerOptions: periodic.RunnerOptions{QPS: *qps, Duration: *d, NumThreads: 1, Percentiles: []float64{50, 90, 99, 99.9}, Resolution: 1e-6, Out: io.Discard},
		TCPOptions:    tcprunner.TCPOptions{Destination: *dest, Payload: make([]byte, 1024), ReqTimeout: 5 * time.Second},
	}
	res, err := tcprunner.RunTCPTest(&o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if res.RetCodes[tcprunner.TCPStatusOK] == 0 || len(res.RetCodes) > 1 {
		fmt.Fprintf(os.Stderr, "rr: results %v\n", res.RetCodes)
		return 1
	}
	out := map[string]float64{"qps": res.ActualQPS}
	for _, p := range res.DurationHistogram.Percentiles {
		out["p"+strconv.FormatFloat(p.Percentile, 'f', -1, 64)] = p.Value * 1e6
	}
	json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

// clientCPS is `bench cps`: new connections per second, each a 1 KiB echo then close.
func clientCPS(args []string) int {
	fs := flag.NewFlagSet("cps", flag.ExitOnError)
	dest := fs.String("dest", "", "echo server host:port")
	d := fs.Duration("duration", 3*time.Second, "duration")
	fs.Parse(args)
	msg, buf := make([]byte, 1024), make([]byte, 1024)
	n, start := 0, time.Now()
	for time.Since(start) < *d {
		c, err := net.DialTimeout("tcp", *dest, 5*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Write(msg)
		if err == nil {
			_, err = io.ReadFull(c, buf)
		}
		c.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		n++
	}
	json.NewEncoder(os.Stdout).Encode(map[string]float64{"cps": float64(n) / time.Since(start).Seconds()})
	return 0
}

// agentCPU is the user+system CPU seconds the named agents have used.
func agentCPU(agents map[string]*lab.Proc, names []string) float64 {
	total := 0.0
	for _, n := range names {
		p := agents[n]
		if p == nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Cmd.Process.Pid))
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses and may hold spaces.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		total += (ut + st) / 100 // USER_HZ
	}
	return total
}

// startPeers runs the L4 mTLS peers between c1 (node1) and s2 (node2), both out of the mesh:
// client proxy in c1 on 127.0.0.1, server proxy in s2 on its pod IP, target s2's echo/iperf3.
func startPeers(ctx context.Context, l *lab.Lab, ca *identity.CA, ghost string) ([]scenario, func(), error) {
	var procs []*lab.Proc
	stop := func() {
		for _, p := range procs {
			p.Kill()
		}
	}
	dir := filepath.Join(l.Dir, "peers")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, stop, err
	}
	s2 := l.Pod("s2").IP
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
		return p
	}
	issue := func(name, sa string, ips []net.IP) (string, string, string, error) {
		id := spiffeid.RequireFromString("spiffe://" + l.TrustDomain + "/ns/plain/sa/" + sa)
		s, err := ca.IssueWithIPs(ctx, id, ips)
		if err != nil {
			return "", "", "", err
		}
		key, err := x509.MarshalPKCS8PrivateKey(s.PrivateKey)
		if err != nil {
			return "", "", "", err
		}
		return write(name+".crt", "CERTIFICATE", s.Certificates[0].Raw), write(name+".key", "PRIVATE KEY", key), id.String(), nil
	}
	caFile := write("ca.crt", "CERTIFICATE", ca.Root().Raw)
	scrt, skey, _, err := issue("server", "server", []net.IP{s2.AsSlice()})
	if err != nil {
		return nil, stop, err
	}
	ccrt, ckey, cid, err := issue("client", "client", nil)
	if err != nil {
		return nil, stop, err
	}
	start := func(pod string, name string, args ...string) error {
		p, err := l.Start(ctx, l.Pod(pod).Netns, "", name, args...)
		if err == nil {
			procs = append(procs, p)
		}
		return err
	}
	var out []scenario
	// Ports: 7001/7002 echo, 7101/7102 iperf3 for ghostunnel; 8001/8002, 8101/8102 for stunnel.
	if _, err := os.Stat(ghost); err == nil {
		for _, pp := range [][3]string{{"7001", "7002", "9000"}, {"7101", "7102", "5201"}} {
			if err := start("s2", ghost, "server", "--quiet=all", "--listen", s2.String()+":"+pp[1], "--target", "127.0.0.1:"+pp[2],
				"--cert", scrt, "--key", skey, "--cacert", caFile, "--allow-uri", cid); err != nil {
				return nil, stop, err
			}
			if err := start("c1", ghost, "client", "--quiet=all", "--listen", "127.0.0.1:"+pp[0], "--target", s2.String()+":"+pp[1],
				"--cert", ccrt, "--key", ckey, "--cacert", caFile, "--verify-uri", "spiffe://"+l.TrustDomain+"/ns/plain/sa/server"); err != nil {
				return nil, stop, err
			}
		}
		out = append(out, scenario{name: "ghostunnel pair", from: "c1", rrAddr: "127.0.0.1:7001", iperfAddr: "127.0.0.1:7101", iperfPod: "s2", base: crossDirect})
	} else {
		fmt.Fprintf(os.Stderr, "bench: no ghostunnel at %s (make peers builds it): scenario left out\n", ghost)
	}
	if path, err := exec.LookPath("stunnel4"); err == nil {
		conf := func(name, body string) string {
			p := filepath.Join(dir, name)
			os.WriteFile(p, []byte("foreground = yes\npid =\n"+body), 0o600)
			return p
		}
		srv := conf("stunnel-server.conf", fmt.Sprintf(`[echo]
accept = %[1]s:8002
connect = 127.0.0.1:9000
cert = %[2]s
key = %[3]s
CAfile = %[4]s
verifyChain = yes
requireCert = yes
[iperf]
accept = %[1]s:8102
connect = 127.0.0.1:5201
cert = %[2]s
key = %[3]s
CAfile = %[4]s
verifyChain = yes
requireCert = yes
`, s2, scrt, skey, caFile))
		cli := conf("stunnel-client.conf", fmt.Sprintf(`[echo]
client = yes
accept = 127.0.0.1:8001
connect = %[1]s:8002
cert = %[2]s
key = %[3]s
CAfile = %[4]s
verifyChain = yes
checkIP = %[1]s
[iperf]
client = yes
accept = 127.0.0.1:8101
connect = %[1]s:8102
cert = %[2]s
key = %[3]s
CAfile = %[4]s
verifyChain = yes
checkIP = %[1]s
`, s2, ccrt, ckey, caFile))
		if err := start("s2", path, srv); err != nil {
			return nil, stop, err
		}
		if err := start("c1", path, cli); err != nil {
			return nil, stop, err
		}
		out = append(out, scenario{name: "stunnel pair", from: "c1", rrAddr: "127.0.0.1:8001", iperfAddr: "127.0.0.1:8101", iperfPod: "s2", base: crossDirect})
	} else {
		fmt.Fprintln(os.Stderr, "bench: no stunnel4 (make peers installs it): scenario left out")
	}
	// Wait for the client proxies to listen.
	for _, s := range out {
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := l.Pod("c1").Dial(ctx, s.rrAddr)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				return nil, stop, fmt.Errorf("%s did not listen on %s", s.name, s.rrAddr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return out, stop, nil
}

// markdown renders the results with ratios to the direct case of the same placement and to the
// best peer (the peers run across nodes).
func markdown(rs []Result, d time.Duration, runs int) string {
	// The best peer is chosen per measure: the lowest p50 for latency, the highest for throughput.
	var best, bestThr *Result
	byName := map[string]*Result{}
	for i := range rs {
		r := &rs[i]
		byName[r.Scenario] = r
		if strings.HasSuffix(r.Scenario, "pair") {
			if best == nil || r.RR1000["p50"] < best.RR1000["p50"] {
				best = r
			}
			if bestThr == nil || r.Gbps1 > bestThr.Gbps1 {
				bestThr = r
			}
		}
	}
	ratio := func(v, base float64) string {
		if base == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", v/base)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Benchmark suite, %s, each load run %v, medians of %d rounds. \"× direct\" compares with two unmeshed pods in the same placement; best peer: the lowest 1,000 RPS p50 (%s) for latency, the highest one-stream throughput (%s) for throughput.\n\n", time.Now().UTC().Format("2006-01-02"), d, runs, name(best), name(bestThr))
	b.WriteString("| scenario | p50 µs | p90 | p99 | p99.9 | p50 × direct | p50 × best peer | max RPS | 1 stream Gbit/s | × direct | × best peer | 4 streams Gbit/s | new conn/s | agent vCPU / 1k RPS | agent RSS MiB |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		cpu, rss := "–", "–"
		if r.AgentRSSMiB > 0 {
			cpu, rss = fmt.Sprintf("%.3f", r.AgentCPU), fmt.Sprintf("%.1f", r.AgentRSSMiB)
		}
		var dp50, bp50, dg, bg float64
		if direct := byName[r.Base]; direct != nil {
			dp50, dg = direct.RR1000["p50"], direct.Gbps1
		} else if r.Base == "" {
			dp50, dg = r.RR1000["p50"], r.Gbps1
		}
		if best != nil {
			bp50, bg = best.RR1000["p50"], bestThr.Gbps1
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f | %.1f | %s | %s | %.0f | %.2f | %s | %s | %.2f | %.0f | %s | %s |\n",
			r.Scenario, r.RR1000["p50"], r.RR1000["p90"], r.RR1000["p99"], r.RR1000["p99.9"],
			ratio(r.RR1000["p50"], dp50), ratio(r.RR1000["p50"], bp50), r.RRMaxQPS,
			r.Gbps1, ratio(r.Gbps1, dg), ratio(r.Gbps1, bg), r.Gbps4, r.CPS, cpu, rss)
	}
	return b.String()
}

func name(r *Result) string {
	if r == nil {
		return "none"
	}
	return r.Scenario
}
