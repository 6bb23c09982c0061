package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/bench"
	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/test/k8s"
	"github.com/amesh-dev/amesh/test/lab"
	"github.com/amesh-dev/amesh/waypoint"
)

// cluster is two real nodes and a control plane, each node in its own lab namespace.
type cluster struct {
	t     *testing.T
	lab   *lab.Lab
	cp    *k8s.ControlPlane
	nodes map[string]*Node
	imgs  Images
}

// podCIDR is node i's pod range: apart from the lab's (10.20.x) and the other tests' (10.245.x).
func podCIDR(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("10.246.%d.0/24", i+1)) }

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// requireParts fails under CI, and skips loudly elsewhere, without containerd, runc or the CNI
// plugins (make deps installs them all).
func requireParts(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	cniBin := os.Getenv("AMESH_CNI_BIN")
	if cniBin == "" {
		cniBin = filepath.Join(os.Getenv("HOME"), ".cache/amesh/cni/bin")
	}
	var missing []string
	for _, tool := range []string{"containerd", "runc", "ctr"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := os.Stat(filepath.Join(cniBin, "bridge")); err != nil {
		missing = append(missing, "CNI plugins in "+cniBin)
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("missing %s (make deps installs them)", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED LOUDLY: " + msg)
	}
	return cniBin
}

func newCluster(t *testing.T) *cluster {
	cniBin := requireParts(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Config{Nodes: []lab.NodeSpec{{Name: "node1"}, {Name: "node2"}, {Name: "cp"}}})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, lab: l, nodes: map[string]*Node{}}
	t.Cleanup(c.close)
	cpNode := l.Node("cp")
	names := []string{"node1", "node2"}
	for i, name := range names {
		n, other := l.Node(name), l.Node(names[1-i])
		for _, cmd := range [][]string{
			{"ip", "route", "add", podCIDR(1 - i).String(), "via", other.IP.String()},
			{"ip", "route", "add", k8s.ServiceIP + "/32", "via", cpNode.IP.String()},
		} {
			if out, err := l.Command(ctx, n.Netns, cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", cmd, err, out)
			}
		}
		if out, err := l.Command(ctx, cpNode.Netns, "ip", "route", "add", podCIDR(i).String(), "via", n.IP.String()).CombinedOutput(); err != nil {
			t.Fatalf("route: %v: %s", err, out)
		}
	}
	if out, err := l.Command(ctx, cpNode.Netns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	c.cp, err = k8s.Start(ctx, k8s.Config{Netns: cpNode.Netns, BindIP: cpNode.IP.String(), Nodes: names, Dir: l.Dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cp.StartControllers(ctx); err != nil {
		t.Fatal(err)
	}
	if c.imgs, err = BuildImages(ctx, filepath.Join(l.Dir, "images")); err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		n, err := Start(ctx, Config{
			Name: name, Netns: l.Node(name).Netns, IP: l.Node(name).IP, PodCIDR: podCIDR(i),
			ControlPlane: c.cp, Dir: l.Dir, CNIPlugins: cniBin,
			Images: []string{c.imgs.Pause, c.imgs.App, c.imgs.Amesh}, Logger: testLogger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		c.nodes[name] = n
	}
	// kubectl wait fails at once for an object that does not exist yet: first the registration.
	testenv.WaitFor(t, "both kubelets to register their Node", 60*time.Second, func() bool {
		out, err := c.kubectl(ctx, "get", "node", "node1", "node2", "-o", "name")
		return err == nil && bytes.Count(out, []byte("node/")) == 2
	})
	if out, err := c.kubectl(ctx, "wait", "--for=condition=Ready", "--timeout=120s", "node/node1", "node/node2"); err != nil {
		c.dumpNodes()
		t.Fatalf("nodes not Ready: %v\n%s", err, out)
	}
	return c
}

func (c *cluster) kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return c.cp.Kubectl(ctx, c.cp.AdminToken(), args...)
}

// apply applies manifests given on stdin.
func (c *cluster) apply(ctx context.Context, yaml string) {
	c.t.Helper()
	cmd, err := c.cp.KubectlCommand(ctx, c.cp.AdminToken(), "apply", "-f", "-")
	if err != nil {
		c.t.Fatal(err)
	}
	cmd.Stdin = strings.NewReader(yaml)
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Fatalf("kubectl apply: %v\n%s\n%s", err, out, yaml)
	}
}

// dumpNodes logs the tails of the nodes' logs, for a failure.
func (c *cluster) dumpNodes() {
	for name, n := range c.nodes {
		for _, f := range []string{"kubelet.log", "containerd.log"} {
			c.t.Logf("--- %s %s:\n%s", name, f, k8s.TailFile(filepath.Join(n.Dir(), f), 40))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, _ := c.kubectl(ctx, "get", "nodes,pods", "-A", "-o", "wide")
	c.t.Logf("--- kubectl get nodes,pods -A:\n%s", out)
	out, _ = c.kubectl(ctx, "get", "events", "-A", "--sort-by=.lastTimestamp")
	c.t.Logf("--- events:\n%s", k8s.Tail(out, 40))
}

func (c *cluster) close() {
	if c.t.Failed() {
		c.dumpNodes()
	}
	for name, n := range c.nodes {
		if err := n.Stop(); err != nil {
			c.t.Errorf("stop %s: %v", name, err)
		}
	}
	if c.cp != nil {
		if err := c.cp.Stop(); err != nil {
			c.t.Errorf("stop the control plane: %v", err)
		}
	}
	if err := c.lab.Close(); err != nil {
		c.t.Errorf("close the lab: %v", err)
	}
}

// appPod is a pod of testapp serving on :8080 (and echo on :8081), pinned to a node, with the
// namespace's default ServiceAccount.
func appPod(name, ns, node string) string { return appPodAs(name, ns, node, "default") }

// appPodAs is appPod with ServiceAccount sa.
func appPodAs(name, ns, node, sa string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: %s}}
spec:
  nodeName: %s
  serviceAccountName: %s
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: %s
      imagePullPolicy: Never
      command: [testapp, serve, -addr, ":8080"]
      env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
      readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
`, name, ns, name, node, sa, AppImage)
}

// podIP waits for pod ns/name to be Ready and returns its IP.
func (c *cluster) podIP(ctx context.Context, ns, name string) string {
	c.t.Helper()
	if out, err := c.kubectl(ctx, "wait", "-n", ns, "--for=condition=Ready", "--timeout=90s", "pod/"+name); err != nil {
		c.dumpNodes()
		c.t.Fatalf("pod %s/%s not Ready: %v\n%s", ns, name, err, out)
	}
	out, err := c.kubectl(ctx, "get", "pod", "-n", ns, name, "-o", "jsonpath={.status.podIP}")
	if err != nil {
		c.t.Fatalf("pod IP: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestRealNodes: two kubelets with containerd, and then amesh installed on them as a user does.
func TestRealNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the real nodes belong to the full (non-race) run")
	}
	c := newCluster(t)
	t.Run("pods", c.testPods)
	if t.Failed() {
		return
	}
	t.Run("daemonset", c.testDaemonSet)
}

// testPods: pods from the local images, made by kubelet through containerd and the real CNI
// chain, answer each other within and across nodes, and kubectl exec and logs reach them
// through the API server and kubelet.
func (c *cluster) testPods(t *testing.T) {
	c.t = t
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c.apply(ctx, "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n---\n"+
		appPod("a1", "plain", "node1")+"---\n"+appPod("a2", "plain", "node2")+"---\n"+appPod("b1", "plain", "node1"))
	ips := map[string]string{}
	for _, p := range []string{"a1", "a2", "b1"} {
		ips[p] = c.podIP(ctx, "plain", p)
		if !podCIDR(map[string]int{"a1": 0, "b1": 0, "a2": 1}[p]).Contains(netip.MustParseAddr(ips[p])) {
			t.Errorf("pod %s has IP %s, outside its node's pod CIDR", p, ips[p])
		}
	}
	for _, tc := range []struct{ from, to string }{{"a1", "b1"}, {"a1", "a2"}, {"a2", "a1"}} {
		out, err := c.kubectl(ctx, "exec", "-n", "plain", tc.from, "--", "testapp", "get", "-url", "http://"+ips[tc.to]+":8080/")
		if err != nil {
			t.Errorf("%s -> %s: %v\n%s", tc.from, tc.to, err, out)
			continue
		}
		// The server names itself and the caller's address: the pod's own, not a node's (no NAT).
		if want := tc.to + " " + ips[tc.from] + ":"; !bytes.HasPrefix(out, []byte(want)) {
			t.Errorf("%s -> %s answered %q, want it to start with %q", tc.from, tc.to, out, want)
		}
	}
	out, err := c.kubectl(ctx, "logs", "-n", "plain", "a2")
	if err != nil || !bytes.Contains(out, []byte("serving :8080")) {
		t.Errorf("kubectl logs a2: %v\n%s", err, out)
	}
}

// get runs testapp get in pod ns/from against url.
func (c *cluster) get(ctx context.Context, ns, from, url string) ([]byte, error) {
	return c.kubectl(ctx, "exec", "-n", ns, from, "--", "testapp", "get", "-url", url, "-timeout", "2s")
}

// agentPod returns the name of the DaemonSet's pod on node.
func (c *cluster) agentPod(ctx context.Context, node string) string {
	c.t.Helper()
	out, err := c.kubectl(ctx, "get", "pods", "-n", "amesh-system", "-l", "app.kubernetes.io/name=amesh-agent",
		"--field-selector", "spec.nodeName="+node, "-o", "jsonpath={.items[*].metadata.name}")
	if err != nil || len(strings.Fields(string(out))) != 1 {
		c.t.Fatalf("the agent pod on %s: %v %q", node, err, out)
	}
	return strings.TrimSpace(string(out))
}

// testDaemonSet: `kubectl apply -k deploy/` with the locally built image: the CA Job completes,
// the DaemonSet's pods (not privileged) become Ready on both nodes and chain amesh-cni into the
// node's CNI configuration; pods of an ambient namespace, made by kubelet afterwards, talk over
// HBONE across nodes with their SPIFFE identities in the agents' logs; plaintext from outside
// the mesh is refused; an AuthorizationPolicy denies.
func (c *cluster) testDaemonSet(t *testing.T) {
	c.t = t
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	deploy, err := filepath.Abs(filepath.Join("..", "..", "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := c.kubectl(ctx, "apply", "-k", deploy); err != nil {
		t.Fatalf("kubectl apply -k deploy: %v\n%s", err, out)
	}
	if out, err := c.kubectl(ctx, "wait", "-n", "amesh-system", "--for=condition=Complete", "--timeout=120s", "job/amesh-ca-init"); err != nil {
		c.dumpAgents(ctx)
		t.Fatalf("the CA Job did not complete: %v\n%s", err, out)
	}
	if out, err := c.kubectl(ctx, "rollout", "status", "-n", "amesh-system", "daemonset/amesh-agent", "--timeout=180s"); err != nil {
		c.dumpAgents(ctx)
		t.Fatalf("the DaemonSet's pods did not become Ready: %v\n%s", err, out)
	}
	out, err := c.kubectl(ctx, "get", "daemonset", "-n", "amesh-system", "amesh-agent", "-o", "jsonpath={.spec.template.spec.containers[0].securityContext.privileged}")
	if err != nil || strings.TrimSpace(string(out)) != "false" {
		t.Errorf("the agent container is not unprivileged: %q %v", out, err)
	}
	for name, n := range c.nodes {
		conf, err := os.ReadFile(filepath.Join(n.Dir(), "net.d", "10-kubenet.conflist"))
		if err != nil || !bytes.Contains(conf, []byte(`"amesh-cni"`)) || !bytes.Contains(conf, []byte(`"bridge"`)) {
			t.Errorf("%s: the CNI configuration is not chained: %v\n%s", name, err, conf)
		}
	}

	c.apply(ctx, `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {amesh.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: shop}
---
`+appPodAs("c1", "shop", "node1", "client")+"---\n"+appPodAs("s1", "shop", "node1", "server")+"---\n"+appPodAs("s2", "shop", "node2", "server"))
	ips := map[string]string{}
	for _, p := range []string{"c1", "s1", "s2"} {
		ips[p] = c.podIP(ctx, "shop", p)
	}
	for _, to := range []string{"s1", "s2"} {
		out, err := c.get(ctx, "shop", "c1", "http://"+ips[to]+":8080/")
		if err != nil || !bytes.HasPrefix(out, []byte(to+" ")) {
			c.dumpAgents(ctx)
			t.Fatalf("c1 -> %s in the mesh: %v\n%s", to, err, out)
		}
	}
	// The cross-node connection's identities, in the destination node's agent log.
	testenv.WaitFor(t, "c1 -> s2 with both SPIFFE IDs in node2's agent log", 10*time.Second, func() bool {
		out, err := c.kubectl(ctx, "logs", "-n", "amesh-system", c.agentPod(ctx, "node2"))
		return err == nil && bytes.Contains(out, []byte("spiffe://cluster.local/ns/shop/sa/client")) &&
			bytes.Contains(out, []byte("spiffe://cluster.local/ns/shop/sa/server"))
	})
	// A pod's first connection, made by its container the moment it starts, is in the mesh
	// already (plaintext to s2 would be refused): amesh-cni enrolled it before kubelet started
	// the container.
	c.apply(ctx, strings.Replace(appPodAs("early", "shop", "node1", "client"), `command: [testapp, serve, -addr, ":8080"]`,
		`command: [testapp, serve, -addr, ":8080", -first, "http://`+ips["s2"]+`:8080/"]`, 1))
	c.podIP(ctx, "shop", "early")
	if out, err := c.kubectl(ctx, "logs", "-n", "shop", "early"); err != nil || !bytes.Contains(out, []byte("first: 200 OK s2 ")) {
		t.Errorf("the first connection of a new pod's container, to s2 (strict): %v\n%s", err, out)
	}
	// A pod outside the mesh reaches a meshed pod only in plaintext, which strict inbound refuses.
	if out, err := c.get(ctx, "plain", "a1", "http://"+ips["s2"]+":8080/"); err == nil {
		t.Errorf("plaintext from outside the mesh reached s2: %s", out)
	}
	c.apply(ctx, `apiVersion: security.amesh.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  selector: {matchLabels: {app: s2}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]
`)
	testenv.WaitFor(t, "the DENY policy to refuse c1 -> s2", 10*time.Second, func() bool {
		_, err := c.get(ctx, "shop", "c1", "http://"+ips["s2"]+":8080/")
		return err != nil
	})
	if out, err := c.get(ctx, "shop", "c1", "http://"+ips["s1"]+":8080/"); err != nil {
		t.Errorf("c1 -> s1, which no policy denies: %v\n%s", err, out)
	}
	if out, err := c.kubectl(ctx, "delete", "-n", "shop", "authorizationpolicy", "deny-client"); err != nil {
		t.Fatalf("delete the policy: %v\n%s", err, out)
	}
	testenv.WaitFor(t, "c1 -> s2 allowed again", 10*time.Second, func() bool {
		_, err := c.get(ctx, "shop", "c1", "http://"+ips["s2"]+":8080/")
		return err == nil
	})
	if t.Failed() {
		return
	}
	c.waypoint(ctx, ips)
	c.clusterBench(ctx)
	c.ameshctlNode(ctx)
	if t.Failed() {
		return
	}
	c.agentRestart(ctx, ips)
	c.agentCrash(ctx, ips)
	c.rolloutRestart(ctx, ips)
	if t.Failed() {
		return
	}
	c.deleteInstallation(ctx, ips)
}

// pinnedLinks returns the IDs of the eBPF links pinned in the node's bpffs (the agent's cgroup
// attachments among them), read with bpftool inside the node.
func (c *cluster) pinnedLinks(ctx context.Context, n *Node) []int {
	c.t.Helper()
	out, err := n.Run(ctx, "find", "/sys/fs/bpf", "-type", "f")
	if err != nil {
		c.t.Fatalf("%s: pins: %v\n%s", n.Name(), err, out)
	}
	var ids []int
	for _, pin := range strings.Fields(string(out)) {
		out, err := n.Run(ctx, "bpftool", "-j", "link", "show", "pinned", pin)
		if err != nil {
			continue // a map or a program, not a link
		}
		var link struct{ ID int }
		if json.Unmarshal(out, &link) == nil && link.ID > 0 {
			ids = append(ids, link.ID)
		}
	}
	return ids
}

// deleteInstallation: `kubectl delete -k deploy/` takes amesh off every node (the stopping agents
// see their DaemonSet gone): the CNI configuration is the primary one again, byte for byte, the
// plugin and its kubeconfig are gone, no pin is left in the node's bpffs and none of the links
// the agents had attached exists any more; the pods, out of the mesh now, talk in plaintext.
func (c *cluster) deleteInstallation(ctx context.Context, ips map[string]string) {
	t := c.t
	links := map[string][]int{}
	for name, n := range c.nodes {
		if links[name] = c.pinnedLinks(ctx, n); len(links[name]) == 0 {
			t.Fatalf("%s: no eBPF link pinned while amesh runs: this check would prove nothing", name)
		}
	}
	deploy, _ := filepath.Abs(filepath.Join("..", "..", "deploy"))
	if out, err := c.kubectl(ctx, "delete", "-k", deploy, "--wait=true", "--timeout=120s"); err != nil {
		t.Fatalf("kubectl delete -k deploy: %v\n%s", err, out)
	}
	for name, n := range c.nodes {
		primary, path := n.PrimaryCNI()
		if conf, err := os.ReadFile(path); err != nil || !bytes.Equal(conf, primary) {
			t.Errorf("%s: CNI configuration after the delete (%v):\n%s\nwant the primary one:\n%s", name, err, conf, primary)
		}
		for _, f := range []string{filepath.Join(n.Dir(), "cni-bin", "amesh-cni"), filepath.Join(n.Dir(), "net.d", "amesh-cni.kubeconfig")} {
			if _, err := os.Stat(f); err == nil {
				t.Errorf("%s: %s is left", name, f)
			}
		}
		// progs.debug and maps.debug are the kernel's own (bpf_preload), on every bpffs.
		if out, err := n.Run(ctx, "find", "/sys/fs/bpf", "-mindepth", "1", "-not", "-name", "*.debug"); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("%s: left in its bpffs (%v):\n%s", name, err, out)
		}
		for _, id := range links[name] {
			if out, err := n.Run(ctx, "bpftool", "link", "show", "id", fmt.Sprint(id)); err == nil {
				t.Errorf("%s: link %d the agent attached is still there:\n%s", name, id, out)
			}
		}
	}
	for _, tc := range []struct{ ns, from, to string }{{"shop", "c1", "s2"}, {"plain", "a1", "s2"}} {
		if out, err := c.get(ctx, tc.ns, tc.from, "http://"+ips[tc.to]+":8080/"); err != nil {
			t.Errorf("%s -> %s after amesh was deleted: %v\n%s", tc.from, tc.to, err, out)
		}
	}
}

// waypoint: a waypoint from `ameshctl waypoint generate` (its Deployment made by the controller
// manager, its pod by kubelet from the amesh image, not root, not in the mesh), a Service of s2
// that names it: requests to the Service's VIP go through the waypoint, which applies an L7
// policy that targets it (DELETE /admin refused with 403, GET allowed); going around it, to s2's
// pod directly on the covered port, is refused.
func (c *cluster) waypoint(ctx context.Context, ips map[string]string) {
	t := c.t
	// The built-in CA into the waypoint's namespace, as the README says to.
	var secret struct{ Data map[string][]byte }
	out, err := c.kubectl(ctx, "get", "secret", "-n", "amesh-system", "amesh-ca", "-o", "json")
	if err != nil || json.Unmarshal(out, &secret) != nil || len(secret.Data) != 2 {
		t.Fatalf("the CA Secret: %v\n%s", err, out)
	}
	args := []string{"create", "secret", "generic", "amesh-ca", "-n", "shop"}
	for k, v := range secret.Data {
		args = append(args, "--from-literal="+k+"="+string(v))
	}
	if out, err := c.kubectl(ctx, args...); err != nil {
		t.Fatalf("copy the CA Secret: %v\n%s", err, out)
	}
	y, err := waypoint.Manifests(waypoint.Deployment{Namespace: "shop", Name: "waypoint", Image: AmeshImage})
	if err != nil {
		t.Fatal(err)
	}
	c.apply(ctx, string(y)+`---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop, labels: {amesh.io/use-waypoint: waypoint}}
spec:
  selector: {app: s2}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.amesh.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-delete, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]}]
