package bench

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/test/lab"
)

// CostConfig is the "cost per node" section: N pods a node, meshed by one amesh agent per node
// or by a ghostunnel pair per pod (the sidecar data path without L7), side by side.
type CostConfig struct {
	Agent      string        // amesh-agent binary
	Ghostunnel string        // ghostunnel binary; the sidecar half is skipped when absent
	Pods       []int         // pods per node, e.g. 10, 50, 100
	Rates      []int         // total requests per second across the pods, e.g. 1,000 and 5,000
	Duration   time.Duration // of each load run
	OutDir     string        // cost.md, cost.json, cost.png
}

// CostResult is one (mode, pods, rate) of the section. CPU and RSS are per node: the sum over
// the node's proxies (its agent, or its pods' sidecars), averaged over the two nodes.
type CostResult struct {
	Mode    string  `json:"mode"` // "amesh" or "sidecars"
	Pods    int     `json:"pods_per_node"`
	Rate    int     `json:"total_rps"`
	Procs   int     `json:"proxies_per_node"`
	CPU     float64 `json:"proxy_vcpu_per_node"`
	RSSMiB  float64 `json:"proxy_rss_mib_per_node"`
	P50     float64 `json:"p50_us"`
	P99     float64 `json:"p99_us"`
	Done    int     `json:"requests"`
	Failed  int     `json:"failed"`
	Achieve float64 `json:"achieved_rps"`
	// What the proxies of both nodes did per completed request (a request crosses two proxies:
	// the client's and the server's sidecar, or both nodes' agents): CPU, read- and write-like
	// system calls, and their threads' context switches. They say where the CPU goes: the same
	// reads and writes of the same sockets, or the work around them.
	CPUPerReq      float64 `json:"proxy_cpu_us_per_request"`
	KernelPerReq   float64 `json:"proxy_kernel_cpu_us_per_request"`
	IOPerReq       float64 `json:"proxy_io_syscalls_per_request"`
	SwitchesPerReq float64 `json:"proxy_context_switches_per_request"`
}

// costPorts: the apps' echo (the suite's), and in sidecar mode each pod's outbound proxy on its
// loopback and its inbound proxy on its address.
const (
	costOutbound = "19001"
	costInbound  = "19000"
)

// RunCost builds, for each pod count, a two-node lab with that many pods a node, each pod an
// echo server and a client of its peer on the other node (p<i> on node1 and q<i> on node2 call
// each other, so every node's proxies carry both directions), and measures each rate first with
// a ghostunnel pair per pod (agents not running: the pods are plain), then with the amesh agents.
func RunCost(ctx context.Context, cfg CostConfig) error {
	var results []CostResult
	if _, err := os.Stat(cfg.Ghostunnel); err != nil {
		fmt.Fprintf(os.Stderr, "bench: cost per node: no ghostunnel at %s (make peers builds it): the sidecar half is left out\n", cfg.Ghostunnel)
		cfg.Ghostunnel = ""
	}
	for _, n := range cfg.Pods {
		rs, err := costForPods(ctx, cfg, n)
		if err != nil {
			return fmt.Errorf("cost per node, %d pods: %w", n, err)
		}
		results = append(results, rs...)
	}
	return writeCost(cfg.OutDir, cfg.Duration, results)
}

