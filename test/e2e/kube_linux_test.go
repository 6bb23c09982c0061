package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/netns"
	"github.com/amesh-dev/amesh/test/k8s"
	"github.com/amesh-dev/amesh/test/lab"
	"github.com/amesh-dev/amesh/workload/kube"
)

// kubeCluster is the lab playing a Kubernetes cluster: a real kube-apiserver + etcd in a netns of
// the lab's underlay ("cp"), two nodes with a real amesh-agent each (--kube, with the DaemonSet's
// ServiceAccount token, so its RBAC is what is tested), and the test as the kubelet: it creates
// pods with spec.nodeName, runs the real CNI chain (bridge + host-local + amesh-cni, via cnitool)
// in the node's netns for each, patches their status and creates EndpointSlices.
type kubeCluster struct {
	t      *testing.T
	lab    *lab.Lab
	cp     *k8s.ControlPlane
	cs     kubernetes.Interface
	dyn    dynamic.Interface
	dir    string
	cniBin string // dir of amesh-cni
	refBin string // dir of the reference plugins and cnitool

	mu     sync.Mutex
	agents map[string]*lab.Proc
	logs   map[string]string
	pods   map[string]*kubePod
	token  string // the amesh-agent ServiceAccount's

	primary    map[string][]byte // each node's primary CNI configuration, before amesh-cni
	uninstalls []func()          // amesh-agent uninstall-cni per node, after the agents stopped
}

type kubePod struct {
	name, ns, node string
	uid            types.UID
	netns          string
	ip             netip.Addr
	lns            []net.Listener
}

// Pod CIDRs of the CNI bridges: apart from every other test's so a netns scan never finds another
// test's pod.
func kubePodCIDR(i int) string { return fmt.Sprintf("10.245.%d.0/24", i+1) }

