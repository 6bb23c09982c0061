// Command demo is `make demo`: it builds a two-node cluster out of network namespaces (the
// test/lab), runs one amesh-agent per node, and shows real traffic through the mesh: curl
// between pods across nodes and within a node with the SPIFFE identities used, a connection
// refused by policy, a plaintext client refused by a STRICT pod, latency direct vs mesh, and
// L7 through a waypoint (a request allowed, one refused with 403, the waypoint not skippable).
// Everything is torn down at the end, also on Ctrl-C. It needs root.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/amesh-dev/amesh/test/lab"
)

const policies = `
  - name: api-allow-web
    namespace: shop
    selector: {app: api}
    action: ALLOW
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
`

func main() {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (network namespaces and eBPF): run `sudo make demo`")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n\033[1m"+format+"\033[0m\n", args...) }

func run(ctx context.Context) error {
	bin, err := os.MkdirTemp("", "amesh-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bin)
	agent, err := buildAgent(ctx, bin)
	if err != nil {
		return err
	}
	waypoint := filepath.Join(bin, "amesh-waypoint")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", waypoint, "github.com/amesh-dev/amesh/cmd/amesh-waypoint").CombinedOutput(); err != nil {
		return fmt.Errorf("build amesh-waypoint: %v\n%s", err, out)
	}
	l, err := buildLab(ctx)
	if err != nil {
		return err
	}
	defer tearDown(l, agent)
	printPods(l)
	state := filepath.Join(l.Dir, "state.yaml")
	if err := l.WriteState(state, "", policies); err != nil {
		return err
	}
	stopApps, err := serveAllApps(l)
	if err != nil {
		return err
	}
	defer stopApps()
	d := &demo{lab: l, logs: map[string]string{}}
	stopAgents, err := d.startAgents(ctx, agent, state)
	if err != nil {
		return err
	}
	defer stopAgents()
	if err := waitEnrolled(ctx, d.logs, map[string]int{"node1": 2, "node2": 2}); err != nil {
		return err
	}
	d.printEnrolled()
	for _, scenario := range []func(context.Context) error{d.crossNode, d.sameNode, d.policyDenies, d.strictRefusesPlaintext, d.latency} {
		if err := scenario(ctx); err != nil {
			return err
		}
	}
	return d.throughWaypoint(ctx, waypoint, state)
}

// waypointServices: api (a VIP over both api pods) uses the waypoint wp.
const waypointServices = `
  - name: api
    namespace: shop
    vips: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}]
    selector: {app: api}
    waypoint: wp
  - name: wp
    namespace: shop
    vips: [10.96.0.20]
    ports: [{port: 15008}]
    selector: {app: wp}
    waypointFor: service
`

// waypointPolicy: the waypoint refuses DELETE /admin*.
const waypointPolicy = `
  - name: no-admin-delete
    namespace: shop
    targetRefs: [{kind: Service, name: wp}]
    action: DENY
    rules:
      - to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]
`

func (d *demo) throughWaypoint(ctx context.Context, waypoint, state string) error {
	step("6. L7 through a waypoint: service api names waypoint wp (amesh-waypoint in pod wp, node2)")
	log := filepath.Join(d.lab.Dir, "waypoint.log")
	p, err := d.lab.Start(ctx, d.lab.Pod("wp").Netns, log, waypoint, "--state", state, "--name", "wp",
		"--namespace", "shop", "--service-account", "waypoint", "--ca-dir", filepath.Join(d.lab.Dir, "ca"))
	if err != nil {
		return err
	}
	defer p.Kill()
	if err := d.lab.WriteState(state, waypointServices, policies+waypointPolicy); err != nil {
		return err
	}
	time.Sleep(time.Second) // the agents and the waypoint re-read the state file
	showRequest := func() {
		time.Sleep(100 * time.Millisecond)
		for _, m := range slices.Backward(logLines(log)) {
			if m["msg"] == "request" {
				fmt.Printf("    waypoint log: %v %v status=%v src_id=%v", m["method"], m["path"], m["status"], m["src_id"])
				if u, ok := m["upstream"]; ok {
					fmt.Printf(" upstream=%v", u)
				}
				if r, ok := m["reason"]; ok {
					fmt.Printf(" reason=%q", r)
				}
				fmt.Println()
				return
			}
		}
	}
	for _, c := range []struct{ method, url string }{{"GET", "http://10.96.0.10/"}, {"DELETE", "http://10.96.0.10/admin"}} {
		fmt.Printf("  $ kubectl exec web -- curl -s -X %s %s\n", c.method, c.url)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := d.lab.Command(cctx, d.lab.Pod("web").Netns, "curl", "-sS", "--max-time", "3", "-X", c.method, "-w", " [%{http_code}]", c.url).CombinedOutput()
		cancel()
		fmt.Printf("    %s\n", strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", " "))
		if err != nil {
			return fmt.Errorf("curl through the waypoint: %w", err)
		}
		showRequest()
	}
	fmt.Println("  and web dialling api2's pod IP directly, around the waypoint:")
	if _, err := d.curl(ctx, "web", "api2"); err == nil {
		return errors.New("web skipped the waypoint")
	}
	d.showAccess("node2", "web")
	return nil
}

// buildAgent builds amesh-agent into dir and returns its path.
func buildAgent(ctx context.Context, dir string) (string, error) {
	agent := filepath.Join(dir, "amesh-agent")
	step("building amesh-agent")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", agent, "github.com/amesh-dev/amesh/cmd/amesh-agent").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build amesh-agent: %v\n%s", err, out)
	}
	return agent, nil
}

