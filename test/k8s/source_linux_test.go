package k8s

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/workload"
	"github.com/amesh-dev/amesh/workload/kube"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestSourceFollowsPods runs the Kubernetes source against a real API server, with the
// protobuf client of the agent and with JSON only: a running pod is in the first State; its
// new IP, then its deletion, reach the store by incremental builds (the informers' caches, the
// tracker and State.Apply together), with no full build after the first.
func TestSourceFollowsPods(t *testing.T) {
	cp := deploy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, err := cp.Clientset("")
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := cp.Dynamic("")
	if err != nil {
		t.Fatal(err)
	}
	for _, protobuf := range []bool{true, false} {
		ns := map[bool]string{true: "follow-pb", false: "follow-json"}[protobuf]
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{kube.LabelDataplaneMode: "ambient"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		setIP := func(p *corev1.Pod, ip string) *corev1.Pod {
			t.Helper()
			p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: "10.250.9.1"}
			p, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		p, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns, Labels: map[string]string{"app": "p"}},
			Spec: corev1.PodSpec{NodeName: "n1", ServiceAccountName: "sa", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p = setIP(p, "10.9.9.1")
		src := &kube.Source{Dynamic: dyn, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Logger: slog.New(slog.DiscardHandler)}
		if protobuf {
			src.Protobuf = cp.RESTConfig("")
		}
		runCtx, stop := context.WithCancel(ctx)
		st, err := src.Start(runCtx)
		if err != nil {
			t.Fatal(err)
		}
		ipOf := func(st *workload.State) string {
			if w := st.WorkloadByUID(string(p.UID)); w != nil && len(w.IPs) == 1 {
				return w.IPs[0].String()
			}
			return ""
		}
		if got := ipOf(st); got != "10.9.9.1" {
			t.Fatalf("protobuf %v: first state: pod's ip %q, want 10.9.9.1", protobuf, got)
		}
		store := workload.NewStore(st)
		done := make(chan struct{})
		go func() { defer close(done); src.Run(runCtx, store) }()
		setIP(p, "10.9.9.2")
		testenv.WaitFor(t, "the pod's new ip in the state", 10*time.Second, func() bool { return ipOf(store.Load()) == "10.9.9.2" })
		if w := store.Load().WorkloadByIP(netip.MustParseAddr("10.9.9.2")); w == nil || w.Mode != workload.ModeAmbient {
			t.Errorf("protobuf %v: by its new ip: %+v", protobuf, w)
		}
		if err := cs.CoreV1().Pods(ns).Delete(ctx, "p", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, "the pod gone from the state", 10*time.Second, func() bool { return store.Load().WorkloadByUID(string(p.UID)) == nil })
		stop()
		<-done
		if full, incr := src.Builds(); full != 1 || incr < 2 {
			t.Errorf("protobuf %v: %d full builds, %d incremental; want 1 (the first) and at least 2", protobuf, full, incr)
		}
	}
}