func costForPods(ctx context.Context, cfg CostConfig, n int) ([]CostResult, error) {
	spec := lab.Config{Nodes: []lab.NodeSpec{{Name: "node1"}, {Name: "node2"}}}
	for i := range n {
		for k, prefix := range []string{"p", "q"} {
			spec.Nodes[k].Pods = append(spec.Nodes[k].Pods, lab.PodSpec{Name: fmt.Sprintf("%s%03d", prefix, i), Namespace: "cost", ServiceAccount: fmt.Sprintf("app%03d", i)})
		}
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
	state, caDir, ca, err := writeLabConfig(l, "")
	if err != nil {
		return nil, err
	}
	var out []CostResult
	if cfg.Ghostunnel != "" {
		procs, stop, err := startSidecars(ctx, l, ca, cfg.Ghostunnel, n)
		if err != nil {
			stop()
			return nil, err
		}
		for _, rate := range cfg.Rates {
			r, err := costRun(ctx, l, n, rate, cfg.Duration, procs, true)
			if err != nil {
				stop()
				return nil, fmt.Errorf("sidecars, %d RPS: %w", rate, err)
			}
			out = append(out, r)
			fmt.Fprintf(os.Stderr, "bench: cost per node: %d pods, %d RPS, sidecars done\n", n, rate)
		}
		stop()
	}
	agents := map[string][]int{}
	var procs []*lab.Proc
	defer func() {
		for _, p := range procs {
			p.Signal(syscall.SIGTERM)
			select {
			case <-p.Done():
			case <-time.After(3 * time.Second):
				p.Kill()
			}
		}
	}()
	for _, node := range l.Nodes {
		p, err := startAgent(ctx, l, node, cfg.Agent, state, caDir, "--access-log", "off", "--metrics-addr", metricsAddr)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
		agents[node.Name] = []int{p.Cmd.Process.Pid}
	}
	// Every pod enrolled before a client dials: a connection made before would go around the
	// mesh for as long as it lives.
	for _, node := range l.Nodes {
		if err := waitPinned(node, n, 60*time.Second); err != nil {
			return nil, fmt.Errorf("%w (log in %s)", err, l.Dir)
		}
	}
	if err := waitEcho(ctx, l.Pod("p000"), net.JoinHostPort(l.Pod("q000").IP.String(), lab.EchoPort), 30*time.Second); err != nil {
		return nil, fmt.Errorf("the agents did not come up (logs in %s): %w", l.Dir, err)
	}
	for _, rate := range cfg.Rates {
		r, err := costRun(ctx, l, n, rate, cfg.Duration, agents, false)
		if err != nil {
			return nil, fmt.Errorf("amesh, %d RPS: %w", rate, err)
		}
		out = append(out, r)
		fmt.Fprintf(os.Stderr, "bench: cost per node: %d pods, %d RPS, amesh done\n", n, rate)
	}
	// The amesh figures are the agents' only if the clients' connections went through them: each
	// of node1's clients opened one per run, as the source agent counts them.
	opened, err := openedBySource(ctx, l.Node("node1"))
	if err != nil {
		return nil, err
	}
	if want := float64(n * len(cfg.Rates)); opened < want {
		log, _ := os.ReadFile(filepath.Join(l.Dir, "node1-agent.log"))
		return nil, fmt.Errorf("node1's agent counted %v connections from its pods, want at least %v: the amesh runs did not go through it; its log:\n%s", opened, want, tailOf(string(log), 20))
	}
	return out, nil
}

// openedBySource is the node's agent's istio_tcp_connections_opened_total as the source
// reporter, summed over its labels.
func openedBySource(ctx context.Context, node *lab.Node) (float64, error) {
	return agentMetric(ctx, node, "istio_tcp_connections_opened_total{", `reporter="source"`)
}

// agentMetric sums the samples of the node's agent whose line starts with prefix and holds
// label (any, when empty).
func agentMetric(ctx context.Context, node *lab.Node, prefix, label string) (float64, error) {
	body, err := scrapeAgent(ctx, node, 5*time.Second)
	if err != nil {
		return 0, err
	}
	total := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, prefix) && strings.Contains(line, label) {
			if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
				total += v
			}
		}
	}
	return total, nil
}

