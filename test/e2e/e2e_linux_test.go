// Package e2e runs amesh end to end in the netns lab: real agents (the amesh-agent binary, one
// per node namespace), real curl between pods, eBPF capture, HBONE across the lab's underlay.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/test/lab"
	"github.com/amesh-dev/amesh/test/spire"
)

const services = `
  - name: api
    namespace: shop
    vips: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}]
    selector: {app: api}
`

const policies = `
  - name: api-allow-web
    namespace: shop
    selector: {app: api}
    action: ALLOW
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
`

// cluster is a running lab: the lab itself, one agent per node, an HTTP app in every pod.
type cluster struct {
	t      testing.TB
	lab    *lab.Lab
	bin    string
	state  string
	agents map[string]*lab.Proc
	args   []string // extra agent flags
	logs   map[string]string
	apps   []*http.Server
	echoes []net.Listener
	closed bool
	// waypointLog is the log of the waypoint startWaypoint started last.
	waypointLog string
}

var agentBin, ctlBin, waypointBin string

func TestMain(m *testing.M) {
	if addr := os.Getenv(echoProcEnv); addr != "" {
		os.Exit(echoProc(addr))
	}
	dir, err := os.MkdirTemp("", "amesh-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "amesh-agent")
	ctlBin = filepath.Join(dir, "ameshctl")
	waypointBin = filepath.Join(dir, "amesh-waypoint")
	for bin, pkg := range map[string]string{agentBin: "github.com/amesh-dev/amesh/cmd/amesh-agent", ctlBin: "github.com/amesh-dev/amesh/cmd/ameshctl", waypointBin: "github.com/amesh-dev/amesh/cmd/amesh-waypoint"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// e2eNodes is the cluster the tests run on.
var e2eNodes = []lab.NodeSpec{
	{Name: "node1", Pods: []lab.PodSpec{
		{Name: "web", Namespace: "shop", ServiceAccount: "web", Labels: map[string]string{"app": "web"}},
		{Name: "api1", Namespace: "shop", ServiceAccount: "api", Labels: map[string]string{"app": "api"}},
		{Name: "plain", Namespace: "legacy", ServiceAccount: "default", Mode: "none", Labels: map[string]string{"app": "plain"}},
		{Name: "nosy", Namespace: "shop", ServiceAccount: "nosy", Labels: map[string]string{"app": "nosy"}},
		{Name: "plain2", Namespace: "legacy", ServiceAccount: "default", Mode: "none", Labels: map[string]string{"app": "plain"}},
	}},
	{Name: "node2", Pods: []lab.PodSpec{
		{Name: "api2", Namespace: "shop", ServiceAccount: "api", Labels: map[string]string{"app": "api"}, ProbePorts: []uint16{8080}},
		{Name: "other", Namespace: "shop", ServiceAccount: "other", Labels: map[string]string{"app": "other"}},
		{Name: "perm", Namespace: "shop", ServiceAccount: "perm", InboundMode: "permissive", Labels: map[string]string{"app": "perm"}},
		{Name: "legacy", Namespace: "legacy", ServiceAccount: "default", Mode: "none", Labels: map[string]string{"app": "legacy"}},
	}},
}

func newCluster(t testing.TB, agentArgs ...string) *cluster {
	return newClusterOf(t, e2eNodes, agentArgs...)
}

// newClusterOf builds a lab of nodes, writes its state, serves an HTTP app (:8080) and an echo
// (:9000) in every pod, starts one agent per node and waits until they enrolled their pods.
func newClusterOf(t testing.TB, nodes []lab.NodeSpec, agentArgs ...string) *cluster {
	c := startCluster(t, nodes, agentArgs...)
	c.waitReady()
	return c
}

// startCluster is newClusterOf without the wait for the agents to enroll their pods.
func startCluster(t testing.TB, nodes []lab.NodeSpec, agentArgs ...string) *cluster {
	testenv.RequireRoot(t)
	ctx := context.Background()
	l, err := lab.New(ctx, lab.Config{Nodes: nodes})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, lab: l, bin: agentBin, state: filepath.Join(l.Dir, "state.yaml"), agents: map[string]*lab.Proc{}, logs: map[string]string{}, args: agentArgs}
	t.Cleanup(c.close)
	c.writeState(nil)
	for _, p := range l.Pods() {
		c.serveApp(p)
	}
	for _, n := range l.Nodes {
		c.startAgent(n.Name)
	}
	return c
}

// close stops the agents, uninstalls their eBPF state and tears the lab down. Idempotent.
func (c *cluster) close() {
	if c.closed {
		return
	}
	c.closed = true
	for _, srv := range c.apps {
		srv.Close()
	}
	for _, l := range c.echoes {
		l.Close()
	}
	for _, n := range c.lab.Nodes {
		c.stopAgent(n.Name)
		if out, err := exec.Command(c.bin, "--uninstall", "--pin-dir", c.pinDir(n.Name)).CombinedOutput(); err != nil {
			c.t.Errorf("uninstall %s: %v\n%s", n.Name, err, out)
		}
	}
	if c.t.Failed() {
		for n, p := range c.logs {
			b, _ := os.ReadFile(p)
			c.t.Logf("agent %s log:\n%s", n, tail(b, 60))
		}
	}
	if err := c.lab.Close(); err != nil {
		c.t.Errorf("lab close: %v", err)
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// writeState writes the lab's state with the test policies; modes overrides pods' modes.
func (c *cluster) writeState(modes map[string]string) {
	for name, mode := range modes {
		c.lab.Pod(name).Spec.Mode = mode
	}
	if err := c.lab.WriteState(c.state, services, policies); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) pinDir(node string) string { return c.lab.Node(node).PinDir }

func (c *cluster) startAgent(node string) {
	c.startAgentLogging(node, filepath.Join(c.lab.Dir, node+"-agent.log"))
}

// startAgentLogging starts node's agent logging to logPath, which logLines(node) reads from
// then on.
func (c *cluster) startAgentLogging(node, logPath string) {
	n := c.lab.Node(node)
	c.logs[node] = logPath
	args := []string{"--node", node, "--state", c.state, "--ca-dir", filepath.Join(c.lab.Dir, "ca"),
		"--pin-dir", c.pinDir(node), "--drain-timeout", "1s"}
	for _, a := range c.args {
		switch a {
		case handoffInLab:
			a = "--handoff-socket=" + c.handoffSocket(node)
		case spireInLab:
			a = "--spire-admin-socket=" + spire.AdminSocket(c.spireDir(), node)
		}
		args = append(args, a)
	}
	p, err := c.lab.Start(context.Background(), n.Netns, logPath, c.bin, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.agents[node] = p
}

// handoffInLab, among a cluster's agent flags, gives each node's agent a hand-off socket of its
// own in the lab's directory (handoffSocket).
const handoffInLab = "--handoff-socket=lab"

func (c *cluster) handoffSocket(node string) string {
	return filepath.Join(c.lab.Dir, "run-"+node, "handoff.sock")
}

func (c *cluster) stopAgent(node string) {
	if p := c.agents[node]; p != nil {
		p.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			p.Kill()
		}
		delete(c.agents, node)
	}
}

// serveApp runs an HTTP app on :8080 in the pod that tells who called it, and an echo on :9000.
func (c *cluster) serveApp(p *lab.Pod) {
	el, err := p.Listen(":" + lab.EchoPort)
	if err != nil {
		c.t.Fatal(err)
	}
	go lab.Echo(el, nil)
	c.echoes = append(c.echoes, el)
	// :9001 reads four bytes and resets the connection (SO_LINGER 0).
	rl, err := p.Listen(":9001")
	if err != nil {
		c.t.Fatal(err)
	}
	go func() {
		for {
			conn, err := rl.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				io.ReadFull(conn, make([]byte, 4))
				conn.SetLinger(0)
				conn.Close()
			}()
		}
	}()
	c.echoes = append(c.echoes, rl)
	ln, err := p.Listen(":8080")
	if err != nil {
		c.t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s; client %s\n", p.Name, r.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	c.apps = append(c.apps, srv)
}

// curl runs the real curl inside a pod and returns its output and error.
func (c *cluster) curl(from, url string, extra ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := append([]string{"-sS", "--max-time", "3", url}, extra...)
	out, err := c.lab.Command(ctx, c.lab.Pod(from).Netns, "curl", args...).CombinedOutput()
	return string(out), err
}

func (c *cluster) url(pod string) string {
	return fmt.Sprintf("http://%s:8080/", c.lab.Pod(pod).IP)
}

// waitReady waits until every agent has logged the enrollment of each of its node's mesh pods.
func (c *cluster) waitReady() {
	testenv.WaitFor(c.t, "every agent to enroll its pods", 20*time.Second, func() bool {
		for _, n := range c.lab.Nodes {
			want := 0
			for _, p := range n.Pods {
				if p.Spec.Mode != "none" {
					want++
				}
			}
			if c.enrolled(n.Name) < want {
				return false
			}
		}
		return true
	})
}

// enrolled counts the distinct pods a node's agent has logged as enrolled since it started last.
func (c *cluster) enrolled(node string) int {
	pods := map[string]bool{}
	for _, m := range c.logLines(node) {
		switch m["msg"] {
		case "agent started":
			clear(pods)
		case "pod enrolled":
			pods[fmt.Sprint(m["pod"])] = true
		}
	}
	return len(pods)
}

// accessLines returns the access-log lines of a node's agent.
func (c *cluster) accessLines(node string) []map[string]any { return accessOf(c.logLines(node)) }

// logLines returns a node agent's JSON log lines.
func (c *cluster) logLines(node string) []map[string]any { return logLinesOf(c.t, c.logs[node]) }

func (c *cluster) hasAccess(node string, want map[string]string) bool {
	return anyLine(c.accessLines(node), want)
}

// logLinesOf returns the JSON lines of the agent log at path.
func logLinesOf(t testing.TB, path string) []map[string]any {
	lines, err := lab.ReadJSONLines(path)
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

// accessOf keeps the access-log lines ("msg":"access") of lines.
func accessOf(lines []map[string]any) []map[string]any {
	var out []map[string]any
	for _, m := range lines {
		if m["msg"] == "access" {
			out = append(out, m)
		}
	}
	return out
}

// anyLine reports whether one of lines has every key of want, with that value.
func anyLine(lines []map[string]any, want map[string]string) bool {
	for _, m := range lines {
		ok := true
		for k, v := range want {
			ok = ok && fmt.Sprint(m[k]) == v
		}
		if ok {
			return true
		}
	}
	return false
}

func TestMesh(t *testing.T) {
	c := newCluster(t)
	web, api1, api2 := c.lab.Pod("web"), c.lab.Pod("api1"), c.lab.Pod("api2")

	t.Run("by default the start-up probe picks the kernel short-circuit", func(t *testing.T) {
		for _, n := range c.lab.Nodes {
			if !anyLine(c.logLines(n.Name), map[string]string{"msg": "agent started", "same_node": "kernel"}) {
				t.Errorf("%s's agent did not start with same_node=kernel (probe failed or default changed)", n.Name)
			}
		}
	})

	t.Run("cross-node and same-node curl, the app sees the client pod's IP", func(t *testing.T) {
		for _, dst := range []string{"api2", "api1"} {
			out, err := c.curl("web", c.url(dst))
			if err != nil {
				t.Fatalf("web -> %s: %v: %s", dst, err, out)
			}
			if !strings.Contains(out, "hello from "+dst) || !strings.Contains(out, "client "+web.IP.String()+":") {
				t.Errorf("web -> %s answered %q, want the app to see client %s", dst, out, web.IP)
			}
		}
	})

	t.Run("a service VIP is balanced over its endpoints and tunneled", func(t *testing.T) {
		seen := map[string]bool{}
		for range 6 {
			out, err := c.curl("web", "http://10.96.0.10/")
			if err != nil {
				t.Fatalf("web -> VIP: %v %s", err, out)
			}
			for _, name := range []string{"api1", "api2"} {
				if strings.Contains(out, "hello from "+name) {
					seen[name] = true
				}
			}
		}
		if !seen["api1"] || !seen["api2"] {
			t.Errorf("6 requests to the VIP reached %v, want both endpoints", seen)
		}
		testenv.WaitFor(t, "node1's outbound HBONE access line for the VIP", 3*time.Second, func() bool {
			return c.hasAccess("node1", map[string]string{"direction": "outbound", "path": "hbone", "dst_addr": "10.96.0.10:80", "result": "ok"})
		})
	})

	t.Run("the destination sees web's SPIFFE identity", func(t *testing.T) {
		want := map[string]string{"direction": "inbound", "result": "ok",
			"src_id": "spiffe://cluster.local/ns/shop/sa/web", "dst_id": "spiffe://cluster.local/ns/shop/sa/api",
			"dst_addr": api2.IP.String() + ":8080"}
		testenv.WaitFor(t, "node2's access log of web -> api2", 3*time.Second, func() bool { return c.hasAccess("node2", want) })
		// Same node: decided by node1's agent, which holds both identities.
		want = map[string]string{"direction": "outbound", "path": "splice", "result": "ok",
			"src_id": "spiffe://cluster.local/ns/shop/sa/web", "dst_id": "spiffe://cluster.local/ns/shop/sa/api",
			"dst_addr": api1.IP.String() + ":8080"}
		testenv.WaitFor(t, "node1's access log of web -> api1", 3*time.Second, func() bool { return c.hasAccess("node1", want) })
	})

	t.Run("an ALLOW policy naming another principal denies", func(t *testing.T) {
		// nosy (node1) -> api2 (node2) over HBONE: denied by node2's agent.
		out, err := c.curl("nosy", c.url("api2"))
		if err == nil {
			t.Fatalf("nosy -> api2 succeeded (%q); the policy allows only web", out)
		}
		testenv.WaitFor(t, "the denial in node2's access log", 3*time.Second, func() bool {
			return c.hasAccess("node2", map[string]string{"direction": "inbound", "result": "denied", "src_id": "spiffe://cluster.local/ns/shop/sa/nosy"})
		})
		// other -> api2, both on node2: denied by node2's agent before any connection is made.
		if out, err := c.curl("other", c.url("api2")); err == nil {
			t.Fatalf("other -> api2 succeeded (%q); the policy allows only web", out)
		}
		testenv.WaitFor(t, "the same-node denial in node2's access log", 3*time.Second, func() bool {
			return c.hasAccess("node2", map[string]string{"direction": "outbound", "path": "splice", "result": "denied", "src_id": "spiffe://cluster.local/ns/shop/sa/other"})
		})
		// other -> perm has no policy: allowed.
		if out, err := c.curl("other", c.url("perm")); err != nil || !strings.Contains(out, "hello from perm") {
			t.Errorf("other -> perm (no policy) = %q, %v", out, err)
		}
	})

	t.Run("an unenrolled pod reaches a PERMISSIVE pod, not a STRICT one", func(t *testing.T) {
		if out, err := c.curl("legacy", c.url("perm")); err != nil || !strings.Contains(out, "hello from perm") {
			t.Errorf("legacy -> perm (permissive) = %q, %v", out, err)
		}
		if out, err := c.curl("legacy", c.url("api2")); err == nil {
			t.Errorf("legacy -> api2 (strict) succeeded in plaintext: %q", out)
		}
		testenv.WaitFor(t, "the plaintext refusal in node2's access log", 3*time.Second, func() bool {
			return c.hasAccess("node2", map[string]string{"direction": "inbound_plaintext", "result": "refused"})
		})
	})

	t.Run("kubelet probes from the node reach a STRICT pod's probe ports, and only those", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		node2 := c.lab.Node("node2").Netns
		out, err := c.lab.Command(ctx, node2, "curl", "-sS", "--max-time", "3", c.url("api2")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "hello from api2") {
			t.Errorf("probe-like GET from node2 to api2's probe port 8080: %q, %v", out, err)
		}
		echo := net.JoinHostPort(api2.IP.String(), "9000")
		if out, err := c.lab.Command(ctx, node2, "curl", "-sS", "--max-time", "2", "telnet://"+echo).CombinedOutput(); err == nil {
			t.Errorf("node2 reached api2's non-probe port 9000 in plaintext: %q", out)
		}
		if out, err := c.lab.Command(ctx, c.lab.Node("node1").Netns, "curl", "-sS", "--max-time", "2", c.url("api2")).CombinedOutput(); err == nil {
			t.Errorf("another node reached api2's probe port in plaintext: %q", out)
		}
		// Traffic from one of the node's own addresses that is not the node's own probe (a
		// NodePort connection SNATed by kube-proxy, a hostNetwork process bound to the node's
		// IP) is not exempt: only connects the node makes itself leave from the probe source.
		nodeIP := c.lab.Node("node2").IP.String()
		if out, err := c.lab.Command(ctx, node2, "curl", "-sS", "--max-time", "2", "--interface", nodeIP, c.url("api2")).CombinedOutput(); err == nil {
			t.Errorf("plaintext from node2's address %s (bound, not the probe source) reached api2's probe port: %q", nodeIP, out)
		}
	})

	t.Run("on the underlay, enrolled traffic is only TLS to 15008", func(t *testing.T) {
		cap, err := c.lab.Capture()
		if err != nil {
			t.Fatal(err)
		}
		marker := "amesh-marker-" + c.lab.Prefix
		for range 3 {
			if out, err := c.curl("web", c.url("api2"), "-H", "X-Marker: "+marker, "-d", marker); err != nil {
				t.Fatalf("web -> api2: %v: %s", err, out)
			}
		}
		pkts := cap.Stop()
		if lab.ContainsPayload(pkts, []byte(marker)) {
			t.Fatal("the marker crossed the underlay in plaintext")
		}
		hbone := 0
		for _, p := range pkts {
			if len(p.Payload) == 0 {
				continue
			}
			if p.Dst.Port() == 15008 || p.Src.Port() == 15008 {
				hbone++
				continue
			}
			t.Errorf("payload on the underlay outside HBONE: %v -> %v (%d bytes)", p.Src, p.Dst, len(p.Payload))
		}
		if hbone == 0 {
			t.Error("no HBONE segment seen: did the traffic cross the underlay at all?")
		}
		// A control: an unmeshed pod's plaintext is visible to the same capture.
		cap, err = c.lab.Capture()
		if err != nil {
			t.Fatal(err)
		}
		if out, err := c.curl("legacy", c.url("plain"), "-d", marker); err != nil {
			t.Fatalf("legacy -> plain (both unmeshed, across nodes): %v %s", err, out)
		}
		if !lab.ContainsPayload(cap.Stop(), []byte(marker)) {
			t.Error("the capture did not see an unmeshed pod's plaintext marker: the capture is blind")
		}
	})
}

// TestAgentKilled: SIGKILL the source node's agent during traffic; new connections from its
// pods are refused and no plaintext leaks; a restarted agent carries traffic again within 1s.
func TestAgentKilled(t *testing.T) {
	c := newCluster(t)
	cap, err := c.lab.Capture()
	if err != nil {
		t.Fatal(err)
	}
	marker := "amesh-killed-" + c.lab.Prefix
	// Traffic in flight while the agent dies.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.curl("web", c.url("api2"), "-d", marker, "--max-time", "1")
		}
	}()
	time.Sleep(300 * time.Millisecond)
	c.agents["node1"].Kill()
	c.agents["node1"].Wait()
	delete(c.agents, "node1")
	time.Sleep(300 * time.Millisecond)
	out, err := c.curl("web", c.url("api2"), "-d", marker)
	if err == nil {
		t.Errorf("with node1's agent dead, web -> api2 succeeded: %q", out)
	} else if !strings.Contains(out, "Connection refused") && !strings.Contains(out, "Couldn't connect") {
		t.Errorf("with the agent dead, curl said %q, want connection refused", out)
	}
	close(stop)
	<-done
	// Inbound to a pod of the dead agent's node is dropped, not handed to the app in plaintext.
	if out, err := c.curl("legacy", c.url("web"), "-d", marker, "--max-time", "1"); err == nil {
		t.Errorf("with node1's agent dead, plaintext legacy -> web reached the app: %q", out)
	}
	if lab.ContainsPayload(cap.Stop(), []byte(marker)) {
		t.Fatal("the marker crossed the underlay in plaintext while the agent was dead")
	}

	restart := time.Now()
	c.startAgent("node1")
	for {
		if out, err := c.curl("web", c.url("api2"), "--max-time", "1"); err == nil && strings.Contains(out, "hello from api2") {
			break
		}
		if time.Since(restart) > 10*time.Second {
			t.Fatal("traffic did not recover within 10s of the restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// From the agent being started to traffic flowing again, without touching the pods.
	recovered := time.Since(restart)
	t.Logf("traffic recovered %v after the restart", recovered.Round(time.Millisecond))
	if recovered > time.Second {
		t.Errorf("traffic took %v to recover after the restart, want ≤ 1s", recovered)
	}
}

// TestEnrollByEditingState: taking web out of the mesh in the state file stops its capture (its
// traffic is then plaintext, which STRICT api2 refuses and PERMISSIVE perm serves); putting it
// back restarts it; the pod itself is never restarted.
func TestEnrollByEditingState(t *testing.T) {
	c := newCluster(t)
	c.writeState(map[string]string{"web": "none"})
	testenv.WaitFor(t, "web's capture to stop", 5*time.Second, func() bool {
		_, err := c.curl("web", c.url("api2"), "--max-time", "1")
		return err != nil
	})
	cap, err := c.lab.Capture()
	if err != nil {
		t.Fatal(err)
	}
	marker := "amesh-unenrolled-" + c.lab.Prefix
	if out, err := c.curl("web", c.url("perm"), "-d", marker); err != nil {
		t.Fatalf("unenrolled web -> permissive perm: %v %s", err, out)
	}
	if !lab.ContainsPayload(cap.Stop(), []byte(marker)) {
		t.Error("an unenrolled pod's traffic was not plaintext on the underlay: still captured?")
	}
	c.writeState(map[string]string{"web": "ambient"})
	testenv.WaitFor(t, "web's capture to start again", 5*time.Second, func() bool {
		out, err := c.curl("web", c.url("api2"), "--max-time", "1")
		return err == nil && strings.Contains(out, "hello from api2")
	})
}

// bpfLinks returns the IDs of every bpf_link on the machine.
func bpfLinks(t *testing.T) map[float64]bool {
	out, err := exec.Command("bpftool", "link", "show", "-j").Output()
	if err != nil {
		t.Fatalf("bpftool link show: %v", err)
	}
	var links []map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(out), &links); err != nil && len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("bpftool output: %v", err)
	}
	ids := map[float64]bool{}
	for _, l := range links {
		if id, ok := l["id"].(float64); ok {
			ids[id] = true
		}
	}
	return ids
}

// TestTeardownLeavesNothing: after a run, no namespace, pin, bpf link or agent process of it
// remains.
func TestTeardownLeavesNothing(t *testing.T) {
	testenv.RequireRoot(t)
	before := bpfLinks(t)
	c := newCluster(t)
	if out, err := c.curl("web", c.url("api2")); err != nil {
		t.Fatalf("web -> api2: %v %s", err, out)
	}
	pids := []int{}
	for _, p := range c.agents {
		pids = append(pids, p.Cmd.Process.Pid)
	}
	prefix, pins := c.lab.Prefix, []string{c.pinDir("node1"), c.pinDir("node2")}
	c.close()
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), prefix) {
		t.Errorf("namespaces of the run remain:\n%s", out)
	}
	for _, p := range pins {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("pin directory %s remains (%v)", p, err)
		}
	}
	for id := range bpfLinks(t) {
		if !before[id] {
			t.Errorf("bpf link %v created by the run remains", id)
		}
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("agent process %d still runs", pid)
		}
	}
}