`)
	if out, err := c.kubectl(ctx, "rollout", "status", "-n", "shop", "deployment/waypoint", "--timeout=90s"); err != nil {
		c.dumpAgents(ctx)
		out2, _ := c.kubectl(ctx, "logs", "-n", "shop", "deployment/waypoint")
		t.Fatalf("the waypoint's Deployment: %v\n%s\nlogs:\n%s", err, out, out2)
	}
	out, err = c.kubectl(ctx, "get", "svc", "-n", "shop", "api", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		t.Fatalf("the Service's VIP: %v\n%s", err, out)
	}
	vip := strings.TrimSpace(string(out))
	var last []byte
	testenv.WaitFor(t, "c1 -> the api Service through the waypoint", 20*time.Second, func() bool {
		last, err = c.get(ctx, "shop", "c1", "http://"+vip+"/")
		return err == nil && bytes.HasPrefix(last, []byte("s2 "))
	})
	if t.Failed() {
		logs, _ := c.kubectl(ctx, "logs", "-n", "shop", "deployment/waypoint")
		t.Fatalf("last answer: %s\nwaypoint log:\n%s", last, k8s.Tail(logs, 30))
	}
	out, err = c.kubectl(ctx, "exec", "-n", "shop", "c1", "--", "testapp", "get", "-method", "DELETE", "-url", "http://"+vip+"/admin/x")
	if err == nil || !bytes.Contains(out, []byte("403")) {
		t.Errorf("DELETE /admin through the waypoint: %v\n%s; want 403", err, out)
	}
	if out, err := c.get(ctx, "shop", "c1", "http://"+ips["s2"]+":8080/"); err == nil {
		t.Errorf("c1 reached s2's pod around its waypoint: %s", out)
	}
	out, err = c.kubectl(ctx, "get", "pods", "-n", "shop", "-l", "amesh.io/waypoint=waypoint", "-o", "jsonpath={.items[0].spec.securityContext.runAsUser} {.items[0].status.containerStatuses[0].ready}")
	if err != nil || strings.TrimSpace(string(out)) != "65532 true" {
		t.Errorf("the waypoint pod (runAsUser, ready): %q %v", out, err)
	}
}

// clusterBench: `ameshctl bench --kubeconfig` against this cluster (short runs): its pods made on
// both nodes, in the mesh and out of it, the four placements measured, the same table and JSON
// as the lab suite's, and its namespaces gone afterwards.
func (c *cluster) clusterBench(ctx context.Context) {
	t := c.t
	kubeconfig := filepath.Join(c.lab.Dir, "bench.kubeconfig")
	if err := c.cp.WriteKubeconfig(kubeconfig, c.cp.AdminToken()); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(c.lab.Dir, "bench-out")
	// ameshctl as a user runs it, from a machine that reaches the API server: the control
	// plane's namespace (this process's network namespace does not).
	bctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	cmd := c.lab.Command(bctx, c.lab.Node("cp").Netns, filepath.Join(c.lab.Dir, "images", "bin", "ameshctl"), "bench",
		"-kubeconfig", kubeconfig, "-image", AmeshImage, "-duration", "300ms", "-runs", "1", "-out", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		c.dumpAgents(ctx)
		t.Fatalf("ameshctl bench --kubeconfig: %v\n%s", err, b)
	} else {
		t.Logf("ameshctl bench --kubeconfig (300 ms runs):\n%s", b)
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var saved struct{ Results []bench.Result }
	if err := json.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	got := map[string]bench.Result{}
	for _, r := range saved.Results {
		got[r.Scenario] = r
	}
	for _, name := range []string{"direct same-node (cluster)", "amesh same-node (cluster)", "direct cross-node (cluster)", "amesh cross-node (cluster)"} {
		r, ok := got[name]
		if !ok || r.RR1000["p50"] <= 0 || r.RRMaxQPS <= 0 || r.CPS <= 0 {
			t.Errorf("cluster bench %s: %+v (have %v)", name, r, saved.Results)
		}
	}
	for _, ns := range []string{"amesh-bench", "amesh-bench-direct"} {
		if out, err := c.kubectl(ctx, "get", "namespace", ns, "--ignore-not-found", "-o", "name"); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("namespace %s left after the bench: %q %v", ns, out, err)
		}
	}
}

// ameshctlNode: `ameshctl --node` reads a node's agent from elsewhere, through a port-forward
// to its pod (API server, kubelet, containerd): the workloads node2's agent holds, and the
// certificates it issued; an unknown node is a clear error.
func (c *cluster) ameshctlNode(ctx context.Context) {
	t := c.t
	kubeconfig := filepath.Join(c.lab.Dir, "bench.kubeconfig")
	ameshctl := filepath.Join(c.lab.Dir, "images", "bin", "ameshctl")
	run := func(args ...string) ([]byte, error) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return c.lab.Command(cctx, c.lab.Node("cp").Netns, ameshctl, append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
	}
	out, err := run("--node", "node2", "workloads")
	if err != nil || !bytes.Contains(out, []byte("s2")) || !bytes.Contains(out, []byte("shop")) {
		t.Errorf("ameshctl --node node2 workloads: %v\n%s", err, out)
	}
	out, err = run("--node", "node2", "certificates")
	if err != nil || !bytes.Contains(out, []byte("spiffe://cluster.local/ns/shop/sa/server")) {
		t.Errorf("ameshctl --node node2 certificates: %v\n%s", err, out)
	}
	out, err = run("--node", "node9", "workloads")
	if err == nil || !bytes.Contains(out, []byte("no running agent pod")) {
		t.Errorf("ameshctl --node node9 (no such node): %v\n%s", err, out)
	}
}

// loopResult is what testapp loop reports.
type loopResult struct {
	ok, failed  int
	lastFailure time.Time
	out         string
}

// startLoop runs testapp loop in pod ns/from against addr for d, in the background; the
// function returned waits for its report.
func (c *cluster) startLoop(ctx context.Context, ns, from, addr string, d time.Duration) func() loopResult {
	c.t.Helper()
	cmd, err := c.cp.KubectlCommand(ctx, c.cp.AdminToken(), "exec", "-n", ns, from, "--", "testapp", "loop", "-addr", addr, "-d", d.String())
	if err != nil {
		c.t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	return func() loopResult {
		c.t.Helper()
		err := cmd.Wait()
		r := loopResult{out: out.String()}
		if _, serr := fmt.Sscanf(r.out, "ok %d failed %d", &r.ok, &r.failed); err != nil || serr != nil {
			c.t.Fatalf("testapp loop in %s: %v %v\n%s", from, err, serr, r.out)
		}
		for _, line := range strings.Split(r.out, "\n") {
			if v, ok := strings.CutPrefix(line, "last-failure "); ok {
				r.lastFailure, _ = time.Parse(time.RFC3339Nano, v)
			}
		}
		return r
	}
}

// agentReady waits for the DaemonSet's pod on node, other than old, to be Ready, and returns its
// name and when kubelet saw it Ready.
func (c *cluster) agentReady(ctx context.Context, node, old string) (string, time.Time) {
	c.t.Helper()
	var name string
	var at time.Time
	testenv.WaitFor(c.t, "a new agent pod Ready on "+node, 90*time.Second, func() bool {
		out, err := c.kubectl(ctx, "get", "pods", "-n", "amesh-system", "-l", "app.kubernetes.io/name=amesh-agent",
			"--field-selector", "spec.nodeName="+node, "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastTransitionTime}{"\n"}{end}`)
		if err != nil {
			return false
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			// name, then (no deletionTimestamp) "True" and the time
			if len(f) == 3 && f[0] != old && f[1] == "True" {
				name = f[0]
				at, _ = time.Parse(time.RFC3339, f[2])
				return true
			}
		}
		return false
	})
	return name, at
}