// startSidecars starts, in every pod, the ghostunnel pair a sidecar mesh would put beside it:
// an inbound proxy on the pod's address (mTLS in, to the app on loopback) and an outbound proxy
// on its loopback (to its peer's inbound proxy), each pod with its own SVID from the same CA. It
// returns the proxies' pids by node, and the function that stops them.
func startSidecars(ctx context.Context, l *lab.Lab, ca *identity.CA, ghost string, n int) (map[string][]int, func(), error) {
	var procs []*lab.Proc
	stop := func() {
		for _, p := range procs {
			p.Kill()
		}
		for _, p := range procs {
			p.Wait()
		}
	}
	dir := filepath.Join(l.Dir, "sidecars")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, stop, err
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
		return p
	}
	caFile := write("ca.crt", "CERTIFICATE", ca.Root().Raw)
	id := func(i int) string { return fmt.Sprintf("spiffe://%s/ns/cost/sa/app%03d", l.TrustDomain, i) }
	pids := map[string][]int{}
	for i := range n {
		for k, name := range []string{fmt.Sprintf("p%03d", i), fmt.Sprintf("q%03d", i)} {
			pod, peer := l.Pod(name), l.Pod([]string{fmt.Sprintf("q%03d", i), fmt.Sprintf("p%03d", i)}[k])
			s, err := ca.IssueWithIPs(ctx, spiffeid.RequireFromString(id(i)), []net.IP{pod.IP.AsSlice()})
			if err != nil {
				return nil, stop, err
			}
			key, err := x509.MarshalPKCS8PrivateKey(s.PrivateKey)
			if err != nil {
				return nil, stop, err
			}
			crt, keyFile := write(name+".crt", "CERTIFICATE", s.Certificates[0].Raw), write(name+".key", "PRIVATE KEY", key)
			for _, args := range [][]string{
				{"server", "--quiet=all", "--listen", net.JoinHostPort(pod.IP.String(), costInbound), "--target", "127.0.0.1:" + lab.EchoPort,
					"--cert", crt, "--key", keyFile, "--cacert", caFile, "--allow-uri", id(i)},
				{"client", "--quiet=all", "--listen", "127.0.0.1:" + costOutbound, "--target", net.JoinHostPort(peer.IP.String(), costInbound),
					"--cert", crt, "--key", keyFile, "--cacert", caFile, "--verify-uri", id(i)},
			} {
				p, err := l.Start(ctx, pod.Netns, filepath.Join(dir, name+"-"+args[0]+".log"), ghost, args...)
				if err != nil {
					return nil, stop, err
				}
				procs = append(procs, p)
				pids[pod.Node.Name] = append(pids[pod.Node.Name], p.Cmd.Process.Pid)
			}
		}
	}
	for i := range n {
		for _, name := range []string{fmt.Sprintf("p%03d", i), fmt.Sprintf("q%03d", i)} {
			if err := waitEcho(ctx, l.Pod(name), "127.0.0.1:"+costOutbound, 30*time.Second); err != nil {
				return nil, stop, fmt.Errorf("the sidecars of %s (logs in %s): %w", name, dir, err)
			}
		}
	}
	return pids, stop, nil
}

// waitEcho waits until an echo of one byte from pod to addr works.
func waitEcho(ctx context.Context, pod *lab.Pod, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := func() error {
			c, err := pod.Dial(ctx, addr)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Second))
			if _, err := c.Write([]byte("x")); err != nil {
				return err
			}
			_, err = io.ReadFull(c, make([]byte, 1))
			return err
		}()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// costRun offers rate requests per second in total for d, spread over the 2n clients (one
