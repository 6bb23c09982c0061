package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

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
	// Scrapes is how many metric scrapes of the agents succeeded while it ran (scrape scenarios).
	Scrapes int `json:"scrapes,omitempty"`
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
	scrape    bool   // the agents' metrics are scraped every second while it runs
}

// metricsAddr is where the suite's agents serve their metrics, in their node's netns.
const metricsAddr = "127.0.0.1:15020"

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
			"--state", s.state, "--ca-dir", s.caDir, "--pin-dir", n.PinDir, "--same-node", sameNode, "--log-level", "warn", "--metrics-addr", metricsAddr)
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
		// As Prometheus does (every second, so 15× its usual rate): what the telemetry costs.
		{name: "amesh cross-node (HBONE, scraped 1/s)", from: "web", rrAddr: ip("api2") + ":9000", iperfAddr: ip("api2") + ":5201", iperfPod: "api2", agents: []string{"node1", "node2"}, base: "amesh cross-node (HBONE)", scrape: true},
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
func measure(ctx context.Context, l *lab.Lab, self []string, s scenario, agents map[string]*lab.Proc, d time.Duration) (r Result, err error) {
	r = Result{Scenario: s.name, Base: s.base}
	if s.scrape {
		sctx, stop := context.WithCancel(ctx)
		done := make(chan int)
		go func() { done <- scrapeEverySecond(sctx, l, s.agents) }()
		defer func() { stop(); r.Scrapes = <-done }() // r is the named result: the count reaches the caller
	}
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

// scrapeEverySecond reads the metrics of the agents of nodes every second until ctx ends, and
// returns how many scrapes succeeded.
func scrapeEverySecond(ctx context.Context, l *lab.Lab, nodes []string) int {
	ok := 0
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for _, name := range nodes {
			n := l.Node(name)
			client := http.Client{Timeout: time.Second, Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return n.Dial(ctx, metricsAddr) },
			}}
			if resp, err := client.Get("http://" + metricsAddr + "/stats/prometheus"); err == nil {
				if _, err := io.Copy(io.Discard, resp.Body); err == nil && resp.StatusCode == http.StatusOK {
					ok++
				}
				resp.Body.Close()
			}
			client.CloseIdleConnections()
		}
		select {
		case <-ctx.Done():
			return ok
		case <-t.C:
		}
	}
}

func pct(m map[string]float64) map[string]float64 {
	return map[string]float64{"p50": m["p50"], "p90": m["p90"], "p99": m["p99"], "p99.9": m["p99.9"]}
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