// agentRestart: the agent pod of node2 deleted; while it is gone, node2's meshed pod fails
// closed (plaintext to it from outside the mesh never gets through); the DaemonSet's new pod
// re-adopts it, and traffic from node1 resumes within 2 s of the new pod's Ready.
func (c *cluster) agentRestart(ctx context.Context, ips map[string]string) {
	t := c.t
	old := c.agentPod(ctx, "node2")
	meshed := c.startLoop(ctx, "shop", "c1", ips["s2"]+":8081", 25*time.Second)
	plain := c.startLoop(ctx, "plain", "a1", ips["s2"]+":8081", 25*time.Second)
	time.Sleep(2 * time.Second)
	if out, err := c.kubectl(ctx, "delete", "pod", "-n", "amesh-system", old, "--wait=false"); err != nil {
		t.Fatalf("delete the agent pod: %v\n%s", err, out)
	}
	name, ready := c.agentReady(ctx, "node2", old)
	m, p := meshed(), plain()
	t.Logf("agent pod %s deleted, %s Ready at %s; c1 -> s2 meanwhile: %d ok, %d failed (last failure %s); a1 (no mesh) -> s2: %d ok, %d failed",
		old, name, ready.Format(time.RFC3339), m.ok, m.failed, m.lastFailure.Format(time.RFC3339Nano), p.ok, p.failed)
	if p.ok != 0 {
		t.Errorf("plaintext from outside the mesh reached s2 %d times around the agent's restart:\n%s", p.ok, p.out)
	}
	if m.ok == 0 {
		t.Errorf("c1 -> s2 never worked around the agent's restart:\n%s", m.out)
	}
	// Ready has a resolution of a second: 3 s after it covers the 2 s the issue gives.
	if m.failed > 0 && m.lastFailure.After(ready.Add(3*time.Second)) {
		t.Errorf("c1 -> s2 still failed at %s, more than 2 s after the new agent was Ready (%s):\n%s", m.lastFailure, ready, m.out)
	}
}