// TestRestartRepairsDrift: a pod taken out of the mesh while its node's agent was down keeps
// its pinned capture (fail closed) until the agent is back, which then removes it: the pinned
// state is reconciled against the state view, not trusted.
func TestRestartRepairsDrift(t *testing.T) {
	c := newCluster(t)
	c.agents["node1"].Kill()
	c.agents["node1"].Wait()
	delete(c.agents, "node1")
	c.writeState(map[string]string{"web": "none"})
	if _, err := c.curl("web", c.url("perm"), "--max-time", "1"); err == nil {
		t.Fatal("with its agent dead, web's pinned capture let a connection through")
	}
	c.startAgent("node1")
	testenv.WaitFor(t, "the agent to drop web's stale enrollment", 10*time.Second, func() bool {
		for _, m := range c.logLines("node1") {
			if m["msg"] == "removing stale enrollment" {
				return true
			}
		}
		return false
	})
	if out, err := c.curl("web", c.url("perm")); err != nil || !strings.Contains(out, "hello from perm") {
		t.Errorf("unenrolled web -> permissive perm = %q, %v", out, err)
	}
	if out, err := c.curl("web", c.url("api2")); err == nil {
		t.Errorf("unenrolled web reached STRICT api2: %q (still captured?)", out)
	}
}