func newKubeCluster(t *testing.T) *kubeCluster {
	requireKubeParts(t)
	ctx := context.Background()
	l, err := lab.New(ctx, lab.Config{Nodes: []lab.NodeSpec{{Name: "node1"}, {Name: "node2"}, {Name: "cp"}}})
	if err != nil {
		t.Fatal(err)
	}
	c := &kubeCluster{t: t, lab: l, dir: l.Dir, agents: map[string]*lab.Proc{}, logs: map[string]string{}, pods: map[string]*kubePod{}, primary: map[string][]byte{}}
	// cnitool caches results in /var/lib/cni (libcni's default) and DEL removes them; what the
	// test created there it removes (only if empty: another user's results are theirs).
	if _, err := os.Stat("/var/lib/cni"); os.IsNotExist(err) {
		t.Cleanup(func() {
			os.Remove("/var/lib/cni/results")
			os.Remove("/var/lib/cni")
		})
	}
	t.Cleanup(c.close)
	c.refBin = cniRefBin()
	c.cniBin = filepath.Join(c.dir, "cni-bin")
	os.MkdirAll(c.cniBin, 0o755)
	if out, err := exec.Command("go", "build", "-o", filepath.Join(c.dir, "amesh-cni"), "github.com/amesh-dev/amesh/cmd/amesh-cni").CombinedOutput(); err != nil {
		t.Fatalf("build amesh-cni: %v\n%s", err, out)
	}
	// Lab loopback is down in a fresh netns: the control plane's etcd needs it.
	if out, err := l.Command(ctx, l.Node("cp").Netns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	agentUser := k8s.ServiceAccountUser("amesh-system", "amesh-agent")
	caUser := k8s.ServiceAccountUser("amesh-system", "amesh-ca-init")
	c.cp, err = k8s.Start(ctx, k8s.Config{Netns: l.Node("cp").Netns, BindIP: l.Node("cp").IP.String(), Users: []k8s.User{agentUser, caUser}, Dir: c.dir})
	if err != nil {
		t.Fatal(err)
	}
	if c.cs, err = c.cp.Clientset(c.cp.AdminToken()); err != nil {
		t.Fatal(err)
	}
	if c.dyn, err = c.cp.Dynamic(c.cp.AdminToken()); err != nil {
		t.Fatal(err)
	}
	if c.token, err = c.cp.Token(agentUser.Name); err != nil {
		t.Fatal(err)
	}
	// What a user installs: the CRD, the ServiceAccount, its RBAC, the DaemonSet.
	if out, err := c.cp.Kubectl(ctx, c.cp.AdminToken(), "apply", "-k", repoPath(t, "deploy")); err != nil {
		t.Fatalf("kubectl apply -k deploy: %v\n%s", err, out)
	}
	if out, err := c.cp.Kubectl(ctx, c.cp.AdminToken(), "wait", "--for=condition=Established", "--timeout=30s", "crd/authorizationpolicies.security.amesh.io"); err != nil {
		t.Fatalf("CRD not established: %v\n%s", err, out)
	}
	kubeconfig := filepath.Join(c.dir, "agent.kubeconfig")
	if err := c.cp.WriteKubeconfig(kubeconfig, c.token); err != nil {
		t.Fatal(err)
	}
	c.caSecret(caUser)
	for i, node := range []string{"node1", "node2"} {
		n := l.Node(node)
		// Each node routes the other's pod CIDR over the underlay, as a flat-network CNI would.
		other := l.Node([]string{"node2", "node1"}[i])
		if out, err := l.Command(ctx, n.Netns, "ip", "route", "add", kubePodCIDR(1-i), "via", other.IP.String()).CombinedOutput(); err != nil {
			t.Fatalf("route: %v %s", err, out)
		}
		// And the control plane routes back to the pods (pods that read the API, a waypoint).
		if out, err := l.Command(ctx, l.Node("cp").Netns, "ip", "route", "add", kubePodCIDR(i), "via", n.IP.String()).CombinedOutput(); err != nil {
			t.Fatalf("route: %v %s", err, out)
		}
		// The node's primary CNI configuration, as its network plugin would have written it; then
		// the DaemonSet's init container chains amesh-cni into it.
		conf := map[string]any{
			"cniVersion": "1.0.0", "name": "kubenet",
			"plugins": []any{
				map[string]any{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
					"ipam": map[string]any{"type": "host-local", "dataDir": filepath.Join(c.dir, node, "ipam"),
						"ranges": []any{[]any{map[string]any{"subnet": kubePodCIDR(i)}}}, "routes": []any{map[string]any{"dst": "0.0.0.0/0"}}}},
			},
		}
		primary, _ := json.MarshalIndent(conf, "", "  ")
		confDir := filepath.Join(c.dir, node, "net.d")
		os.MkdirAll(confDir, 0o755)
		if err := os.WriteFile(filepath.Join(confDir, "10-kubenet.conflist"), primary, 0o644); err != nil {
			t.Fatal(err)
		}
		install := func(verb string) {
			out, err := exec.Command(agentBin, verb, "--cni-bin-dir", c.cniBin, "--cni-conf-dir", confDir,
				"--plugin-binary", filepath.Join(c.dir, "amesh-cni"), "--agent-socket", c.socket(node),
				"--plugin-kubeconfig", kubeconfig).CombinedOutput()
			if err != nil {
				t.Fatalf("amesh-agent %s: %v\n%s", verb, err, out)
			}
		}
		install("install-cni")
		chained, _ := os.ReadFile(filepath.Join(confDir, "10-kubenet.conflist"))
		if !strings.Contains(string(chained), `"amesh-cni"`) || !strings.Contains(string(chained), `"bridge"`) {
			t.Fatalf("install-cni left %s", chained)
		}
		// Run once the agents (which keep the chain in place) have stopped.
		c.uninstalls = append(c.uninstalls, func() {
			install("uninstall-cni")
			if after, _ := os.ReadFile(filepath.Join(confDir, "10-kubenet.conflist")); string(after) != string(primary) {
				t.Errorf("uninstall-cni did not restore the primary configuration:\n%s\nwant\n%s", after, primary)
			}
		})
		c.primary[node] = primary
		c.startAgent(node)
	}
	return c
}

// requireKubeParts fails (or, outside CI, skips loudly) when the real parts are missing.
func requireKubeParts(t *testing.T) {
	if _, err := os.Stat(filepath.Join(cniRefBin(), "bridge")); err != nil {
		msg := fmt.Sprintf("reference CNI plugins not in %s (make deps installs them): %v", cniRefBin(), err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED LOUDLY: " + msg)
	}
}

func cniRefBin() string {
	if d := os.Getenv("AMESH_CNI_BIN"); d != "" {
		return d
	}
	return filepath.Join(os.Getenv("HOME"), ".cache/amesh/cni/bin")
}

func repoPath(t *testing.T, rel string) string {
	p, err := filepath.Abs(filepath.Join("..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// caSecret plays deploy/'s amesh-ca-init Job (amesh-agent create-ca, with that Job's
// ServiceAccount, so its Role is what is tested) and the kubelet mounting the Secret it made where
// the agents read their CA.
func (c *kubeCluster) caSecret(caUser k8s.User) {
	t := c.t
	token, err := c.cp.Token(caUser.Name)
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(c.dir, "ca-init.kubeconfig")
	if err := c.cp.WriteKubeconfig(kc, token); err != nil {
		t.Fatal(err)
	}
	createCA := func() string {
		cmd := exec.Command(agentBin, "create-ca", "--kubeconfig", kc)
		out, err := c.lab.Command(context.Background(), c.lab.Node("node1").Netns, cmd.Path, cmd.Args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("amesh-agent create-ca: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := createCA(); !strings.Contains(out, "created secret amesh-system/amesh-ca") {
		t.Fatalf("create-ca: %q", out)
	}
	if out := createCA(); !strings.Contains(out, "already holds the CA") {
		t.Fatalf("create-ca run again: %q, want the existing Secret left alone", out)
	}
	sec, err := c.cs.CoreV1().Secrets("amesh-system").Get(context.Background(), "amesh-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(c.dir, "ca")
	os.MkdirAll(dir, 0o700)
	for name, b := range sec.Data {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o400); err != nil {
			t.Fatal(err)
		}
	}
}

func (c *kubeCluster) socket(node string) string {
	return filepath.Join(c.dir, node, "run", "cni.sock")
}

func (c *kubeCluster) startAgent(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.lab.Node(node)
	logPath := filepath.Join(c.dir, node+"-agent.log")
	c.logs[node] = logPath
	p, err := c.lab.Start(context.Background(), n.Netns, logPath, agentBin,
		"--node", node, "--kube", "--kubeconfig", filepath.Join(c.dir, "agent.kubeconfig"),
		"--ca-dir", filepath.Join(c.dir, "ca"), "--pin-dir", n.PinDir, "--drain-timeout", "1s",
		"--cni-socket", c.socket(node), "--health-addr", "127.0.0.1:15021",
		"--handoff-socket", filepath.Join(c.dir, node, "run", "handoff.sock"),
		// As the DaemonSet's agent: keep amesh-cni chained (checked often here, to be testable).
		"--cni-conf-dir", filepath.Join(c.dir, node, "net.d"), "--cni-bin-dir", c.cniBin,
		"--plugin-binary", filepath.Join(c.dir, "amesh-cni"), "--plugin-kubeconfig", filepath.Join(c.dir, "agent.kubeconfig"),
		"--cni-keep-interval", "100ms")
	if err != nil {
		c.t.Fatal(err)
	}
	c.agents[node] = p
	testenv.WaitFor(c.t, node+"'s agent to be ready", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		out, err := c.lab.Command(ctx, n.Netns, "curl", "-sf", "http://127.0.0.1:15021/healthz/ready").CombinedOutput()
		return err == nil && strings.Contains(string(out), "ready")
	})
}

func (c *kubeCluster) stopAgent(node string) {
	c.mu.Lock()
	p := c.agents[node]
	delete(c.agents, node)
	c.mu.Unlock()
	if p == nil {
		return
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		p.Kill()
	}
}

func (c *kubeCluster) close() {
	for _, node := range []string{"node1", "node2"} {
		c.stopAgent(node)
		if out, err := exec.Command(agentBin, "--uninstall", "--pin-dir", c.lab.Node(node).PinDir).CombinedOutput(); err != nil {
			c.t.Errorf("uninstall %s: %v\n%s", node, err, out)
		}
	}
	for _, p := range c.pods {
		c.deletePodSandbox(p)
	}
	for _, u := range c.uninstalls {
		u()
	}
	if c.t.Failed() {
		for node, path := range c.logs {
			b, _ := os.ReadFile(path)
			c.t.Logf("agent %s log:\n%s", node, tailLines(string(b), 80))
		}
	}
	if c.cp != nil {
		c.cp.Stop()
	}
	c.lab.Close()
}

func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (c *kubeCluster) namespace(name string, labels map[string]string) {
	_, err := c.cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
}

func (c *kubeCluster) labelNamespace(name, value string) {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, kube.LabelDataplaneMode, value)
	if _, err := c.cs.CoreV1().Namespaces().Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// cniAdd runs the node's CNI chain for the pod's sandbox as kubelet would (ADD), returning the
// chain's result (the pod's IP) or its error output.
func (c *kubeCluster) cni(cmd string, p *kubePod) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	x := c.lab.Command(ctx, c.lab.Node(p.node).Netns, filepath.Join(c.refBin, "cnitool"), cmd, "kubenet", p.netns)
	x.Env = append(os.Environ(),
		"CNI_PATH="+c.refBin+":"+c.cniBin,
		"NETCONFPATH="+filepath.Join(c.dir, p.node, "net.d"),
		"CNI_IFNAME=eth0",
		fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", p.ns, p.name, p.uid),
	)
	out, err := x.CombinedOutput()
	return string(out), err
}

type podOpts struct {
	sa     string
	labels map[string]string
	probe  bool // a readiness probe on :8080
}

// createPod creates the pod object (scheduled on node) and its netns; startPod then plays the
// kubelet's sandbox set-up.
func (c *kubeCluster) createPod(ns, name, node string, o podOpts) *kubePod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: o.labels},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: o.sa, Containers: []corev1.Container{{
			Name: "app", Image: "example.invalid/app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		}}},
	}
	if o.probe {
		pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("http")}}}
	}
	got, err := c.cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	p := &kubePod{name: name, ns: ns, node: node, uid: got.UID, netns: "/run/netns/" + c.lab.Prefix + "-k-" + name}
	// The runtime brings the sandbox's loopback up before the CNI chain runs, as containerd does.
	if out, err := exec.Command("ip", "netns", "add", filepath.Base(p.netns)).CombinedOutput(); err != nil {
		c.t.Fatalf("netns: %v %s", err, out)
	}
	if out, err := exec.Command("ip", "-n", filepath.Base(p.netns), "link", "set", "lo", "up").CombinedOutput(); err != nil {
		c.t.Fatalf("netns lo: %v %s", err, out)
	}
	c.mu.Lock()
	c.pods[name] = p
	c.mu.Unlock()
	return p
}

// startPod runs CNI ADD for p; on success it patches the pod's status like the kubelet and
// serves the app in its netns. It returns CNI's error output on failure.
func (c *kubeCluster) startPod(p *kubePod) (time.Duration, error) {
	start := time.Now()
	out, err := c.cni("add", p)
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("cni add %s: %v: %s", p.name, err, out)
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) == 0 {
		return took, fmt.Errorf("cni add %s: result %q: %v", p.name, out, err)
	}
	pfx, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		return took, err
	}
	p.ip = pfx.Addr()
	status := map[string]any{"status": map[string]any{
		"phase": "Running", "podIP": p.ip.String(), "podIPs": []any{map[string]any{"ip": p.ip.String()}},
		"hostIP": c.lab.Node(p.node).IP.String(), "hostIPs": []any{map[string]any{"ip": c.lab.Node(p.node).IP.String()}},
	}}
	b, _ := json.Marshal(status)
	if _, err := c.cs.CoreV1().Pods(p.ns).Patch(context.Background(), p.name, types.MergePatchType, b, metav1.PatchOptions{}, "status"); err != nil {
		return took, err
	}
	lp := &lab.Pod{Name: p.name, Netns: p.netns, IP: p.ip}
	ln, err := lp.Listen(":8080")
	if err != nil {
		return took, err
	}
	p.lns = append(p.lns, ln)
	name := p.name
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "hello from %s, client %s\n", name, r.RemoteAddr)
	}))
	return took, nil
}

