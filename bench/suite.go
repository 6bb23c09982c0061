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
	"github.com/amesh-dev/amesh/redirect"
	"github.com/amesh-dev/amesh/test/lab"
)

// Main runs the suite with command-line args, or one of its parts when args[0] is rr, cps, http
// or plot, and returns the exit code. reexec is the command line that reaches Main again (for
// ameshctl, its path and "bench"): the suite runs its load clients that way inside pods.
func Main(reexec, args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "rr":
			return clientRR(args[1:])
		case "cps":
			return clientCPS(args[1:])
		case "http":
			return clientHTTP(args[1:])
		case "serve":
			return serveEcho(args[1:])
		case "plot":
			return replot(args[1:])
		}
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: ameshctl bench [flags]   (root; builds a two-node netns lab, runs every scenario, tears it down)\n       ameshctl bench -kubeconfig FILE [-image IMG] [-nodes a,b] [flags]   (in a running cluster with amesh installed)\n       ameshctl bench plot -in results.json -out results.png\n\nFlags:")
		fs.PrintDefaults()
	}
	out := fs.String("out", "bench-out", "directory for results.md, results.json and results.png")
	dur := fs.Duration("duration", 3*time.Second, "length of each load run")
	runs := fs.Int("runs", 3, "rounds over all scenarios; each figure is the median")
	agentBin := fs.String("agent", "", "amesh-agent binary (default: beside this program, then $PATH)")
	waypointBin := fs.String("waypoint", "", "amesh-waypoint binary (default: beside this program, then $PATH); the waypoint scenarios are skipped when absent")
	ghost := fs.String("ghostunnel", filepath.Join(os.Getenv("HOME"), ".cache/amesh/bin/ghostunnel"), "ghostunnel binary (peer); skipped when absent")
	kubeconfig := fs.String("kubeconfig", "", "run in this cluster instead of a lab: pods in a namespace in the mesh and one out of it, same-node and cross-node (no root needed)")
	image := fs.String("image", "ghcr.io/amesh-dev/amesh:dev", "with -kubeconfig: the pods' image, one with ameshctl (make image)")
	nodes := fs.String("nodes", "", "with -kubeconfig: the two nodes to use, comma-separated (default: the first two Ready ones)")
	namespace := fs.String("namespace", "amesh-bench", "with -kubeconfig: the run's namespace (and <it>-direct), made and deleted")
	sections := fs.String("sections", "lab,cost,curves", "what to run, comma-separated: lab (the scenarios side by side), cost (cost per node: one agent against a sidecar per pod), curves (cost curves: latency, CPU, memory and enrolment against load)")
	costPods := fs.String("cost-pods", "10,50,100", "cost per node: pods per node, comma-separated (empty: leave the section out)")
	costRates := fs.String("cost-rates", "1000,5000", "cost per node: total requests per second, comma-separated")
	curveConns := fs.String("curves-conns", "1,10,100,1000", "cost curves: concurrent connections of the latency curve")
	curveRates := fs.String("curves-rates", "1000,5000,10000,max", "cost curves: offered requests per second of the CPU curve (max: as fast as they go)")
	curveOpen := fs.String("curves-open", "1000,10000", "cost curves: open connections of the memory curve")
	curvePods := fs.String("curves-pods", "10,100,500", "cost curves: pods on the node of the enrolment curve (a lab node holds at most 506)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *kubeconfig != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		var ns []string
		if *nodes != "" {
			ns = strings.Split(*nodes, ",")
		}
		if err := RunCluster(ctx, ClusterConfig{Kubeconfig: *kubeconfig, Image: *image, Namespace: *namespace, Nodes: ns, Duration: *dur, Runs: *runs, OutDir: *out}); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		return 0
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (network namespaces and eBPF)")
		return 1
	}
	bin, err := findBinary("amesh-agent", "-agent", *agentBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	wp, err := findBinary("amesh-waypoint", "-waypoint", *waypointBin)
	if err != nil && *waypointBin != "" {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *runs < 1 {
		*runs = 1
	}
	want := strings.Split(*sections, ",")
	if slices.Contains(want, "lab") {
		if err := run(ctx, reexec, bin, wp, *out, *dur, *runs, *ghost); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}
	if slices.Contains(want, "cost") && *costPods != "" {
		pods, err1 := intList(*costPods)
		rates, err2 := intList(*costRates)
		if err := errors.Join(err1, err2); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -cost-pods/-cost-rates:", err)
			return 2
		}
		if err := RunCost(ctx, CostConfig{Agent: bin, Ghostunnel: *ghost, Pods: pods, Rates: rates, Duration: *dur, OutDir: *out}); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}
	if slices.Contains(want, "curves") {
		cfg := CurvesConfig{Self: reexec, Agent: bin, Ghostunnel: *ghost, Duration: *dur, OutDir: *out}
		var errs [4]error
		cfg.Conns, errs[0] = intList(*curveConns)
		cfg.Rates, errs[1] = rateList(*curveRates)
		cfg.Open, errs[2] = intList(*curveOpen)
		cfg.Pods, errs[3] = intList(*curvePods)
		if err := errors.Join(errs[:]...); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -curves-*:", err)
			return 2
		}
		if err := RunCurves(ctx, cfg); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}
	return 0
}

