package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/amesh-dev/amesh/test/lab"
)

// ClusterConfig is `ameshctl bench --kubeconfig`: the suite's request/response and connection
// measures between pods of a running cluster, in the mesh and out of it.
type ClusterConfig struct {
	// Kubeconfig is the cluster's kubeconfig file; empty is the in-cluster configuration.
	Kubeconfig string
	// Image runs the pods: one with ameshctl in its PATH (`make image`'s).
	Image string
	// Namespace is the prefix of the two namespaces made for the run: <ns> in the mesh, labelled
	// amesh.io/dataplane-mode=ambient, and <ns>-direct out of it. Both are deleted at the end.
	Namespace string
	// Nodes are the two nodes to place the pods on (client and same-node server on the first,
	// cross-node server on the second); empty picks the first two Ready nodes by name; with one
	// node only, the cross-node scenarios are left out.
	Nodes []string
	// Duration of each load run, Runs rounds (medians reported), OutDir for the results.
	Duration time.Duration
	Runs     int
	OutDir   string
}

// clusterPods are the pods of one namespace of a cluster run.
var clusterPods = []struct{ name, node string }{{"client", "a"}, {"server-same", "a"}, {"server-cross", "b"}}

// RunCluster runs the cluster scenarios and writes results.md, results.json and results.png to
// OutDir, as the lab suite does; it removes what it made, also on failure. Agent CPU and memory
// and iperf3 throughput are not measured here (the pods have no iperf3, and the agents are not
// this process's children): those columns show "–".
func RunCluster(ctx context.Context, cfg ClusterConfig) error {
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: cfg.Kubeconfig}, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return fmt.Errorf("bench: kubeconfig: %w", err)
	}
	rc.UserAgent = "ameshctl-bench"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "amesh-bench"
	}
	if cfg.Runs < 1 {
		cfg.Runs = 1
	}
	nodes, err := pickNodes(ctx, cs, cfg.Nodes)
	if err != nil {
		return err
	}
	namespaces := map[string]map[string]string{
		cfg.Namespace:             {"amesh.io/dataplane-mode": "ambient"},
		cfg.Namespace + "-direct": nil,
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for ns := range namespaces {
			cs.CoreV1().Namespaces().Delete(dctx, ns, metav1.DeleteOptions{})
		}
		for ns := range namespaces {
			wait.PollUntilContextCancel(dctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
				_, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
				return apierrors.IsNotFound(err), nil
			})
		}
	}()
	ips := map[string]string{} // ns/pod -> IP
	for ns, labels := range namespaces {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("bench: namespace %s: %w", ns, err)
		}
		for _, p := range clusterPods {
			node := nodes[0]
			if p.node == "b" {
				if len(nodes) < 2 {
					continue
				}
				node = nodes[1]
			}
			if _, err := cs.CoreV1().Pods(ns).Create(ctx, benchPod(p.name, node, cfg.Image), metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("bench: pod %s/%s: %w", ns, p.name, err)
			}
		}
	}
	for ns := range namespaces {
		for _, p := range clusterPods {
			if p.node == "b" && len(nodes) < 2 {
				continue
			}
			ip, err := waitPodReady(ctx, cs, ns, p.name)
			if err != nil {
				return err
			}
			ips[ns+"/"+p.name] = ip
		}
	}
	mesh, direct := cfg.Namespace, cfg.Namespace+"-direct"
	addr := func(ns, pod string) string { return ips[ns+"/"+pod] + ":" + lab.EchoPort }
	scenarios := []clusterScenario{
		{name: "direct same-node (cluster)", ns: direct, to: addr(direct, "server-same")},
		{name: "amesh same-node (cluster)", ns: mesh, to: addr(mesh, "server-same"), base: "direct same-node (cluster)"},
	}
	if len(nodes) > 1 {
		scenarios = append(scenarios,
			clusterScenario{name: "direct cross-node (cluster)", ns: direct, to: addr(direct, "server-cross")},
			clusterScenario{name: "amesh cross-node (cluster)", ns: mesh, to: addr(mesh, "server-cross"), base: "direct cross-node (cluster)"})
	} else {
		fmt.Fprintln(os.Stderr, "bench: one node only: no cross-node scenarios")
	}
	all := make([][]Result, len(scenarios))
	for round := 1; round <= cfg.Runs; round++ {
		for i, sc := range scenarios {
			r, err := sc.measure(ctx, rc, cs, cfg.Duration)
			if err != nil {
				return fmt.Errorf("bench: %s: %w", sc.name, err)
			}
			all[i] = append(all[i], r)
			fmt.Fprintf(os.Stderr, "bench: round %d/%d: %s done\n", round, cfg.Runs, sc.name)
		}
	}
	return writeResults(cfg.OutDir, cfg.Duration, cfg.Runs, all)
}