// TestSameNodeModes: within a node, each --same-node mode carries curl and a large transfer intact
// both ways, applies policy, and logs the path it took.
func TestSameNodeModes(t *testing.T) {
	// kernel's first connection of a pair is spliced; TestKernelPath covers the rest of it.
	for _, mode := range []string{"splice", "hbone"} {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, "--same-node", mode)
			web, api1 := c.lab.Pod("web"), c.lab.Pod("api1")
			if out, err := c.curl("web", c.url("api1")); err != nil || !strings.Contains(out, "client "+web.IP.String()+":") {
				t.Fatalf("web -> api1: %q, %v", out, err)
			}
			if _, err := c.curl("nosy", c.url("api1")); err == nil {
				t.Error("nosy -> api1 succeeded; the policy allows only web")
			}
			echoBothWays(t, web, net.JoinHostPort(api1.IP.String(), "9000"))
			want := map[string]string{"direction": "outbound", "path": mode, "result": "ok", "src_id": "spiffe://cluster.local/ns/shop/sa/web"}
			testenv.WaitFor(t, "the "+mode+" access line", 3*time.Second, func() bool { return c.hasAccess("node1", want) })
		})
	}
}

// TestKernelPath: with --same-node=kernel, a pod pair's first connection is decided and spliced
// by the agent, later ones go pod to pod with no agent in the data path — still in the access log,
// with the kernel's byte counts — denied pairs never take it, and with the agent dead it stops
// within the heartbeat TTL, so connections are refused again.
func TestKernelPath(t *testing.T) {
	c := newCluster(t, "--same-node", "kernel")
	web := c.lab.Pod("web")
	for i := range 3 {
		out, err := c.curl("web", c.url("api1"))
		if err != nil || !strings.Contains(out, "client "+web.IP.String()+":") {
			t.Fatalf("web -> api1 #%d: %q, %v", i, out, err)
		}
	}
	testenv.WaitFor(t, "a kernel-path access line", 3*time.Second, func() bool {
		for _, m := range c.accessLines("node1") {
			if m["path"] == "kernel" && m["src_id"] == "spiffe://cluster.local/ns/shop/sa/web" &&
				m["dst_id"] == "spiffe://cluster.local/ns/shop/sa/api" && fmt.Sprint(m["bytes_sent"]) != "0" {
				return true
			}
		}
		return false
	})
	splices := 0
	for _, m := range c.accessLines("node1") {
		if m["path"] == "splice" && m["src_id"] == "spiffe://cluster.local/ns/shop/sa/web" {
			splices++
		}
	}
	if splices != 1 {
		t.Errorf("%d connections went through the agent, want only the first", splices)
	}
	if _, err := c.curl("nosy", c.url("api1")); err == nil {
		t.Error("nosy -> api1 succeeded; the policy allows only web")
	}

	// A large transfer both ways on the kernel path.
	echoBothWays(t, web, net.JoinHostPort(c.lab.Pod("api1").IP.String(), "9000"))

	// The agent dies: within the heartbeat TTL the short-circuit stops and connects are refused.
	c.agents["node1"].Kill()
	c.agents["node1"].Wait()
	delete(c.agents, "node1")
	testenv.WaitFor(t, "the kernel path to stop with the agent", 3*time.Second, func() bool {
		_, err := c.curl("web", c.url("api1"), "--max-time", "1")
		return err != nil
	})
}

