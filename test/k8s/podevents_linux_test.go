package k8s

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/podevents"
)

// TestPodEvents: the agent's Events about a pod, posted with the agent's own token (so
// deploy/rbac.yaml must allow it), are what its owner sees: `kubectl describe pod` lists them,
// once per reason however often the agent reports within the interval.
func TestPodEvents(t *testing.T) {
	cp := deploy(t)
	ctx := testContext(t)
	cs, err := cp.Clientset("")
	if err != nil {
		t.Fatal(err)
	}
	token, err := cp.Token(agentUser.Name)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := cp.Dynamic(token)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "podevents"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	p, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.PodSpec{NodeName: "node1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	rec := podevents.New(dyn, podevents.Config{Component: "amesh-agent", Host: "node1", Interval: time.Hour})
	go rec.Run(ctx)
	pod := podevents.Pod{Namespace: ns, Name: p.Name, UID: string(p.UID)}
	const note = "amesh could not enroll the pod on node node1: bind 127.0.0.1:15001: address already in use"
	for range 20 { // a pod failing at every retry
		rec.Warning(pod, "EnrollmentFailed", note)
	}
	rec.Warning(pod, "SomethingElse", "another reason")
	testenv.WaitFor(t, "two events posted", 10*time.Second, func() bool {
		posted, _, failed := rec.Counts()
		return posted+failed >= 2
	})
	if posted, dropped, failed := rec.Counts(); posted != 2 || dropped != 0 || failed != 0 {
		t.Fatalf("posted %d, dropped %d, failed %d; want 2, 0, 0", posted, dropped, failed)
	}

	// As kubectl describe finds a pod's events: by the involved object's UID.
	evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.uid=" + string(p.UID)})
	if err != nil {
		t.Fatal(err)
	}
	byReason := map[string]corev1.Event{}
	for _, e := range evs.Items {
		byReason[e.Reason] = e
	}
	if len(evs.Items) != 2 || len(byReason) != 2 {
		t.Fatalf("%d events for the pod (%v), want one per reason", len(evs.Items), byReason)
	}
	e := byReason["EnrollmentFailed"]
	if e.Type != corev1.EventTypeWarning || e.Message != note || e.Source.Component != "amesh-agent" || e.Source.Host != "node1" ||
		e.InvolvedObject.Kind != "Pod" || e.InvolvedObject.Name != "web" || e.Count != 1 {
		t.Errorf("event %+v", e)
	}
	out, err := cp.Kubectl(ctx, "", "describe", "pod", "-n", ns, "web")
	if err != nil {
		t.Fatalf("kubectl describe pod: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "EnrollmentFailed") || !strings.Contains(string(out), "address already in use") {
		t.Errorf("kubectl describe pod does not show the event:\n%s", out)
	}
}