// intList parses "10,50,100" (empty: none) into positive numbers.
func intList(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q: want positive numbers, comma-separated", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// rateList is intList for request rates, where "max" (as fast as they go) is 0.
func rateList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if strings.TrimSpace(f) == "max" {
			out = append(out, 0)
			continue
		}
		n, err := intList(f)
		if err != nil {
			return nil, fmt.Errorf("%q: want positive numbers or max, comma-separated", s)
		}
		out = append(out, n...)
	}
	return out, nil
}

// findBinary resolves one of amesh's binaries, name: flagged (the value of flagName) when set,
// else the one beside this program, else the one on $PATH.
func findBinary(name, flagName, flagged string) (string, error) {
	if flagged != "" {
		if _, err := os.Stat(flagged); err != nil {
			return "", fmt.Errorf("%s: %w", flagName, err)
		}
		return flagged, nil
	}
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), name); fileExists(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("no %s beside this program or on $PATH: pass %s (`make bin` puts it in bin/): %w", name, flagName, err)
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
	// HTTP marks an HTTP scenario: its RR figures are HTTP requests, and it has no throughput or
	// connection rate (the waypoint carries HTTP only, so iperf3 and raw echoes cannot compare).
	HTTP bool `json:"http,omitempty"`
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
	http      bool   // rrAddr is an HTTP server, measured with GETs; no iperf3 or CPS
	waypoint  bool   // needs the waypoint running (skipped without its binary)
	pids      []int  // a peer's: its echo path's proxies, whose CPU and memory count
}

// metricsAddr is where the suite's agents serve their metrics, in their node's netns.
const metricsAddr = "127.0.0.1:15020"

// The direct scenarios, which the others are compared with.
const sameDirect, crossDirect = "direct same-node (no mesh)", "direct cross-node (no mesh)"

// The HTTP scenarios: the waypoint is compared with the same HTTP path without it.
const (
	httpDirect     = "direct cross-node (HTTP, no mesh)"
	httpNoWaypoint = "amesh cross-node (HTTP, no waypoint)"
	httpWaypoint   = "amesh cross-node via waypoint (HTTP)"
)

// The HTTP servers' ports. api2 serves on two, since a waypoint covers a workload port for every
// caller (a connection to 8080 that skips the waypoint is refused as a bypass): 8080 is behind
// the service that names the waypoint, 8081 behind one that names none.
const httpWaypointPort, httpPort = "8080", "8081"

// The services of the suite's state file: api (VIP 10.96.0.10) sends to api2:8080 through the
// waypoint wp, api-direct (10.96.0.11) to api2:8081 with none; wp is the waypoint's own service.
const (
	waypointVIP   = "10.96.0.10"
	noWaypointVIP = "10.96.0.11"
	benchServices = `
  - name: api
    namespace: shop
    vips: [` + waypointVIP + `]
    ports: [{port: 80, targetPort: ` + httpWaypointPort + `}]
    selector: {app: api}
    waypoint: wp
  - name: api-direct
    namespace: shop
    vips: [` + noWaypointVIP + `]
    ports: [{port: 80, targetPort: ` + httpPort + `}]
    selector: {app: api}
  - name: wp
    namespace: shop
    vips: [10.96.0.20]
    ports: [{port: 15008}]
    selector: {app: wp}
    waypointFor: service
`
)

