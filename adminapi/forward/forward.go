// Package forward reaches the admin API of a node's agent from anywhere kubectl works, through a
// port-forward to its pod: `ameshctl --node`. It is a package of its own so that the agent, which
// serves adminapi's types, links no typed Kubernetes client (it adds ~20 MB to a binary).
package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/amesh-dev/amesh/adminapi"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	streamhttp "k8s.io/streaming/pkg/httpstream"
)

// AgentSelector selects the agent pods of deploy/'s DaemonSet.
const AgentSelector = "app.kubernetes.io/name=amesh-agent"

// Forward is a port-forward, through the API server and the node's kubelet, from a loopback
// port of this machine to the admin API of the agent of one node: what `ameshctl --node` reads
// when the agent's node is not this machine. The agent's pod is on the node's network, so the
// forward reaches the node's own 127.0.0.1, where the admin API listens.
type Forward struct {
	// Addr is the local end, 127.0.0.1:port: a Client's Addr.
	Addr string
	// Pod is the agent pod forwarded to, namespace/name.
	Pod  string
	stop context.CancelFunc
	done chan struct{}
}

// Close ends the forward.
func (f *Forward) Close() {
	f.stop()
	<-f.done
}

// ToAgent finds the agent pod of node in namespace (deploy/'s amesh-system by default) and
// forwards a free loopback port to its admin port (adminapi.DefaultAddr's), as `kubectl port-forward`
// does (WebSocket, falling back to SPDY). kubeconfig empty is the default loading rules
// ($KUBECONFIG, ~/.kube/config).
func ToAgent(ctx context.Context, kubeconfig, namespace, node string) (*Forward, error) {
	if namespace == "" {
		namespace = "amesh-system"
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("forward: kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	pods, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: AgentSelector, FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, fmt.Errorf("forward: the agent pod of node %s: %w", node, err)
	}
	var pod *corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			pod = p
			break
		}
	}
	if pod == nil {
		return nil, fmt.Errorf("forward: no running agent pod (%s) on node %s in namespace %s", AgentSelector, node, namespace)
	}
	_, port, _ := net.SplitHostPort(adminapi.DefaultAddr)
	url := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	transport, upgrader, err := spdy.RoundTripperFor(rc)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	var dialer streamhttp.Dialer = spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: transport}, http.MethodPost, url)
	if ws, err := portforward.NewSPDYOverWebsocketDialerForStreaming(url, rc); err == nil {
		dialer = portforward.NewFallbackDialerForStreaming(ws, dialer, func(err error) bool { return true })
	}
	fctx, stop := context.WithCancel(context.Background())
	ready := make(chan struct{})
	pf, err := portforward.NewOnAddressesForStreamingWithContext(fctx, dialer, []string{"127.0.0.1"}, []string{"0:" + port}, ready, io.Discard, io.Discard)
	if err != nil {
		stop()
		return nil, fmt.Errorf("forward: port-forward to %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	f := &Forward{Pod: pod.Namespace + "/" + pod.Name, stop: stop, done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		defer close(f.done)
		errc <- pf.ForwardPorts()
	}()
	select {
	case <-ready:
	case err := <-errc:
		stop()
		return nil, fmt.Errorf("forward: port-forward to %s: %w", f.Pod, errors.Join(err, errors.New("ended before it was ready")))
	case <-ctx.Done():
		stop()
		<-f.done
		return nil, ctx.Err()
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) != 1 {
		f.Close()
		return nil, fmt.Errorf("forward: port-forward to %s: local port: %v", f.Pod, err)
	}
	f.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local)))
	return f, nil
}