// connection each, warmed by one echo, 1 KiB echoed per request, each client on its own fixed
// schedule), and reads the proxies' CPU over the run and their RSS at its end.
func costRun(ctx context.Context, l *lab.Lab, n, rate int, d time.Duration, proxies map[string][]int, sidecars bool) (CostResult, error) {
	mode := "amesh"
	if sidecars {
		mode = "sidecars"
	}
	r := CostResult{Mode: mode, Pods: n, Rate: rate, Procs: (len(proxies["node1"]) + len(proxies["node2"])) / 2}
	type client struct {
		pod  *lab.Pod
		addr string
	}
	var clients []client
	for i := range n {
		p, q := l.Pod(fmt.Sprintf("p%03d", i)), l.Pod(fmt.Sprintf("q%03d", i))
		if sidecars {
			clients = append(clients, client{p, "127.0.0.1:" + costOutbound}, client{q, "127.0.0.1:" + costOutbound})
		} else {
			clients = append(clients, client{p, net.JoinHostPort(q.IP.String(), lab.EchoPort)}, client{q, net.JoinHostPort(p.IP.String(), lab.EchoPort)})
		}
	}
	conns := make([]net.Conn, 0, len(clients))
	defer func() { closeAll(conns) }()
	for _, c := range clients {
		// One echo before the measured run, as fortio's runner does: the connection's setup
		// (an HBONE connection per identity, a TLS handshake per sidecar pair) is not a request.
		cs, err := openConns(ctx, []*lab.Pod{c.pod}, c.addr, 1)
		conns = append(conns, cs...)
		if err != nil {
			return r, fmt.Errorf("client in %s: %w", c.pod.Name, err)
		}
	}
	act0 := procsActivity(proxies)
	res := offer(ctx, conns, rate, d)
	elapsed := res.elapsed.Seconds()
	act := procsActivity(proxies)
	cpu := act.CPUSeconds - act0.CPUSeconds
	r.CPU = cpu / elapsed / 2
	r.Failed = res.failed
	for _, pids := range proxies {
		for _, pid := range pids {
			if m, err := lab.RSSMiB(pid); err == nil {
				r.RSSMiB += m
			}
		}
	}
	r.RSSMiB /= 2
	lat := res.lat
	r.Done = len(lat)
	if len(lat) == 0 {
		return r, errors.New("no request completed")
	}
	r.P50, r.P99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	r.Achieve = float64(len(lat)) / elapsed
	done := float64(len(lat))
	r.CPUPerReq = cpu * 1e6 / done
	r.KernelPerReq = (act.KernelSeconds - act0.KernelSeconds) * 1e6 / done
	r.IOPerReq = (act.IOSyscalls - act0.IOSyscalls) / done
	r.SwitchesPerReq = (act.CtxSwitches - act0.CtxSwitches) / done
	if r.Failed > 0 {
		return r, fmt.Errorf("%d clients failed", r.Failed)
	}
	return r, nil
}

// procsActivity is the processes' Activity, summed.
func procsActivity(byNode map[string][]int) lab.Activity {
	var total lab.Activity
	for _, pids := range byNode {
		for _, pid := range pids {
			a := lab.ActivityOf(pid)
			total.CPUSeconds += a.CPUSeconds
			total.KernelSeconds += a.KernelSeconds
			total.IOSyscalls += a.IOSyscalls
			total.CtxSwitches += a.CtxSwitches
		}
	}
	return total
}

