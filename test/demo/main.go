// Command demo is `make demo`: it builds a two-node cluster out of network namespaces (the
// test/lab), runs one amesh-agent per node, and shows real traffic through the mesh: curl
// between pods across nodes and within a node with the SPIFFE identities used, a connection
// refused by policy, a plaintext client refused by a STRICT pod, and latency direct vs mesh.
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
	agent := filepath.Join(bin, "amesh-agent")
	step("building amesh-agent")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", agent, "github.com/amesh-dev/amesh/cmd/amesh-agent").CombinedOutput(); err != nil {
		return fmt.Errorf("build amesh-agent: %v\n%s", err, out)
	}

	step("building the lab: 2 nodes on an underlay bridge, 5 pods, each its own netns")
	l, err := lab.New(ctx, lab.Config{Nodes: []lab.NodeSpec{
		{Name: "node1", Pods: []lab.PodSpec{
			{Name: "web", Namespace: "shop", ServiceAccount: "web", Labels: map[string]string{"app": "web"}},
			{Name: "api1", Namespace: "shop", ServiceAccount: "api", Labels: map[string]string{"app": "api"}},
			{Name: "plain1", Namespace: "legacy", ServiceAccount: "default", Mode: "none"},
		}},
		{Name: "node2", Pods: []lab.PodSpec{
			{Name: "api2", Namespace: "shop", ServiceAccount: "api", Labels: map[string]string{"app": "api"}},
			{Name: "intruder", Namespace: "shop", ServiceAccount: "intruder"},
			{Name: "plain2", Namespace: "legacy", ServiceAccount: "default", Mode: "none"},
		}},
	}})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing down")
		for _, n := range l.Nodes {
			exec.Command(agent, "--uninstall", "--pin-dir", n.PinDir).Run()
		}
		l.Close()
		fmt.Println("  namespaces, links, pins and agents removed")
	}()
	for _, n := range l.Nodes {
		for _, p := range n.Pods {
			mode := "mesh (ambient, STRICT)"
			if p.Spec.Mode == "none" {
				mode = "not in the mesh"
			}
			fmt.Printf("  %-6s %-9s %-10s %-15s %s\n", n.Name, p.Name, p.IP, p.Namespace+"/"+p.ServiceAccount, mode)
		}
	}
	state := filepath.Join(l.Dir, "state.yaml")
	if err := l.WriteState(state, "", policies); err != nil {
		return err
	}
	for _, p := range l.Pods() {
		stopApp, err := serveApps(p)
		if err != nil {
			return err
		}
		defer stopApp()
	}

	step("starting one amesh-agent per node (eBPF capture in each pod's netns, HBONE on :15008)")
	logs := map[string]string{}
	for _, n := range l.Nodes {
		logs[n.Name] = filepath.Join(l.Dir, n.Name+"-agent.log")
		p, err := l.Start(ctx, n.Netns, logs[n.Name], agent, "--node", n.Name, "--state", state,
			"--ca-dir", filepath.Join(l.Dir, "ca"), "--pin-dir", n.PinDir, "--drain-timeout", "1s")
		if err != nil {
			return err
		}
		defer func() {
			p.Signal(syscall.SIGTERM)
			select {
			case <-p.Done():
			case <-time.After(3 * time.Second):
				p.Kill()
			}
		}()
	}
	if err := waitEnrolled(ctx, logs, map[string]int{"node1": 2, "node2": 2}); err != nil {
		return err
	}
	for _, n := range []string{"node1", "node2"} {
		for _, m := range logLines(logs[n]) {
			if m["msg"] == "pod enrolled" {
				fmt.Printf("  %s: enrolled %-13v as %v in %.2f ms\n", n, m["pod"], m["id"], toMS(m["took"]))
			}
		}
	}

	curl := func(from, to string) (string, error) {
		url := fmt.Sprintf("http://%s:8080/", l.Pod(to).IP)
		fmt.Printf("  $ kubectl exec %s -- curl -s %s\n", from, url)
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, err := l.Command(c, l.Pod(from).Netns, "curl", "-sS", "--max-time", "3", url).CombinedOutput()
		fmt.Printf("    %s\n", strings.TrimSpace(string(out)))
		return string(out), err
	}
	// showAccess prints the newest access line of node's agent for a connection from src.
	showAccess := func(node, src string) {
		time.Sleep(100 * time.Millisecond)
		for _, m := range slices.Backward(logLines(logs[node])) {
			if m["msg"] == "access" && m["src_addr"] == src {
				fmt.Printf("    %s access log: %v %v -> %v path=%v src_id=%v dst_id=%v result=%v", node, m["direction"], m["src_addr"], m["dst_addr"], m["path"], m["src_id"], m["dst_id"], m["result"])
				if r, ok := m["reason"]; ok {
					fmt.Printf(" reason=%q", r)
				}
				fmt.Println()
				return
			}
		}
	}

	step("1. web (node1) -> api2 (node2): HBONE across the underlay, mutual TLS with SPIFFE IDs")
	if _, err := curl("web", "api2"); err != nil {
		return fmt.Errorf("cross-node curl failed: %w", err)
	}
	showAccess("node2", l.Pod("web").IP.String())

	step("2. web -> api1, both on node1: authorized by node1's agent, which holds both identities, then spliced")
	if _, err := curl("web", "api1"); err != nil {
		return fmt.Errorf("same-node curl failed: %w", err)
	}
	showAccess("node1", l.Pod("web").IP.String())

	step("3. intruder -> api2: the AuthorizationPolicy allows only spiffe://cluster.local/ns/shop/sa/web")
	if _, err := curl("intruder", "api2"); err == nil {
		return errors.New("the intruder got through")
	}
	showAccess("node2", l.Pod("intruder").IP.String())

	step("4. plain2 (not in the mesh) -> api2 in plaintext: api2 is STRICT")
	if _, err := curl("plain2", "api2"); err == nil {
		return errors.New("plaintext reached a STRICT pod")
	}
	showAccess("node2", l.Pod("plain2").IP.String())

	step("5. latency, 1 KiB request/response, 2,000 round trips on one connection each")
	fmt.Printf("  %-42s %9s %9s\n", "path", "p50", "p99")
	for _, c := range []struct{ name, from, to string }{
		{"direct pod -> pod (no mesh), cross-node", "plain1", "plain2"},
		{"amesh, same node", "web", "api1"},
		{"amesh, cross-node (HBONE)", "web", "api2"},
	} {
		p50, p99, err := lab.RR(ctx, l.Pod(c.from), l.Pod(c.to), lab.RROptions{Requests: 2000})
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