// buildLab builds the demo's two nodes: on each a client or servers of the shop in the mesh, and
// a pod out of it; node2 also holds an intruder, in the mesh but not allowed to call api.
func buildLab(ctx context.Context) (*lab.Lab, error) {
	step("building the lab: 2 nodes on an underlay bridge, 6 pods, each its own netns")
	return lab.New(ctx, lab.Config{Nodes: []lab.NodeSpec{
		{Name: "node1", Pods: []lab.PodSpec{
			{Name: "web", Namespace: "shop", ServiceAccount: "web", Labels: map[string]string{"app": "web"}},
			{Name: "api1", Namespace: "shop", ServiceAccount: "api", Labels: map[string]string{"app": "api"}},
			{Name: "plain1", Namespace: "legacy", ServiceAccount: "default", Mode: "none"},
		}},
		{Name: "node2", Pods: []lab.PodSpec{
			{Name: "api2", Namespace: "shop", ServiceAccount: "api", Labels: map[string]string{"app": "api"}},
			{Name: "intruder", Namespace: "shop", ServiceAccount: "intruder"},
			{Name: "plain2", Namespace: "legacy", ServiceAccount: "default", Mode: "none"},
			{Name: "wp", Namespace: "shop", ServiceAccount: "waypoint", Mode: "none", Labels: map[string]string{"app": "wp"}},
		}},
	}})
}

// tearDown removes what the agents left in each node (their pins), then the lab.
func tearDown(l *lab.Lab, agent string) {
	step("tearing down")
	for _, n := range l.Nodes {
		exec.Command(agent, "--uninstall", "--pin-dir", n.PinDir).Run()
	}
	l.Close()
	fmt.Println("  namespaces, links, pins and agents removed")
}

// printPods lists the lab's pods: node, name, IP, identity and whether they are in the mesh.
func printPods(l *lab.Lab) {
	for _, n := range l.Nodes {
		for _, p := range n.Pods {
			mode := "mesh (ambient, STRICT)"
			if p.Spec.Mode == "none" {
				mode = "not in the mesh"
			}
			fmt.Printf("  %-6s %-9s %-10s %-15s %s\n", n.Name, p.Name, p.IP, p.Namespace+"/"+p.ServiceAccount, mode)
		}
	}
}

// serveAllApps runs serveApps in every pod; the function returned stops them.
func serveAllApps(l *lab.Lab) (func(), error) {
	var stops []func()
	stop := func() {
		for _, s := range slices.Backward(stops) {
			s()
		}
	}
	for _, p := range l.Pods() {
		s, err := serveApps(p)
		if err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, s)
	}
	return stop, nil
}

// demo is the running lab the scenarios use, with the agents' logs.
type demo struct {
	lab  *lab.Lab
	logs map[string]string // node name -> its agent's JSON log
}

// startAgents starts one agent per node; the function returned stops them, each given 3s to exit
// before it is killed, in the reverse order.
func (d *demo) startAgents(ctx context.Context, agent, state string) (func(), error) {
	step("starting one amesh-agent per node (eBPF capture in each pod's netns, HBONE on :15008)")
	var procs []*lab.Proc
	stop := func() {
		for _, p := range slices.Backward(procs) {
			p.Signal(syscall.SIGTERM)
			select {
			case <-p.Done():
			case <-time.After(3 * time.Second):
				p.Kill()
			}
		}
	}
	for _, n := range d.lab.Nodes {
		d.logs[n.Name] = filepath.Join(d.lab.Dir, n.Name+"-agent.log")
		p, err := d.lab.Start(ctx, n.Netns, d.logs[n.Name], agent, "--node", n.Name, "--state", state,
			"--ca-dir", filepath.Join(d.lab.Dir, "ca"), "--pin-dir", n.PinDir, "--drain-timeout", "1s")
		if err != nil {
			stop()
			return nil, err
		}
		procs = append(procs, p)
	}
	return stop, nil
}

// printEnrolled shows each agent's enrolment of its pods: the SPIFFE ID and how long it took.
func (d *demo) printEnrolled() {
	for _, n := range []string{"node1", "node2"} {
		for _, m := range logLines(d.logs[n]) {
			if m["msg"] == "pod enrolled" {
				fmt.Printf("  %s: enrolled %-13v as %v in %.2f ms\n", n, m["pod"], m["id"], toMS(m["took"]))
			}
		}
	}
}