// pickNodes returns the nodes given, or the first two Ready nodes by name.
func pickNodes(ctx context.Context, cs kubernetes.Interface, given []string) ([]string, error) {
	if len(given) > 0 {
		return given, nil
	}
	list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("bench: nodes: %w", err)
	}
	var ready []string
	for _, n := range list.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && !n.Spec.Unschedulable {
				ready = append(ready, n.Name)
			}
		}
	}
	slices.Sort(ready)
	if len(ready) == 0 {
		return nil, errors.New("bench: no Ready node")
	}
	return ready[:min(2, len(ready))], nil
}

// benchPod is one pod of the run: the suite's echo server (every pod serves; the client's is
// idle), placed on node by its hostname label as node affinity would.
func benchPod(name, node, image string) *corev1.Pod {
	no := false
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/name": "amesh-bench", "amesh-bench/role": name}},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{corev1.LabelHostname: node},
			TerminationGracePeriodSeconds: new(int64),
			AutomountServiceAccountToken:  &no,
			Containers: []corev1.Container{{
				Name: "bench", Image: image, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"ameshctl", "bench", "serve", "-addr", ":" + lab.EchoPort},
				ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
					TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("echo")}}},
				Ports: []corev1.ContainerPort{{Name: "echo", ContainerPort: echoPort()}},
			}},
		},
	}
}

// waitPodReady waits up to 2 minutes for pod ns/name to be Ready and returns its IP.
func waitPodReady(ctx context.Context, cs kubernetes.Interface, ns, name string) (string, error) {
	var ip string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.Status.PodIP != "" {
				ip = p.Status.PodIP
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("bench: pod %s/%s not Ready: %w", ns, name, err)
	}
	return ip, nil
}

// clusterScenario is one path of a cluster run: from the client pod of ns to the echo at to.
type clusterScenario struct {
	name, ns, to, base string
}

// measure runs the RR client at 1,000 RPS and at max rate, and the connection-rate client, in
// the client pod (through the API server's exec, as `kubectl exec` does).
func (sc clusterScenario) measure(ctx context.Context, rc *rest.Config, cs kubernetes.Interface, d time.Duration) (Result, error) {
	r := Result{Scenario: sc.name, Base: sc.base}
	run := func(mode string, args ...string) (map[string]float64, error) {
		return execJSON(ctx, rc, cs, sc.ns, "client", append([]string{"ameshctl", "bench", mode, "-dest", sc.to, "-duration", d.String()}, args...))
	}
	rr, err := run("rr", "-qps", "1000")
	if err != nil {
		return r, err
	}
	mx, err := run("rr", "-qps", "-1")
	if err != nil {
		return r, err
	}
	cps, err := run("cps")
	if err != nil {
		return r, err
	}
	r.RR1000, r.RRMax, r.RRMaxQPS, r.CPS = pct(rr), pct(mx), mx["qps"], cps["cps"]
	return r, nil
}

// execJSON runs argv in the pod's first container and decodes its stdout as the clients' JSON.
func execJSON(ctx context.Context, rc *rest.Config, cs kubernetes.Interface, ns, pod string, argv []string) (map[string]float64, error) {
	req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Command: argv, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(rc, "GET", req.URL().String())
	if err != nil {
		return nil, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(rc, "POST", req.URL())
	if err != nil {
		return nil, err
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool { return true })
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if err := exec.StreamWithContext(cctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		return nil, fmt.Errorf("exec %s in %s/%s: %w: %s", strings.Join(argv, " "), ns, pod, err, stderr.Bytes())
	}
	var m map[string]float64
	if err := json.Unmarshal(stdout.Bytes(), &m); err != nil {
		return nil, fmt.Errorf("exec %s in %s/%s: output %q: %w", strings.Join(argv, " "), ns, pod, stdout.Bytes(), err)
	}
	return m, nil
}

// echoPort is lab.EchoPort as a number.
func echoPort() int32 {
	p, _ := strconv.Atoi(lab.EchoPort)
	return int32(p)
}

// serveEcho is `bench serve`: the suite's echo server on addr, until the process is stopped.
// Each connection echoes through a small buffer of its own rather than with splice(2), which
// would hold a pipe (two more descriptors) per connection: the memory curve's 10,000 open
// connections must fit in one process's descriptor limit.
func serveEcho(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", ":"+lab.EchoPort, "listen address")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			return 1
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 2048)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}