// writeCost writes cost.json, cost.md (with amesh ÷ sidecars) and cost.png, and prints the table.
func writeCost(outDir string, d time.Duration, rs []CostResult) error {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "duration": d.String(), "results": rs}, "", "  ")
	if err := os.WriteFile(filepath.Join(outDir, "cost.json"), js, 0o644); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Cost per node, %s, each load %v: N pods a node, every pod an echo server and a client of its peer on the other node (one connection, warmed by one echo, 1 KiB per request, the total rate spread evenly). amesh: one agent per node; sidecars: a ghostunnel pair (inbound and outbound proxy) in every pod, mTLS with SVIDs of the same CA. Proxy CPU and RSS are per node (the sum over that node's proxies, the mean of the two nodes); latency is across all requests.\n\n", time.Now().UTC().Format("2006-01-02"), d)
	b.WriteString("| pods/node | total RPS | mode | proxies/node | proxy vCPU/node | proxy RSS MiB/node | p50 µs | p99 µs | achieved RPS | CPU ÷ sidecars | RSS ÷ sidecars | p50 ÷ sidecars |\n")
	b.WriteString("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	find := func(mode string, n, rate int) *CostResult {
		for i := range rs {
			if rs[i].Mode == mode && rs[i].Pods == n && rs[i].Rate == rate {
				return &rs[i]
			}
		}
		return nil
	}
	for _, r := range rs {
		ratios := "– | – | –"
		if s := find("sidecars", r.Pods, r.Rate); r.Mode == "amesh" && s != nil {
			ratios = fmt.Sprintf("%.2f | %.2f | %.2f", r.CPU/s.CPU, r.RSSMiB/s.RSSMiB, r.P50/s.P50)
		}
		fmt.Fprintf(&b, "| %d | %d | %s | %d | %.3f | %.1f | %.0f | %.0f | %.0f | %s |\n", r.Pods, r.Rate, r.Mode, r.Procs, r.CPU, r.RSSMiB, r.P50, r.P99, r.Achieve, ratios)
	}
	b.WriteString("\nWhat the proxies did per request (both nodes' proxies, a request crossing two of them): CPU, of it in the kernel (stime), read- and write-like system calls (/proc/PID/io), their threads' context switches. amesh's kernel CPU ÷ the sidecars' CPU is the lowest amesh's CPU ratio could reach on this data path if its user-space work cost nothing:\n\n")
	b.WriteString("| pods/node | total RPS | mode | proxy CPU µs/request | in the kernel µs/request | I/O syscalls/request | context switches/request | CPU µs per I/O syscall | kernel ÷ sidecars' CPU |\n")
	b.WriteString("|---:|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		perIO := 0.0
		if r.IOPerReq > 0 {
			perIO = r.CPUPerReq / r.IOPerReq
		}
		floor := "–"
		if s := find("sidecars", r.Pods, r.Rate); r.Mode == "amesh" && s != nil && s.CPUPerReq > 0 {
			floor = fmt.Sprintf("%.2f", r.KernelPerReq/s.CPUPerReq)
		}
		fmt.Fprintf(&b, "| %d | %d | %s | %.1f | %.1f | %.1f | %.1f | %.2f | %s |\n", r.Pods, r.Rate, r.Mode, r.CPUPerReq, r.KernelPerReq, r.IOPerReq, r.SwitchesPerReq, perIO, floor)
	}
	if err := os.WriteFile(filepath.Join(outDir, "cost.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	fmt.Print(b.String())
	return writeCostPlot(filepath.Join(outDir, "cost.png"), rs)
}

// writeCostPlot draws proxy memory and CPU per node against pods per node, a line per mode and
// rate.
func writeCostPlot(path string, rs []CostResult) error {
	mem, cpu := plot.New(), plot.New()
	mem.Title.Text, mem.X.Label.Text, mem.Y.Label.Text = "proxy memory per node (RSS), lower is better", "pods per node", "MiB"
	cpu.Title.Text, cpu.X.Label.Text, cpu.Y.Label.Text = "proxy CPU per node, lower is better", "pods per node", "vCPU"
	type key struct {
		mode string
		rate int
	}
	var keys []key
	for _, r := range rs {
		if k := (key{r.Mode, r.Rate}); !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	for i, k := range keys {
		var m, c plotter.XYs
		for _, r := range rs {
			if r.Mode == k.mode && r.Rate == k.rate {
				m = append(m, plotter.XY{X: float64(r.Pods), Y: r.RSSMiB})
				c = append(c, plotter.XY{X: float64(r.Pods), Y: r.CPU})
			}
		}
		label := fmt.Sprintf("%s, %d RPS", k.mode, k.rate)
		for _, pc := range []struct {
			p   *plot.Plot
			xys plotter.XYs
		}{{mem, m}, {cpu, c}} {
			line, points, err := plotter.NewLinePoints(pc.xys)
			if err != nil {
				return fmt.Errorf("plot: %w", err)
			}
			line.Color, points.Color = palette[i%len(palette)], palette[i%len(palette)]
			pc.p.Add(line, points)
			pc.p.Legend.Add(label, line, points)
		}
	}
	mem.Legend.Top, mem.Legend.Left = true, true
	cpu.Legend.Top, cpu.Legend.Left = true, true
	return writeStacked(path, 10*vg.Inch, 9*vg.Inch, mem, cpu)
}

func tailOf(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