func (c *kubeCluster) pod(ns, name, node string, o podOpts) *kubePod {
	p := c.createPod(ns, name, node, o)
	if _, err := c.startPod(p); err != nil {
		c.t.Fatal(err)
	}
	return p
}

func (c *kubeCluster) deletePodSandbox(p *kubePod) {
	for _, l := range p.lns {
		l.Close()
	}
	p.lns = nil
	if p.ip.IsValid() {
		c.cni("del", p)
	}
	exec.Command("ip", "netns", "del", filepath.Base(p.netns)).Run()
}

func (c *kubeCluster) curl(from *kubePod, url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := c.lab.Command(ctx, from.netns, "curl", "-sS", "--max-time", "3", url).CombinedOutput()
	return string(out), err
}

func kurl(p *kubePod) string { return "http://" + p.ip.String() + ":8080/" }

func (c *kubeCluster) accessLines(node string) []map[string]any {
	return accessOf(logLinesOf(c.t, c.logs[node]))
}

func (c *kubeCluster) hasAccess(node string, want map[string]string) bool {
	return anyLine(c.accessLines(node), want)
}

// logged reports whether node's agent logged msg for the pod (by UID).
func (c *kubeCluster) logged(node, msg, pod string) bool {
	return anyLine(logLinesOf(c.t, c.logs[node]), map[string]string{"msg": msg, "pod": pod})
}