// curl runs the real curl in pod from against to's app, showing the command and its output.
func (d *demo) curl(ctx context.Context, from, to string) (string, error) {
	url := fmt.Sprintf("http://%s:8080/", d.lab.Pod(to).IP)
	fmt.Printf("  $ kubectl exec %s -- curl -s %s\n", from, url)
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := d.lab.Command(c, d.lab.Pod(from).Netns, "curl", "-sS", "--max-time", "3", url).CombinedOutput()
	fmt.Printf("    %s\n", strings.TrimSpace(string(out)))
	return string(out), err
}

// showAccess prints the newest access line of node's agent for a connection from pod src.
func (d *demo) showAccess(node, src string) {
	srcIP := d.lab.Pod(src).IP.String()
	time.Sleep(100 * time.Millisecond)
	for _, m := range slices.Backward(logLines(d.logs[node])) {
		if m["msg"] == "access" && m["src_addr"] == srcIP {
			fmt.Printf("    %s access log: %v %v -> %v path=%v src_id=%v dst_id=%v result=%v", node, m["direction"], m["src_addr"], m["dst_addr"], m["path"], m["src_id"], m["dst_id"], m["result"])
			if r, ok := m["reason"]; ok {
				fmt.Printf(" reason=%q", r)
			}
			fmt.Println()
			return
		}
	}
}

func (d *demo) crossNode(ctx context.Context) error {
	step("1. web (node1) -> api2 (node2): HBONE across the underlay, mutual TLS with SPIFFE IDs")
	if _, err := d.curl(ctx, "web", "api2"); err != nil {
		return fmt.Errorf("cross-node curl failed: %w", err)
	}
	d.showAccess("node2", "web")
	return nil
}

func (d *demo) sameNode(ctx context.Context) error {
	step("2. web -> api1, both on node1: authorized by node1's agent, which holds both identities, then spliced")
	if _, err := d.curl(ctx, "web", "api1"); err != nil {
		return fmt.Errorf("same-node curl failed: %w", err)
	}
	d.showAccess("node1", "web")
	return nil
}

func (d *demo) policyDenies(ctx context.Context) error {
	step("3. intruder -> api2: the AuthorizationPolicy allows only spiffe://cluster.local/ns/shop/sa/web")
	if _, err := d.curl(ctx, "intruder", "api2"); err == nil {
		return errors.New("the intruder got through")
	}
	d.showAccess("node2", "intruder")
	return nil
}

func (d *demo) strictRefusesPlaintext(ctx context.Context) error {
	step("4. plain2 (not in the mesh) -> api2 in plaintext: api2 is STRICT")
	if _, err := d.curl(ctx, "plain2", "api2"); err == nil {
		return errors.New("plaintext reached a STRICT pod")
	}
	d.showAccess("node2", "plain2")
	return nil
}

func (d *demo) latency(ctx context.Context) error {
	step("5. latency, 1 KiB request/response at a fixed 1,000 per second (as `make bench-suite` measures), 2,000 round trips on one connection each")
	fmt.Printf("  %-42s %9s %9s\n", "path", "p50", "p99")
	for _, c := range []struct{ name, from, to string }{
		{"direct pod -> pod (no mesh), cross-node", "plain1", "plain2"},
		{"amesh, same node", "web", "api1"},
		{"amesh, cross-node (HBONE)", "web", "api2"},
	} {
		p50, p99, err := lab.RR(ctx, d.lab.Pod(c.from), d.lab.Pod(c.to), lab.RROptions{Requests: 2000, Rate: 1000})
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		fmt.Printf("  %-42s %9s %9s\n", c.name, p50.Round(time.Microsecond), p99.Round(time.Microsecond))
	}
	return nil
}

// serveApps runs, in the pod, an HTTP app on :8080 that says who called, and an echo on :9000.
func serveApps(p *lab.Pod) (func(), error) {
	hl, err := p.Listen(":8080")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (%s/%s); the app sees client %s\n", p.Name, p.Namespace, p.ServiceAccount, r.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(hl)
	el, err := p.Listen(":" + lab.EchoPort)
	if err != nil {
		srv.Close()
		return nil, err
	}
	go lab.Echo(el, nil)
	return func() { srv.Close(); el.Close() }, nil
}

func waitEnrolled(ctx context.Context, logs map[string]string, want map[string]int) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		for node, n := range want {
			got := 0
			for _, m := range logLines(logs[node]) {
				if m["msg"] == "pod enrolled" {
					got++
				}
				if m["msg"] == "cannot start" {
					return fmt.Errorf("agent on %s: %v", node, m["err"])
				}
			}
			ok = ok && got >= n
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.New("the agents did not enroll their pods within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func logLines(path string) []map[string]any {
	lines, _ := lab.ReadJSONLines(path)
	return lines
}

// toMS converts a slog duration (nanoseconds as a number) to milliseconds.
func toMS(v any) float64 {
	f, _ := v.(float64)
	return f / 1e6
}