// agentCrash: node2's agent killed (SIGKILL: no hand-over, no drain). Until kubelet has
// restarted it, node2's meshed pod is cut off, failing closed: connections to it from node1 fail
// and plaintext from outside the mesh never gets through; the restarted agent re-adopts it from
// its pins and traffic resumes within 2 s of Ready.
func (c *cluster) agentCrash(ctx context.Context, ips map[string]string) {
	t := c.t
	pod := c.agentPod(ctx, "node2")
	pids := c.nodes["node2"].Processes(func(argv []string) bool {
		return len(argv) > 1 && filepath.Base(argv[0]) == "amesh-agent" && argv[1] == "--kube"
	})
	if len(pids) != 1 {
		t.Fatalf("node2's agent process: found %v", pids)
	}
	meshed := c.startLoop(ctx, "shop", "c1", ips["s2"]+":8081", 20*time.Second)
	plain := c.startLoop(ctx, "plain", "a1", ips["s2"]+":8081", 20*time.Second)
	time.Sleep(2 * time.Second)
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ready time.Time
	testenv.WaitFor(t, "kubelet to restart node2's agent and see it Ready", 60*time.Second, func() bool {
		out, err := c.kubectl(ctx, "get", "pod", "-n", "amesh-system", pod, "-o",
			`jsonpath={.status.containerStatuses[0].restartCount} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastTransitionTime}`)
		f := strings.Fields(string(out))
		if err != nil || len(f) != 3 || f[0] == "0" || f[1] != "True" {
			return false
		}
		ready, _ = time.Parse(time.RFC3339, f[2])
		return true
	})
	m, p := meshed(), plain()
	t.Logf("agent of node2 killed, restarted by kubelet, Ready at %s; c1 -> s2 meanwhile: %d ok, %d failed (last failure %s); a1 (no mesh) -> s2: %d ok, %d failed",
		ready.Format(time.RFC3339), m.ok, m.failed, m.lastFailure.Format(time.RFC3339Nano), p.ok, p.failed)
	if p.ok != 0 {
		t.Errorf("plaintext from outside the mesh reached s2 %d times around the agent's crash:\n%s", p.ok, p.out)
	}
	if m.failed == 0 {
		t.Errorf("c1 -> s2 never failed while node2 had no agent: was it in the path?\n%s", m.out)
	}
	if m.ok == 0 || m.lastFailure.After(ready.Add(3*time.Second)) {
		t.Errorf("c1 -> s2 did not resume within 2 s of the restarted agent's Ready (%s):\n%s", ready, m.out)
	}
}