// TestKubernetes runs amesh against a real API server with the real CNI chain, as a user would
// run it: the acceptance of the Kubernetes issue, one subtest each, sharing one cluster.
func TestKubernetes(t *testing.T) {
	c := newKubeCluster(t)
	ctx := context.Background()
	c.namespace("shop", map[string]string{kube.LabelDataplaneMode: "ambient"})
	c.namespace("late", nil)
	web := c.pod("shop", "web", "node1", podOpts{sa: "web", labels: map[string]string{"app": "web"}})
	api := c.pod("shop", "api", "node2", podOpts{sa: "api", labels: map[string]string{"app": "api"}, probe: true})
	api1 := c.pod("shop", "api1", "node1", podOpts{sa: "api", labels: map[string]string{"app": "api"}})
	optout := c.pod("shop", "batch", "node1", podOpts{sa: "batch", labels: map[string]string{kube.LabelDataplaneMode: "none"}})
	lateA := c.pod("late", "late-a", "node1", podOpts{sa: "a"})
	lateB := c.pod("late", "late-b", "node2", podOpts{sa: "b"})
	c.namespace("stuck", nil)
	stuck := c.pod("stuck", "stuck-a", "node1", podOpts{sa: "s"})

	t.Run("pods of a labelled namespace talk over HBONE with their SPIFFE identities", func(t *testing.T) {
		out, err := c.curl(web, kurl(api))
		if err != nil || !strings.Contains(out, "hello from api, client "+web.ip.String()+":") {
			t.Fatalf("web -> api: %q, %v", out, err)
		}
		testenv.WaitFor(t, "web -> api over HBONE in node1's access log", 3*time.Second, func() bool {
			return c.hasAccess("node1", map[string]string{"path": "hbone", "src_id": "spiffe://cluster.local/ns/shop/sa/web", "dst_id": "spiffe://cluster.local/ns/shop/sa/api", "result": "ok"})
		})
		if !c.logged("node1", "pod enrolled", string(web.uid)) {
			t.Errorf("node1 did not log web's enrollment by UID")
		}
		if out, err := c.cni("check", web); err != nil {
			t.Errorf("CNI CHECK of enrolled web: %v: %s", err, out)
		}
	})

	t.Run("the agent puts amesh-cni back when the primary CNI rewrites its configuration", func(t *testing.T) {
		conf := filepath.Join(c.dir, "node1", "net.d", "10-kubenet.conflist")
		if err := os.WriteFile(conf, c.primary["node1"], 0o644); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, "amesh-cni chained again", 3*time.Second, func() bool {
			b, _ := os.ReadFile(conf)
			return strings.Contains(string(b), `"amesh-cni"`)
		})
	})

	t.Run("a pod labelled dataplane-mode=none is left alone", func(t *testing.T) {
		before := len(c.accessLines("node1"))
		if out, err := c.curl(optout, kurl(lateB)); err != nil || !strings.Contains(out, "hello from late-b") {
			t.Fatalf("batch -> late-b: %q, %v", out, err)
		}
		time.Sleep(200 * time.Millisecond)
		for _, m := range c.accessLines("node1")[before:] {
			if m["src_addr"] == optout.ip.String() {
				t.Errorf("the opted-out pod's connection went through the agent: %v", m)
			}
		}
	})

	t.Run("labelling a namespace enrolls its running pods; unlabelling takes them out", func(t *testing.T) {
		c.labelNamespace("late", `"ambient"`)
		testenv.WaitFor(t, "late-a and late-b enrolled", 5*time.Second, func() bool {
			return c.logged("node1", "pod enrolled", string(lateA.uid)) && c.logged("node2", "pod enrolled", string(lateB.uid))
		})
		if out, err := c.curl(lateA, kurl(lateB)); err != nil || !strings.Contains(out, "hello from late-b") {
			t.Fatalf("late-a -> late-b after labelling: %q, %v", out, err)
		}
		testenv.WaitFor(t, "late-a -> late-b over HBONE", 3*time.Second, func() bool {
			return c.hasAccess("node1", map[string]string{"path": "hbone", "src_id": "spiffe://cluster.local/ns/late/sa/a", "result": "ok"})
		})
		c.labelNamespace("late", "null")
		testenv.WaitFor(t, "late-a and late-b unenrolled", 5*time.Second, func() bool {
			return c.logged("node1", "pod unenrolled", string(lateA.uid)) && c.logged("node2", "pod unenrolled", string(lateB.uid))
		})
		before := len(c.accessLines("node1"))
		if out, err := c.curl(lateA, kurl(lateB)); err != nil || !strings.Contains(out, "hello from late-b") {
			t.Fatalf("late-a -> late-b after unlabelling: %q, %v", out, err)
		}
		time.Sleep(200 * time.Millisecond)
		if n := len(c.accessLines("node1")) - before; n != 0 {
			t.Errorf("after unlabelling, %d connections still went through node1's agent", n)
		}
	})

	t.Run("a running pod that cannot be enrolled gets an Event, and holds readiness down until it can", func(t *testing.T) {
		// A port the agent needs in the pod's netns (the outbound capture's) is taken by the pod.
		ln, err := netns.ListenTCP(stuck.netns, "127.0.0.1:15001", net.ListenConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c.labelNamespace("stuck", `"ambient"`)
		defer c.labelNamespace("stuck", "null")
		events := func() []corev1.Event {
			evs, err := c.cs.CoreV1().Events("stuck").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.uid=" + string(stuck.uid)})
			if err != nil {
				t.Fatal(err)
			}
			return evs.Items
		}
		testenv.WaitFor(t, "an event on stuck-a", 10*time.Second, func() bool { return len(events()) > 0 })
		e := events()[0]
		if e.Reason != "EnrollmentFailed" || e.Type != corev1.EventTypeWarning || e.Source.Component != "amesh-agent" || e.Source.Host != "node1" ||
			!strings.Contains(e.Message, "address already in use") {
			t.Errorf("event on stuck-a: %s %s from %s/%s: %q", e.Type, e.Reason, e.Source.Component, e.Source.Host, e.Message)
		}
		ready := func() string {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			out, _ := c.lab.Command(ctx, c.lab.Node("node1").Netns, "curl", "-s", "-w", " %{http_code}", "http://127.0.0.1:15021/healthz/ready").CombinedOutput()
			return string(out)
		}
		if r := ready(); !strings.HasSuffix(r, " 500") || !strings.Contains(r, string(stuck.uid)) {
			t.Errorf("node1's readiness while stuck-a cannot enroll: %q, want 500 naming the pod", r)
		}
		failures := func() int {
			n := 0
			for _, l := range logLinesOf(t, c.logs["node1"]) {
				if l["msg"] == "enroll failed: the pod's traffic is refused until it succeeds" && l["pod"] == string(stuck.uid) {
					n++
				}
			}
			return n
		}
		// Retries back off from 200 ms: three failures take ~1.4 s.
		testenv.WaitFor(t, "three failed enrollments of stuck-a", 10*time.Second, func() bool { return failures() >= 3 })
		ln.Close() // the port is free: the agent's next retry enrolls the pod
		testenv.WaitFor(t, "stuck-a enrolled on a retry", 40*time.Second, func() bool { return c.logged("node1", "pod enrolled", string(stuck.uid)) })
		testenv.WaitFor(t, "node1 ready again", 5*time.Second, func() bool { return strings.HasSuffix(ready(), " 200") })
		// Every retry failed alike; the pod's owner got one Event for them, not one per retry.
		failed := failures()
		if n := len(events()); n != 1 {
			t.Errorf("%d failed enrollments of stuck-a made %d events, want 1", failed, n)
		}
		t.Logf("%d failed enrollments of stuck-a, 1 event: %q", failed, e.Message)
	})

	t.Run("an AuthorizationPolicy denies within a second, and its deletion allows again", func(t *testing.T) {
		pol := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.amesh.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "api-only-other", "namespace": "shop"},
			"spec": map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": "api"}},
				"action":   "ALLOW",
				"rules":    []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/shop/sa/other"}}}}}},
			},
		}}
		res := c.dyn.Resource(kube.AuthorizationPolicyResource).Namespace("shop")
		asked := time.Now()
		if _, err := res.Create(ctx, pol, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		created := time.Now() // the object exists once Create has returned
		t.Logf("Create took %v", created.Sub(asked).Round(time.Millisecond))
		var deniedAfter time.Duration
		var attempts []string
		testenv.WaitFor(t, "web -> api denied", 3*time.Second, func() bool {
			s := time.Now()
			out, err := c.curl(web, kurl(api))
			deniedAfter = time.Since(created)
			attempts = append(attempts, fmt.Sprintf("%v (%v): %v %q", s.Sub(created).Round(time.Millisecond), time.Since(s).Round(time.Millisecond), err, out))
			return err != nil
		})
		if deniedAfter > time.Second {
			t.Errorf("denied only %v after the policy was created (want ≤ 1s); attempts:\n%s", deniedAfter, strings.Join(attempts, "\n"))
		}
		t.Logf("denied %v after the policy was created (%d attempts)", deniedAfter.Round(time.Millisecond), len(attempts))
		if err := res.Delete(ctx, "api-only-other", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, "web -> api allowed again", time.Second, func() bool {
			out, err := c.curl(web, kurl(api))
			return err == nil && strings.Contains(out, "hello from api")
		})
	})

	t.Run("kubelet probes from the node reach a STRICT pod's probe port", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, err := c.lab.Command(cctx, c.lab.Node("node2").Netns, "curl", "-sS", "--max-time", "3", kurl(api)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "hello from api") {
			t.Errorf("probe-like GET from node2 to api:8080 under STRICT: %q, %v", out, err)
		}
		if out, err := c.curl(lateA, kurl(api)); err == nil {
			t.Errorf("an unmeshed pod reached STRICT api in plaintext: %q", out)
		}
	})

	t.Run("a service VIP balances over its EndpointSlice; removing an endpoint stops new connections to it", func(t *testing.T) {
		svc, err := c.cs.CoreV1().Services("shop").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop"},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "api"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		slice := func(pods ...*kubePod) *discoveryv1.EndpointSlice {
			es := &discoveryv1.EndpointSlice{
				ObjectMeta:  metav1.ObjectMeta{Name: "api-1", Namespace: "shop", Labels: map[string]string{discoveryv1.LabelServiceName: "api"}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr[int32](8080), Protocol: ptr(corev1.ProtocolTCP)}},
			}
			for _, p := range pods {
				es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.ip.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}, NodeName: ptr(p.node)})
			}
			return es
		}
		if _, err := c.cs.DiscoveryV1().EndpointSlices("shop").Create(ctx, slice(api, api1), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		vip := "http://" + svc.Spec.ClusterIP + ":80/"
		seen := func(n int) map[string]int {
			got := map[string]int{}
			for range n {
				if out, err := c.curl(web, vip); err == nil {
					for _, name := range []string{"api1", "api"} {
						if strings.Contains(out, "hello from "+name+",") {
							got[name]++
							break
						}
					}
				}
			}
			return got
		}
		testenv.WaitFor(t, "both endpoints answering the VIP", 5*time.Second, func() bool {
			got := seen(6)
			return got["api"] > 0 && got["api1"] > 0
		})
		es := slice(api1)
		cur, err := c.cs.DiscoveryV1().EndpointSlices("shop").Get(ctx, "api-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		es.ResourceVersion = cur.ResourceVersion
		if _, err := c.cs.DiscoveryV1().EndpointSlices("shop").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, "only api1 answering the VIP", 5*time.Second, func() bool {
			got := seen(6)
			return got["api"] == 0 && got["api1"] == 6
		})
	})

	t.Run("CNI ADD with the agent down fails for a mesh pod, passes a non-mesh pod, and succeeds on retry", func(t *testing.T) {
		c.stopAgent("node1")
		mesh := c.createPod("shop", "newbie", "node1", podOpts{sa: "newbie"})
		_, err := c.startPod(mesh)
		if err == nil || !strings.Contains(err.Error(), "not reachable") || !strings.Contains(err.Error(), "shop/newbie") {
			t.Errorf("ADD of a mesh pod with the agent down: %v, want a clear refusal naming the pod and the unreachable agent", err)
		}
		plain := c.createPod("late", "plainpod", "node1", podOpts{sa: "p"})
		if _, err := c.startPod(plain); err != nil {
			t.Errorf("ADD of a non-mesh pod with the agent down: %v", err)
		}
		c.startAgent("node1")
		c.cni("del", mesh) // kubelet tears the failed sandbox down before retrying
		if _, err := c.startPod(mesh); err != nil {
			t.Fatalf("retried ADD after the agent came back: %v", err)
		}
		if out, err := c.curl(mesh, kurl(api)); err != nil || !strings.Contains(out, "hello from api") {
			t.Errorf("the retried pod -> api: %q, %v", out, err)
		}
	})

	t.Run("API server restarted: the agents keep serving from their cache and resync after", func(t *testing.T) {
		if err := c.cp.StopAPIServer(); err != nil {
			t.Fatal(err)
		}
		if out, err := c.curl(web, kurl(api)); err != nil || !strings.Contains(out, "hello from api") {
			t.Errorf("web -> api with the API server down: %q, %v", out, err)
		}
		if err := c.cp.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		// A change made after the restart is seen: a DENY for web.
		pol := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.amesh.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "deny-web", "namespace": "shop"},
			"spec":     map[string]any{"action": "DENY", "rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/shop/sa/web"}}}}}}},
		}}
		res := c.dyn.Resource(kube.AuthorizationPolicyResource).Namespace("shop")
		if _, err := res.Create(ctx, pol, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, "the agents to resync and deny web", 15*time.Second, func() bool {
			_, err := c.curl(web, kurl(api))
			return err != nil
		})
		res.Delete(ctx, "deny-web", metav1.DeleteOptions{})
		testenv.WaitFor(t, "web allowed again", 5*time.Second, func() bool {
			_, err := c.curl(web, kurl(api))
			return err == nil
		})
	})

	t.Run("CNI ADD latency of mesh pods", func(t *testing.T) {
		var took []time.Duration
		for i := range 50 {
			p := c.createPod("shop", fmt.Sprintf("lat-%d", i), []string{"node1", "node2"}[i%2], podOpts{sa: "lat"})
			d, err := c.startPod(p)
			if err != nil {
				t.Fatal(err)
			}
			took = append(took, d)
		}
		slices.Sort(took)
		var agentSide []time.Duration
		for _, node := range []string{"node1", "node2"} {
			lines, _ := lab.ReadJSONLines(c.logs[node])
			for _, m := range lines {
				if pod, _ := m["pod"].(string); m["msg"] == "cni add: pod enrolled" && strings.HasPrefix(pod, "shop/lat-") {
					if ns, ok := m["took"].(float64); ok {
						agentSide = append(agentSide, time.Duration(ns))
					}
				}
			}
		}
		slices.Sort(agentSide)
		if len(agentSide) != len(took) {
			t.Fatalf("%d agent-side AddPod lines for %d ADDs", len(agentSide), len(took))
		}
		t.Logf("of which the agent's AddPod (state update, listeners, sk_lookup, certificate): p50 %v, p99 %v",
			agentSide[len(agentSide)/2].Round(time.Microsecond), agentSide[len(agentSide)*99/100].Round(time.Microsecond))
		t.Logf("CNI ADD (bridge + host-local + amesh-cni, mesh pod, enrolled before return) over %d pods: p50 %v, p99 %v, max %v",
			len(took), took[len(took)/2].Round(time.Microsecond), took[len(took)*99/100].Round(time.Microsecond), took[len(took)-1].Round(time.Microsecond))
	})

	t.Run("a service that names a waypoint is served through it: L7 policy, and no way around it", func(t *testing.T) {
		c.namespace("l7", map[string]string{kube.LabelDataplaneMode: "ambient"})
		client := c.pod("l7", "l7c", "node1", podOpts{sa: "client"})
		server := c.pod("l7", "l7s", "node2", podOpts{sa: "server", labels: map[string]string{"app": "l7s"}})
		wp := c.pod("l7", "l7wp", "node1", podOpts{sa: "waypoint", labels: map[string]string{"app": "l7wp", kube.LabelDataplaneMode: "none"}})
		service := func(name string, labels map[string]string, port, target int32, ep *kubePod) string {
			svc, err := c.cs.CoreV1().Services("l7").Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "l7", Labels: labels},
				Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "p", Port: port, TargetPort: intstr.FromInt32(target)}}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.cs.DiscoveryV1().EndpointSlices("l7").Create(ctx, &discoveryv1.EndpointSlice{
				ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Namespace: "l7", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       []discoveryv1.EndpointPort{{Name: ptr("p"), Port: ptr(target), Protocol: ptr(corev1.ProtocolTCP)}},
				Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ep.ip.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}, NodeName: ptr(ep.node)}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return svc.Spec.ClusterIP
		}
		service("l7wp", map[string]string{kube.LabelWaypointFor: "service"}, 15008, 15008, wp)
		vip := service("l7s", map[string]string{kube.LabelUseWaypoint: "l7wp"}, 80, 8080, server)
		pol := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.amesh.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "no-admin-delete", "namespace": "l7"},
			"spec": map[string]any{
				"targetRefs": []any{map[string]any{"kind": "Service", "name": "l7wp"}},
				"action":     "DENY",
				"rules":      []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{"methods": []any{"DELETE"}, "paths": []any{"/admin*"}}}}}},
			},
		}}
		if _, err := c.dyn.Resource(kube.AuthorizationPolicyResource).Namespace("l7").Create(ctx, pol, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The waypoint reads the cluster with the agents' (read-only) role: no HTTPRoutes.
		log := filepath.Join(c.dir, "waypoint.log")
		p, err := c.lab.Start(ctx, wp.netns, log, waypointBin, "--kube", "--kubeconfig", filepath.Join(c.dir, "agent.kubeconfig"),
			"--name", "l7wp", "--namespace", "l7", "--service-account", "waypoint", "--ca-dir", filepath.Join(c.dir, "ca"))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { p.Kill(); p.Wait() }()
		call := func(method, url string) (string, error) {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			out, err := c.lab.Command(cctx, client.netns, "curl", "-sS", "--max-time", "3", "-X", method, "-w", " %{http_code}", url).CombinedOutput()
			return string(out), err
		}
		url := "http://" + vip + ":80/"
		var last string
		defer func() {
			if t.Failed() {
				b, _ := os.ReadFile(log)
				t.Logf("last answer: %s\nwaypoint log:\n%s", last, tailLines(string(b), 30))
			}
		}()
		testenv.WaitFor(t, "l7c -> l7s through the waypoint", 15*time.Second, func() bool {
			out, err := call("GET", url)
			last = fmt.Sprintf("%q %v", out, err)
			return err == nil && strings.Contains(out, "hello from l7s, client "+wp.ip.String()) && strings.HasSuffix(out, " 200")
		})
		if out, err := call("DELETE", url+"admin"); err != nil || !strings.Contains(out, "RBAC: access denied") || !strings.HasSuffix(out, " 403") {
			t.Errorf("DELETE /admin through the waypoint: %q, %v; want 403", out, err)
		}
		lines, _ := lab.ReadJSONLines(log)
		if !anyLine(lines, map[string]string{"msg": "request", "method": "DELETE", "status": "403", "src_id": "spiffe://cluster.local/ns/l7/sa/client"}) {
			t.Errorf("the waypoint logged no 403 for the client's DELETE")
		}
		if out, err := c.curl(client, kurl(server)); err == nil {
			t.Errorf("l7c dialled l7s's pod directly, around the waypoint: %q", out)
		}
		testenv.WaitFor(t, "node2 refusing the bypass", 3*time.Second, func() bool {
			for _, m := range c.accessLines("node2") {
				// Refused at the CONNECT (waypoint_bypass), not let in and revoked after.
				if r, _ := m["reason"].(string); m["result"] == "refused" && strings.HasPrefix(r, "waypoint_bypass") {
					return true
				}
			}
			return false
		})
	})
}

func ptr[T any](v T) *T { return &v }