// suite is one run's lab and the agents on its nodes.
type suite struct {
	lab      *lab.Lab
	self     []string // the command line that reaches Main again, for the load clients
	agentBin string
	state    string               // the lab's state file, which the agents read
	caDir    string               // the CA's files, which the agents issue from
	agents   map[string]*lab.Proc // by node name
	mode     string               // the agents' --same-node; "" until they first start
	// waypointBin is amesh-waypoint ("": the waypoint scenarios are skipped); waypoint is its
	// process in the wp pod, nil until a waypoint scenario first runs.
	waypointBin string
	waypoint    *lab.Proc
}

func run(ctx context.Context, self []string, agentBin, waypointBin, outDir string, d time.Duration, runs int, ghost string) error {
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
	stopHTTP, err := serveHTTP(l)
	if err != nil {
		return err
	}
	defer stopHTTP()
	s := &suite{lab: l, self: self, agentBin: agentBin, waypointBin: waypointBin, agents: map[string]*lab.Proc{}}
	ca, err := s.writeConfig()
	if err != nil {
		return err
	}
	defer s.stopAgents()
	defer s.stopWaypoint()
	scenarios := labScenarios(l)
	if waypointBin == "" {
		fmt.Fprintf(os.Stderr, "bench: no amesh-waypoint beside this program or on $PATH (pass -waypoint; `make bin` builds it): skipping %q\n", httpWaypoint)
		scenarios = slices.DeleteFunc(scenarios, func(sc scenario) bool { return sc.waypoint })
	}
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

// newLab builds the suite's lab: on node1 a meshed client (web) and server (api1), two
// unmeshed pods (c1, c1b) and the waypoint's pod (wp, out of the mesh: it speaks HBONE itself);
// on node2 a meshed server (api2) and an unmeshed one (s2). Only api2 is labelled app=api, so the
// HTTP services' traffic always crosses the nodes.
func newLab(ctx context.Context) (*lab.Lab, error) {
	return lab.New(ctx, lab.Config{Nodes: []lab.NodeSpec{
		{Name: "node1", Pods: []lab.PodSpec{
			{Name: "web", Namespace: "shop", ServiceAccount: "web"},
			{Name: "api1", Namespace: "shop", ServiceAccount: "api"},
			{Name: "c1", Namespace: "plain", ServiceAccount: "default", Mode: "none"},
			{Name: "c1b", Namespace: "plain", ServiceAccount: "default", Mode: "none"},
			{Name: "wp", Namespace: "shop", ServiceAccount: "waypoint", Mode: "none", Labels: map[string]string{"app": "wp"}},
		}},
		{Name: "node2", Pods: []lab.PodSpec{
			{Name: "api2", Namespace: "shop", ServiceAccount: "api", Labels: map[string]string{"app": "api"}},
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

// serveHTTP runs the HTTP servers of the HTTP scenarios, each answering every request with
// 1 KiB: api2 on both its ports, s2 (the direct baseline) on httpPort. The function returned
// stops them.
func serveHTTP(l *lab.Lab) (func(), error) {
	body := make([]byte, 1024)
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
	var srvs []*http.Server
	stop := func() {
		for _, srv := range srvs {
			srv.Close()
		}
	}
	for _, at := range []struct{ pod, port string }{{"api2", httpWaypointPort}, {"api2", httpPort}, {"s2", httpPort}} {
		ln, err := l.Pod(at.pod).Listen(":" + at.port)
		if err != nil {
			stop()
			return nil, fmt.Errorf("http server in %s: %w", at.pod, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		srvs = append(srvs, srv)
	}
	return stop, nil
}

// writeConfig writes the agents' state file and a new CA, which it returns.
func (s *suite) writeConfig() (*identity.CA, error) {
	var ca *identity.CA
	var err error
	s.state, s.caDir, ca, err = writeLabConfig(s.lab, benchServices)
	return ca, err
}

// writeLabConfig writes, in the lab's directory, the agents' state file (the lab's pods and
// services) and the files of a new CA of the lab's trust domain, which it returns.
func writeLabConfig(l *lab.Lab, services string) (state, caDir string, ca *identity.CA, err error) {
	state = filepath.Join(l.Dir, "state.yaml")
	if err := l.WriteState(state, services, ""); err != nil {
		return "", "", nil, err
	}
	caDir = filepath.Join(l.Dir, "ca")
	ca, err = identity.NewCA(spiffeid.RequireTrustDomainFromString(l.TrustDomain), identity.CAConfig{})
	if err != nil {
		return "", "", nil, err
	}
	if err := ca.WriteFiles(caDir); err != nil {
		return "", "", nil, err
	}
	return state, caDir, ca, nil
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
		p, err := startAgent(ctx, s.lab, n, s.agentBin, s.state, s.caDir, "--same-node", sameNode, "--metrics-addr", metricsAddr)
		if err != nil {
			return err
		}
		s.agents[n.Name] = p
	}
	return s.waitMesh(ctx)
}

// startAgent starts amesh-agent bin in the node's namespace on the lab's state and CA files,
// logging warnings and worse to <node>-agent.log in the lab's directory, with extra flags.
func startAgent(ctx context.Context, l *lab.Lab, n *lab.Node, bin, state, caDir string, extra ...string) (*lab.Proc, error) {
	args := append([]string{"--node", n.Name, "--state", state, "--ca-dir", caDir, "--pin-dir", n.PinDir, "--log-level", "warn"}, extra...)
	return l.Start(ctx, n.Netns, filepath.Join(l.Dir, n.Name+"-agent.log"), bin, args...)
}

// meshedPods is how many of the node's pods are in the mesh (the agent enrols them).
func meshedPods(n *lab.Node) int {
	want := 0
	for _, p := range n.Pods {
		if p.Spec.Mode != "none" {
			want++
		}
	}
	return want
}

// waitPinned waits until the node's agent has enrolled (pinned) n pods: read from the pins, not
// the agent's metrics, since a scrape would grow the very RSS the suite reports.
func waitPinned(node *lab.Node, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := redirect.PinnedPods(node.PinDir)
		if err == nil && got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s's agent enrolled %d of %d pods in %v (%v)", node.Name, got, n, timeout.Round(time.Millisecond), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitMesh waits, up to 20s, until every agent has enrolled its node's meshed pods (a connection
// dialed before would go around the mesh for as long as it lives) and web reaches api2 (an echo
// of one byte).
func (s *suite) waitMesh(ctx context.Context) error {
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range s.lab.Nodes {
		if err := waitPinned(n, meshedPods(n), time.Until(deadline)); err != nil {
			return err
		}
	}
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

// startWaypoint starts amesh-waypoint in the wp pod, unless it runs already, and waits until
// web's requests reach api2 through it. It does not depend on the agents (it speaks HBONE to
// them), so it outlives their restarts; it is started again only if it has exited.
func (s *suite) startWaypoint(ctx context.Context) error {
	if s.waypoint != nil {
		select {
		case <-s.waypoint.Done():
			fmt.Fprintf(os.Stderr, "bench: the waypoint exited (log %s); starting it again\n", s.waypoint.LogPath)
		default:
			return nil
		}
	}
	// warn: at info it writes one access line per request, and the run would measure its log.
	p, err := s.lab.Start(ctx, s.lab.Pod("wp").Netns, filepath.Join(s.lab.Dir, "waypoint.log"), s.waypointBin,
		"--state", s.state, "--name", "wp", "--namespace", "shop", "--service-account", "waypoint",
		"--ca-dir", s.caDir, "--log-level", "warn")
	if err != nil {
		return fmt.Errorf("start the waypoint: %w", err)
	}
	s.waypoint = p
	url := "http://" + net.JoinHostPort(waypointVIP, "80") + "/"
	if err := waitHTTP(ctx, s.lab.Pod("web"), url, 20*time.Second); err != nil {
		return fmt.Errorf("the waypoint (log %s): %w", p.LogPath, err)
	}
	return nil
}

// stopWaypoint stops the waypoint if it runs, giving it 3s to exit before it is killed.
func (s *suite) stopWaypoint() {
	if s.waypoint == nil {
		return
	}
	s.waypoint.Signal(syscall.SIGTERM)
	select {
	case <-s.waypoint.Done():
	case <-time.After(3 * time.Second):
		s.waypoint.Kill()
	}
}

// waitHTTP waits, up to timeout, until a GET of url from pod answers 200.
func waitHTTP(ctx context.Context, from *lab.Pod, url string, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return from.Dial(ctx, addr) },
		DisableKeepAlives: true,
	}}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("status %s", resp.Status)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s from %s: no 200 in %v: %w", url, from.Name, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
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
		// HTTP over one keep-alive connection, to service VIPs (the waypoint is named by a
		// service): the waypoint's cost is the ratio of the last to the one before it.
		{name: httpDirect, from: "c1", rrAddr: ip("s2") + ":" + httpPort, http: true},
		{name: httpNoWaypoint, from: "web", rrAddr: noWaypointVIP + ":80", agents: []string{"node1", "node2"}, base: httpDirect, http: true},
		{name: httpWaypoint, from: "web", rrAddr: waypointVIP + ":80", agents: []string{"node1", "node2"}, base: httpNoWaypoint, http: true, waypoint: true},
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
	if sc.waypoint {
		if err := s.startWaypoint(ctx); err != nil {
			return Result{}, fmt.Errorf("%s: %w", sc.name, err)
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
	r = Result{Scenario: s.name, Base: s.base, HTTP: s.http}
	if s.scrape {
		sctx, stop := context.WithCancel(ctx)
		done := make(chan int)
		go func() { done <- scrapeEverySecond(sctx, l, s.agents) }()
		defer func() { stop(); r.Scrapes = <-done }() // r is the named result: the count reaches the caller
	}
	mode, dest := "rr", []string{"-dest", s.rrAddr}
	if s.http {
		mode, dest = "http", []string{"-url", "http://" + s.rrAddr + "/"}
	}
	cpu0 := agentCPU(agents, s.agents)
	rr, err := runClient(ctx, l, self, s.from, mode, append(dest, "-qps", "1000", "-duration", d.String())...)
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
	mx, err := runClient(ctx, l, self, s.from, mode, append(dest, "-qps", "-1", "-duration", d.String())...)
	if err != nil {
		return r, err
	}
	r.RRMax, r.RRMaxQPS = pct(mx), mx["qps"]
	if s.http {
		return r, nil // no throughput or CPS: see Result.HTTP
	}
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
			if _, err := scrapeAgent(ctx, l.Node(name), time.Second); err == nil {
				ok++
			}
		}
		select {
		case <-ctx.Done():
			return ok
		case <-t.C:
		}
	}
}

// scrapeAgent reads the metrics of the node's agent (in the node's netns, on metricsAddr) within
// timeout: the body of a 200, or an error.
func scrapeAgent(ctx context.Context, node *lab.Node, timeout time.Duration) ([]byte, error) {
	client := http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return node.Dial(ctx, metricsAddr) },
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/stats/prometheus", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s's agent metrics: %w", node.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s's agent metrics: %s", node.Name, resp.Status)
	}
	return body, err
}

func pct(m map[string]float64) map[string]float64 {
	return map[string]float64{"p50": m["p50"], "p90": m["p90"], "p99": m["p99"], "p99.9": m["p99.9"]}
}

// agentCPU is the user+system CPU seconds the named agents have used.
func agentCPU(agents map[string]*lab.Proc, names []string) float64 {
	total := 0.0
	for _, n := range names {
		if p := agents[n]; p != nil {
			total += lab.CPUSeconds(p.Cmd.Process.Pid)
		}
	}
	return total
}
