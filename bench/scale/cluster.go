package scale

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/amesh-dev/amesh/test/lab"
)

// policies is the AuthorizationPolicy resource (deploy/crd.yaml).
var policies = schema.GroupVersionResource{Group: "security.amesh.io", Version: "v1", Resource: "authorizationpolicies"}

// The probe's objects: pods a (client) and b (server, app=probeTarget) of the lab's node1 in
// namespace probeNS, and service probeService, whose slice the endpoint probe fills and empties.
const (
	probeNS      = "probe"
	probeTarget  = "server"
	probeService = "probe"
	probeDeny    = "probe-deny"
)

// cluster is the fake cluster the harness writes: what it made, so that churn can replace pods
// and keep each service's EndpointSlice true.
type cluster struct {
	cs   kubernetes.Interface
	dyn  dynamic.Interface
	lab  *lab.Lab
	size Size

	namespaces, nodes int

	mu       sync.Mutex
	nextIP   int
	nextPod  int
	replaced int                   // replacements started, of which every reuseEvery-th reuses the old pod's IP
	live     []livePod             // the fake pods, in no order
	members  []map[string]endpoint // by service index: pod name → endpoint
	slices   []sync.Mutex          // by service index: one writer of its slice at a time
}

type livePod struct {
	name string
	svc  int
	node int
	ip   netip.Addr
}

func newCluster(cs kubernetes.Interface, dyn dynamic.Interface, l *lab.Lab, size Size) *cluster {
	c := &cluster{cs: cs, dyn: dyn, lab: l, size: size}
	c.namespaces = max(1, (size.Pods+99)/100)
	c.nodes = max(1, (size.Pods+99)/100)
	c.members = make([]map[string]endpoint, size.Services)
	for j := range c.members {
		c.members[j] = map[string]endpoint{}
	}
	c.slices = make([]sync.Mutex, size.Services)
	return c
}

// svcNS is the namespace of service j (and of its pods).
func (c *cluster) svcNS(j int) string { return nsName(j % c.namespaces) }

// probeObjects writes the probe's namespace, its two pods (with the lab's IPs, on node1) and its
// service with an empty slice.
func (c *cluster) probeObjects(ctx context.Context) error {
	if err := c.namespace(ctx, probeNS); err != nil {
		return err
	}
	for _, lp := range []*lab.Pod{c.lab.Pod("a"), c.lab.Pod("b")} {
		pod := podObject(lp.Name, probeNS, lp.Spec.Labels["app"], lp.Node.Name)
		pod.Spec.ServiceAccountName = lp.ServiceAccount
		if err := c.createPod(ctx, pod, runningStatus(lp.IP, lp.Node.IP)); err != nil {
			return err
		}
	}
	svc := serviceObject(probeNS, probeService)
	svc.Spec.Selector = nil                               // its endpoints are what the probe writes into its slice
	svc.Spec.Ports[0].TargetPort = intstr.FromInt32(9000) // lab.EchoPort
	if _, err := c.cs.CoreV1().Services(probeNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("probe service: %w", err)
	}
	es := sliceObject(probeNS, probeService, nil)
	es.Ports[0].Port = ptr(int32(9000))
	if _, err := c.cs.DiscoveryV1().EndpointSlices(probeNS).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("probe slice: %w", err)
	}
	return nil
}

// setProbeEndpoints makes the probe service's endpoints b (on) or none.
func (c *cluster) setProbeEndpoints(ctx context.Context, on bool) error {
	var eps []endpoint
	if on {
		b := c.lab.Pod("b")
		eps = []endpoint{{pod: b.Name, node: b.Node.Name, ip: b.IP}}
	}
	es := sliceObject(probeNS, probeService, eps)
	es.Ports[0].Port = ptr(int32(9000))
	return c.updateSlice(ctx, es)
}

func (c *cluster) updateSlice(ctx context.Context, es *discoveryv1.EndpointSlice) error {
	cur, err := c.cs.DiscoveryV1().EndpointSlices(es.Namespace).Get(ctx, es.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("slice %s/%s: %w", es.Namespace, es.Name, err)
	}
	es.ResourceVersion = cur.ResourceVersion
	if _, err := c.cs.DiscoveryV1().EndpointSlices(es.Namespace).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("slice %s/%s: %w", es.Namespace, es.Name, err)
	}
	return nil
}

