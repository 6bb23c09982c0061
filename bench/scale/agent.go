package scale

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/test/k8s"
	"github.com/amesh-dev/amesh/test/lab"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// agentProc is the one amesh-agent the run measures, on lab node node1 with --kube.
type agentProc struct {
	proc        *lab.Proc
	node        *lab.Node
	logPath     string
	kubeconfig  string
	syncSeconds float64
}

const (
	healthAddr  = "127.0.0.1:15021"
	metricsAddr = "127.0.0.1:15020"
	adminAddr   = "127.0.0.1:15000"
)

// startAgent starts the agent against cp and waits until it is ready (at most 5 minutes: a
// large cluster's first list takes a while on a 2-vCPU machine).
func startAgent(ctx context.Context, l *lab.Lab, cp *k8s.ControlPlane, agentBin, dir string, extra ...string) (*agentProc, error) {
	n := l.Node("node1")
	kc := filepath.Join(dir, "agent.kubeconfig")
	if err := cp.WriteKubeconfig(kc, ""); err != nil {
		return nil, err
	}
	// With --kube the agent takes the cluster's CA from a directory (the Secret's mount); the
	// harness makes one of the trust domain the agent assumes.
	if _, err := identity.LoadOrCreateCA(spiffeid.RequireTrustDomainFromString("cluster.local"), filepath.Join(dir, "ca"), identity.CAConfig{}); err != nil {
		return nil, err
	}
	run := filepath.Join(dir, "run")
	if err := os.MkdirAll(run, 0o755); err != nil {
		return nil, err
	}
	a := &agentProc{node: n, logPath: filepath.Join(dir, "agent.log"), kubeconfig: kc}
	start := time.Now()
	args := append([]string{
		"--node", n.Name, "--kube", "--kubeconfig", kc, "--ca-dir", filepath.Join(dir, "ca"),
		"--pin-dir", n.PinDir, "--log-level", "warn", "--access-log", "off", "--drain-timeout", "1s",
		"--cni-socket", filepath.Join(run, "cni.sock"), "--handoff-socket", filepath.Join(run, "handoff.sock"),
		"--health-addr", healthAddr, "--metrics-addr", metricsAddr, "--admin-addr", adminAddr}, extra...)
	p, err := l.Start(ctx, n.Netns, a.logPath, agentBin, args...)
	if err != nil {
		return nil, err
	}
	a.proc = p
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if body, err := a.get(ctx, healthAddr, "/healthz/ready"); err == nil && strings.Contains(body, "ready") {
			break
		}
		select {
		case <-p.Done():
			return nil, fmt.Errorf("agent exited: %s", k8s.TailFile(a.logPath, 20))
		case <-ctx.Done():
			a.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.stop()
			return nil, fmt.Errorf("agent not ready in 5 minutes: %s", k8s.TailFile(a.logPath, 20))
		}
	}
	a.syncSeconds = time.Since(start).Seconds()
	return a, nil
}

func (a *agentProc) pid() int { return a.proc.Cmd.Process.Pid }

// stop stops the agent as the kubelet would (SIGTERM, then a kill after 10 s).
func (a *agentProc) stop() {
	a.proc.Signal(syscall.SIGTERM)
	select {
	case <-a.proc.Done():
	case <-time.After(10 * time.Second):
		a.proc.Kill()
		<-a.proc.Done()
	}
}

// fetch GETs path of the agent's server at addr, in the node's namespace, within timeout, and
// hands the answer to read.
func (a *agentProc) fetch(ctx context.Context, addr, path string, timeout time.Duration, read func(*http.Response) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return a.node.Dial(ctx, addr) }}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return read(resp)
}

// get returns the body at path of the agent's server at addr.
func (a *agentProc) get(ctx context.Context, addr, path string) (string, error) {
	var b strings.Builder
	err := a.fetch(ctx, addr, path, 2*time.Second, func(resp *http.Response) error {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			b.WriteString(sc.Text())
			b.WriteByte('\n')
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", path, resp.Status)
		}
		return sc.Err()
	})
	return b.String(), err
}

// profile saves the agent's pprof answer at path (admin API) to file.
func (a *agentProc) profile(ctx context.Context, path, file string) error {
	err := a.fetch(ctx, adminAddr, path, 5*time.Minute, func(resp *http.Response) error {
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		f, err := os.Create(file)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, resp.Body); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	if err != nil {
		return fmt.Errorf("scale: profile %s: %w", path, err)
	}
	return nil
}

// metric returns the sum of the samples of name (with any labels matching match) in the
// agent's /metrics.
func (a *agentProc) metric(ctx context.Context, name string, match string) float64 {
	body, err := a.get(ctx, metricsAddr, "/metrics")
	if err != nil {
		return 0
	}
	total := 0.0
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') || !strings.Contains(rest, match) {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			total += v
		}
	}
	return total
}

func (a *agentProc) heapMiB(ctx context.Context) float64 {
	return a.metric(ctx, "go_memstats_heap_inuse_bytes", "") / (1 << 20)
}

type builds struct{ full, incremental uint64 }

// builds reads the agent's count of state builds (amesh_state_builds_total, by kind).
func (a *agentProc) builds(ctx context.Context) builds {
	return builds{
		full:        uint64(a.metric(ctx, "amesh_state_builds_total", `kind="full"`)),
		incremental: uint64(a.metric(ctx, "amesh_state_builds_total", `kind="incremental"`)),
	}
}