// TestSameNodeStress: on each fast same-node path, 1,000 concurrent connections each get their own
// bytes back intact, and a reset by the app reaches the client as a reset.
func TestSameNodeStress(t *testing.T) {
	for _, mode := range []string{"splice", "kernel"} {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, "--same-node", mode)
			web, api1 := c.lab.Pod("web"), c.lab.Pod("api1")
			echoAddr := net.JoinHostPort(api1.IP.String(), "9000")
			if mode == "kernel" { // the pair's first connection is the agent's decision
				if out, err := c.curl("web", c.url("api1")); err != nil {
					t.Fatalf("warm-up: %v %s", err, out)
				}
				// The warm-up's echo comes back only once the agent has cached the pair's
				// verdict (it does so before relaying a byte): closing it unanswered let the
				// burst race that write, and a slow machine spliced a tenth of it.
				conn, err := web.Dial(context.Background(), echoAddr)
				if err != nil {
					t.Fatalf("warm-up to the echo port: %v", err)
				}
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				conn.Write([]byte("warm"))
				conn.(*net.TCPConn).CloseWrite()
				got, err := io.ReadAll(conn)
				conn.Close()
				if err != nil || string(got) != "warm" {
					t.Fatalf("warm-up echo: %q, %v", got, err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			const conns = 1000
			per := 16 << 10
			errs := make(chan error, conns)
			var wg sync.WaitGroup
			for i := range conns {
				wg.Go(func() {
					conn, err := web.Dial(ctx, echoAddr)
					if err != nil {
						errs <- fmt.Errorf("conn %d: %w", i, err)
						return
					}
					defer conn.Close()
					conn.SetDeadline(time.Now().Add(30 * time.Second))
					msg := make([]byte, per)
					rand.Read(msg)
					go func() { conn.Write(msg); conn.(*net.TCPConn).CloseWrite() }()
					got, err := io.ReadAll(conn)
					if err != nil || !bytes.Equal(got, msg) {
						errs <- fmt.Errorf("conn %d: %d of %d bytes back intact (err %v)", i, len(got), per, err)
					}
				})
			}
			wg.Wait()
			close(errs)
			failed := 0
			for err := range errs {
				if failed++; failed <= 5 {
					t.Error(err)
				}
			}
			if failed > 0 {
				t.Fatalf("%d of %d connections failed", failed, conns)
			}
			if mode == "kernel" {
				// Every connection has its access line, whichever path it took. The warm-up
				// cached the pair's verdict, so all should take the kernel path; the tenth left
				// is for a state change mid-burst, whose revalidation may let a few be decided
				// (spliced) again.
				deadline := time.Now().Add(10 * time.Second)
				for {
					kernel, all, paths := 0, 0, map[string]int{}
					for _, m := range c.accessLines("node1") {
						if fmt.Sprint(m["dst_addr"]) != echoAddr {
							continue
						}
						paths[fmt.Sprint(m["path"])]++
						all++
						if m["path"] == "kernel" {
							kernel++
						}
					}
					if all >= conns+1 && kernel >= conns*9/10 { // +1: the warm-up connection
						t.Logf("access lines for %d connections (+1 warm-up): %v", conns, paths)
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("access lines for %d connections (+1 warm-up): %v", conns, paths)
					}
					time.Sleep(50 * time.Millisecond)
				}
			}

			conn, err := web.Dial(ctx, net.JoinHostPort(api1.IP.String(), "9001"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			conn.Write([]byte("ping"))
			_, err = io.ReadAll(conn)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("after the app's reset the client read %v, want connection reset", err)
			}
		})
	}
}

// echoBothWays sends 64 MiB (8 with -short) of random bytes from pod to the echo at addr while
// reading them back, half-closes, and checks count and sha256; it also checks the app sees addr
// as its peer.
func echoBothWays(t *testing.T, from *lab.Pod, addr string) {
	t.Helper()
	n := int64(64 << 20)
	if testing.Short() {
		n = 8 << 20
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := from.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := conn.RemoteAddr().String(); got != addr {
		t.Errorf("the app's peer is %s, want %s", got, addr)
	}
	sent := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		buf := make([]byte, 1<<20)
		for left := n; left > 0; left -= int64(len(buf)) {
			rand.Read(buf)
			h.Write(buf)
			if _, err := conn.Write(buf); err != nil {
				break
			}
		}
		conn.(*net.TCPConn).CloseWrite()
		sent <- [32]byte(h.Sum(nil))
	}()
	h := sha256.New()
	got, err := io.Copy(h, conn)
	if err != nil || got != n || [32]byte(h.Sum(nil)) != <-sent {
		t.Fatalf("echoed %d of %d bytes (err %v) or the sha256 differs", got, n, err)
	}
}