// rolloutRestart: `kubectl rollout restart daemonset` under a connect loop across nodes; the
// failed connects are reported (the hand-over between old and new agent is meant to drop none).
func (c *cluster) rolloutRestart(ctx context.Context, ips map[string]string) {
	t := c.t
	loop := c.startLoop(ctx, "shop", "c1", ips["s2"]+":8081", 40*time.Second)
	time.Sleep(time.Second)
	if out, err := c.kubectl(ctx, "rollout", "restart", "-n", "amesh-system", "daemonset/amesh-agent"); err != nil {
		t.Fatalf("rollout restart: %v\n%s", err, out)
	}
	start := time.Now()
	if out, err := c.kubectl(ctx, "rollout", "status", "-n", "amesh-system", "daemonset/amesh-agent", "--timeout=120s"); err != nil {
		c.dumpAgents(ctx)
		t.Fatalf("rollout status: %v\n%s", err, out)
	}
	took := time.Since(start)
	r := loop()
	t.Logf("rollout restart of both agents took %v; c1 -> s2 (connect, echo, close every 20 ms) meanwhile: %d ok, %d failed\n%s", took.Round(time.Second), r.ok, r.failed, r.out)
	if r.ok == 0 {
		t.Errorf("c1 -> s2 never worked during the rollout:\n%s", r.out)
	}
}

// dumpAgents logs the agent pods' state and logs, for a failure.
func (c *cluster) dumpAgents(ctx context.Context) {
	out, _ := c.kubectl(ctx, "get", "pods,jobs", "-n", "amesh-system", "-o", "wide")
	c.t.Logf("--- amesh-system:\n%s", out)
	out, _ = c.kubectl(ctx, "describe", "pods", "-n", "amesh-system")
	c.t.Logf("--- describe:\n%s", k8s.Tail(out, 80))
	for _, node := range []string{"node1", "node2"} {
		out, _ := c.kubectl(ctx, "get", "pods", "-n", "amesh-system", "--field-selector", "spec.nodeName="+node, "-o", "name")
		for _, p := range strings.Fields(string(out)) {
			logs, _ := c.kubectl(ctx, "logs", "-n", "amesh-system", p, "--all-containers", "--tail", "40")
			c.t.Logf("--- %s logs:\n%s", p, logs)
		}
	}
}