func (c *cluster) namespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{meshLabel: "ambient"}}}
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	return nil
}

// createPod creates pod and then reports its status, as the scheduler and the kubelet would.
func (c *cluster) createPod(ctx context.Context, pod *corev1.Pod, st corev1.PodStatus) error {
	made, err := c.cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	made.Status = st
	if _, err := c.cs.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, made, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("pod %s/%s status: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// newPod makes the next fake pod of service j (its name, IP and node) and records it.
func (c *cluster) newPod(j int) (*corev1.Pod, corev1.PodStatus, livePod) {
	c.mu.Lock()
	i, ipIdx := c.nextPod, c.nextIP
	c.nextPod++
	c.nextIP++
	c.mu.Unlock()
	return c.podOn(j, i, i%c.nodes, podIP(ipIdx))
}

// reusePod makes the next fake pod of service j on old's node with old's IP, as a node's IPAM
// hands a released address to the next pod while the pod that had it is still terminating.
func (c *cluster) reusePod(j int, old livePod) (*corev1.Pod, corev1.PodStatus, livePod) {
	c.mu.Lock()
	i := c.nextPod
	c.nextPod++
	c.mu.Unlock()
	return c.podOn(j, i, old.node, old.ip)
}

func (c *cluster) podOn(j, i, node int, ip netip.Addr) (*corev1.Pod, corev1.PodStatus, livePod) {
	pod := podObject(fmt.Sprintf("%s-%06d", appName(j), i), c.svcNS(j), appName(j), fakeNodeName(node))
	return pod, runningStatus(ip, nodeIP(node)), livePod{name: pod.Name, svc: j, node: node, ip: ip}
}

// populate writes the namespaces, the services, the pods (status included), the slices and the
// policies, with 16 writers.
func (c *cluster) populate(ctx context.Context) error {
	for i := range c.namespaces {
		if err := c.namespace(ctx, nsName(i)); err != nil {
			return err
		}
	}
	if err := parallel(ctx, c.size.Services, func(ctx context.Context, j int) error {
		_, err := c.cs.CoreV1().Services(c.svcNS(j)).Create(ctx, serviceObject(c.svcNS(j), appName(j)), metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("services: %w", err)
	}
	if err := parallel(ctx, c.size.Pods, func(ctx context.Context, i int) error {
		j := i % max(1, c.size.Services)
		pod, st, lp := c.newPod(j)
		if err := c.createPod(ctx, pod, st); err != nil {
			return err
		}
		c.mu.Lock()
		c.live = append(c.live, lp)
		if c.size.Services > 0 {
			c.members[j][pod.Name] = endpoint{pod: pod.Name, node: pod.Spec.NodeName, ip: mustIP(st.PodIP)}
		}
		c.mu.Unlock()
		return nil
	}); err != nil {
		return fmt.Errorf("pods: %w", err)
	}
	if err := parallel(ctx, c.size.Services, func(ctx context.Context, j int) error {
		_, err := c.cs.DiscoveryV1().EndpointSlices(c.svcNS(j)).Create(ctx, sliceObject(c.svcNS(j), appName(j), c.endpoints(j)), metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("slices: %w", err)
	}
	if err := parallel(ctx, c.size.Policies, func(ctx context.Context, k int) error {
		j := k % max(1, c.size.Services)
		u := policyObject(c.svcNS(j), fmt.Sprintf("allow-%04d", k), appName(j), appName((j+c.size.Services-1)%max(1, c.size.Services)))
		_, err := c.dyn.Resource(policies).Namespace(c.svcNS(j)).Create(ctx, u, metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("policies: %w", err)
	}
	return nil
}

// endpoints returns service j's members (under mu).
func (c *cluster) endpoints(j int) []endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]endpoint, 0, len(c.members[j]))
	for _, e := range c.members[j] {
		out = append(out, e)
	}
	return out
}

// reuseEvery: one replacement in reuseEvery gives the new pod the old one's node and IP while
// the old pod is still there (a node's IPAM reuses addresses; the newer pod keeps the IP).
const reuseEvery = 4

// replace replaces one random fake pod, as a rolling update does: the new pod created and
// running (one in reuseEvery with the old pod's IP), its service's slice updated, the old pod
// deleted (at once, as a force delete: there is no kubelet to confirm it), the slice updated
// again. Four watch events for the agent: a pod
// added, its status, a pod deleted, a slice updated (the slice's two writes are one update here,
// as the controller's batching makes them).
func (c *cluster) replace(ctx context.Context) error {
	c.mu.Lock()
	if len(c.live) == 0 {
		c.mu.Unlock()
		return errors.New("no pods to replace")
	}
	k := rand.IntN(len(c.live))
	old := c.live[k]
	c.live[k] = c.live[len(c.live)-1]
	c.live = c.live[:len(c.live)-1]
	c.replaced++
	reuse := c.replaced%reuseEvery == 0
	c.mu.Unlock()
	j := old.svc
	var pod *corev1.Pod
	var st corev1.PodStatus
	var lp livePod
	if reuse {
		pod, st, lp = c.reusePod(j, old)
	} else {
		pod, st, lp = c.newPod(j)
	}
	if err := c.createPod(ctx, pod, st); err != nil {
		return err
	}
	if err := c.cs.CoreV1().Pods(c.svcNS(j)).Delete(ctx, old.name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		return fmt.Errorf("delete pod %s: %w", old.name, err)
	}
	c.mu.Lock()
	c.live = append(c.live, lp)
	if c.size.Services > 0 {
		delete(c.members[j], old.name)
		c.members[j][pod.Name] = endpoint{pod: pod.Name, node: pod.Spec.NodeName, ip: mustIP(st.PodIP)}
	}
	c.mu.Unlock()
	if c.size.Services == 0 {
		return nil
	}
	c.slices[j].Lock()
	defer c.slices[j].Unlock()
	return c.updateSlice(ctx, sliceObject(c.svcNS(j), appName(j), c.endpoints(j)))
}

// eventsPerReplacement are the watch events one replacement makes: the pod added, its status,
// its deletion timestamp (a delete with grace period 0 still marks the pod before removing it),
// the pod deleted, and the EndpointSlice updated. TestScaleRuns checks it against what a stock
// informer beside the agent counts.
const eventsPerReplacement = 5

// latencies are the probe's samples, in milliseconds.
type latencies struct{ policy, endpoint []float64 }

// churn replaces rate pods per second for d (8 writers; a replacement that would start while
// all are busy is skipped and counted as not done), while p, if not nil, measures enforcement
// back to back. It adds to r's Replaced and Events.
func (c *cluster) churn(ctx context.Context, rate int, d time.Duration, p *prober, r *Result) (latencies, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var lat latencies
	probeDone := make(chan error, 1)
	if p != nil {
		go func() { probeDone <- p.measure(ctx, &lat, &r.Timeouts) }()
	} else {
		probeDone <- nil
	}

	work := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	done := 0
	for range 8 {
		wg.Go(func() {
			for range work {
				err := c.replace(context.WithoutCancel(ctx))
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					done++
				}
				mu.Unlock()
			}
		})
	}
	if rate > 0 {
		tick := time.NewTicker(time.Second / time.Duration(rate))
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case <-tick.C:
				select {
				case work <- struct{}{}:
				default: // all writers busy: the API server is the limit
				}
			}
		}
		tick.Stop()
	}
	close(work)
	wg.Wait()
	<-ctx.Done()
	perr := <-probeDone
	r.Replaced += done
	r.Events += eventsPerReplacement * done
	return lat, errors.Join(firstErr, perr)
}

func mustIP(s string) netip.Addr { return netip.MustParseAddr(s) }

// parallel runs fn(0..n-1) with 16 goroutines, stopping at the first error.
func parallel(ctx context.Context, n int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		})
	}
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}
