package kube

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/amesh-dev/amesh/workload"
)

// mapView is a view over maps, as the informers' caches would hold the objects.
type mapView struct {
	ns       map[string]*corev1.Namespace
	pods     map[string]*corev1.Pod
	services map[string]*corev1.Service
	slices   map[string]*discoveryv1.EndpointSlice // by service key: one each
	policies map[string]*unstructured.Unstructured
	cni      map[string][]netip.Addr // pod IPs from the CNI plugin, by UID
}

func (v *mapView) pod(k string) (*podInfo, bool) {
	if p, ok := v.pods[k]; ok {
		return infoOf(p), true
	}
	return nil, false
}
func (v *mapView) namespaceLabels(ns string) map[string]string {
	if n := v.ns[ns]; n != nil {
		return n.Labels
	}
	return nil
}
func (v *mapView) service(k string) (*corev1.Service, bool) { s, ok := v.services[k]; return s, ok }
func (v *mapView) slicesOf(k string) []*discoveryv1.EndpointSlice {
	if es := v.slices[k]; es != nil {
		return []*discoveryv1.EndpointSlice{es}
	}
	return nil
}
func (v *mapView) policy(k string) (*unstructured.Unstructured, bool) {
	p, ok := v.policies[k]
	return p, ok
}
func (v *mapView) objects() Objects {
	return Objects{
		Namespaces: slices.Collect(maps.Values(v.ns)), Pods: slices.Collect(maps.Values(v.pods)),
		Services: slices.Collect(maps.Values(v.services)), EndpointSlices: slices.Collect(maps.Values(v.slices)),
		Policies: slices.Collect(maps.Values(v.policies)), PodIPs: v.cni,
	}
}

// readState describes what a reader of st sees, to compare two states.
func readState(st *workload.State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "nodes %v\n", st.Nodes())
	for _, w := range st.Workloads() {
		fmt.Fprintf(&b, "w %+v in", *w)
		for _, svc := range st.ServicesOf(w) {
			b.WriteString(" " + svc.Key())
		}
		for _, ip := range w.IPs {
			if st.WorkloadByIP(ip) != w {
				fmt.Fprintf(&b, " (ip %s not indexed)", ip)
			}
		}
		b.WriteString("\n")
	}
	for _, svc := range st.Services() {
		fmt.Fprintf(&b, "s %+v →", *svc)
		for _, w := range st.Endpoints(svc) {
			b.WriteString(" " + w.UID)
		}
		b.WriteString("\n")
	}
	for _, p := range st.PolicySet() {
		fmt.Fprintf(&b, "p %s %s %d\n", p.Key(), p.Action, len(p.Rules))
	}
	return b.String()
}

type trackerModel struct {
	r      *rand.Rand
	v      *mapView
	nextIP int
	seq    int
}

// vip is a new cluster IP (never one in use: the API server's allocator).
func (m *trackerModel) vip() string {
	m.seq++
	return netip.AddrFrom4([4]byte{10, 96, byte(m.seq >> 8), byte(m.seq)}).String()
}

func (m *trackerModel) ip() string {
	m.nextIP++
	return netip.AddrFrom4([4]byte{10, 30, byte(m.nextIP >> 8), byte(m.nextIP)}).String()
}

// change makes one random change of the kind a cluster sees and returns the keys it touched.
func (m *trackerModel) change(ch changes) {
	apps := []string{"web", "api", "db"}
	nss := []string{"a", "b"}
	switch m.r.IntN(12) {
	case 10, 11: // a pod given the IP of a pod still there (one terminating, as a node reuses addresses)
		k, other := m.anyPod()
		if other == nil || other.Status.PodIP == "" {
			return
		}
		if m.r.IntN(2) == 0 { // a new pod (the newer one keeps the IP)
			m.seq++
			p := kpod(other.Namespace, fmt.Sprintf("reuse-%d", m.seq), other.Spec.NodeName, "", podLabels(map[string]string{"app": other.Labels["app"]}))
			p.CreationTimestamp = metav1.NewTime(time.Unix(int64(1000+m.seq), 0))
			if m.r.IntN(3) == 0 {
				p.CreationTimestamp = other.CreationTimestamp // a tie: settled by namespace/name
			}
			p.Status.HostIP = other.Status.HostIP
			p.Status.PodIP, p.Status.PodIPs = other.Status.PodIP, []corev1.PodIP{{IP: other.Status.PodIP}}
			m.v.pods[p.Namespace+"/"+p.Name] = p
			ch.pods[p.Namespace+"/"+p.Name] = true
			return
		}
		// An existing pod's status names another pod's IP (the older one loses it).
		k2, p := m.anyPod()
		if p == nil || k2 == k {
			return
		}
		p = p.DeepCopy()
		p.Status.PodIP, p.Status.PodIPs = other.Status.PodIP, []corev1.PodIP{{IP: other.Status.PodIP}}
		m.v.pods[k2] = p
		ch.pods[k2] = true
	case 0, 1, 2: // a pod created (running, or still without an IP)
		m.seq++
		ns, app := nss[m.r.IntN(2)], apps[m.r.IntN(3)]
		node := fmt.Sprintf("node%d", 1+m.r.IntN(3))
		p := kpod(ns, fmt.Sprintf("%s-%d", app, m.seq), node, "", podLabels(map[string]string{"app": app}))
		p.CreationTimestamp = metav1.NewTime(time.Unix(int64(1000+m.seq), 0))
		p.Status.HostIP = map[string]string{"node1": "10.250.0.1", "node2": "10.250.0.2", "node3": "10.250.0.3"}[node]
		switch m.r.IntN(5) {
		case 0: // no IP yet
		case 1: // its IP known from the CNI plugin only (the kubelet has not written status)
			m.v.cni[string(p.UID)] = []netip.Addr{netip.MustParseAddr(m.ip())}
		default:
			ip := m.ip()
			p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		}
		m.v.pods[ns+"/"+p.Name] = p
		ch.pods[ns+"/"+p.Name] = true
	case 3: // a pod's status or labels
		k, p := m.anyPod()
		if p == nil {
			return
		}
		p = p.DeepCopy()
		switch m.r.IntN(3) {
		case 0:
			ip := m.ip()
			p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		case 1:
			p.Labels = map[string]string{"app": apps[m.r.IntN(3)], LabelDataplaneMode: []string{"none", "ambient", ""}[m.r.IntN(3)]}
		case 2:
			p.Status.Phase = corev1.PodSucceeded
		}
		m.v.pods[k] = p
		ch.pods[k] = true
	case 4, 5: // a pod deleted
		k, p := m.anyPod()
		if p == nil {
			return
		}
		delete(m.v.pods, k)
		ch.pods[k] = true
	case 6, 7: // a service's slice rewritten from the pods its selector selects
		ns, app := nss[m.r.IntN(2)], apps[m.r.IntN(3)]
		key := ns + "/" + app
		if _, ok := m.v.services[key]; !ok {
			m.v.services[key] = &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app}, Spec: corev1.ServiceSpec{
				ClusterIP: m.vip(), Selector: map[string]string{"app": app},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
			}}
			if app == "db" {
				m.v.services[key].Labels = map[string]string{LabelWaypointFor: "service"}
			}
		}
		es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: app}},
			AddressType: discoveryv1.AddressTypeIPv4}
		for _, p := range m.v.pods {
			if p.Namespace == ns && p.Labels["app"] == app && p.Status.PodIP != "" && m.r.IntN(5) > 0 {
				es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.Status.PodIP}})
			}
		}
		m.v.slices[key] = es
		ch.services[key] = true
	case 8: // a service deleted (its slice with it)
		for _, key := range slices.Sorted(maps.Keys(m.v.services)) {
			if m.r.IntN(3) == 0 {
				delete(m.v.services, key)
				delete(m.v.slices, key)
				ch.services[key] = true
				return
			}
		}
	case 9: // a policy added, changed (valid or not) or deleted
		key := nss[m.r.IntN(2)] + "/" + []string{"p1", "p2"}[m.r.IntN(2)]
		ch.policies[key] = true
		if _, ok := m.v.policies[key]; ok && m.r.IntN(3) == 0 {
			delete(m.v.policies, key)
			return
		}
		ns, name := splitKey(key)
		spec := map[string]any{"action": "DENY", "rules": []any{map[string]any{}}}
		if m.r.IntN(3) == 0 {
			spec["bogus"] = true // invalid: replaced by a deny-all, reported
		}
		m.v.policies[key] = &unstructured.Unstructured{Object: map[string]any{"apiVersion": "security.amesh.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"namespace": ns, "name": name}, "spec": spec}}
	}
}

func (m *trackerModel) anyPod() (string, *corev1.Pod) {
	keys := slices.Sorted(maps.Keys(m.v.pods))
	if len(keys) == 0 {
		return "", nil
	}
	k := keys[m.r.IntN(len(keys))]
	return k, m.v.pods[k]
}

// TestTrackerMatchesFullBuild drives the tracker through 20 × 150 random batches of pod,
// service, slice and policy changes: after each batch its State must read exactly as the one a
// full build makes of all the objects, and nearly every batch must have been incremental (a
// full build only where a namespace changed: none here).
func TestTrackerMatchesFullBuild(t *testing.T) {
	incremental, fallbacks := 0, 0
	for seed := range uint64(20) {
		v := &mapView{ns: map[string]*corev1.Namespace{"a": kns("a", ambientNS), "b": kns("b", nil)},
			pods: map[string]*corev1.Pod{}, services: map[string]*corev1.Service{}, slices: map[string]*discoveryv1.EndpointSlice{}, policies: map[string]*unstructured.Unstructured{}, cni: map[string][]netip.Addr{}}
		m := &trackerModel{r: rand.New(rand.NewPCG(seed, 2)), v: v}
		tr := &tracker{td: kubeTD}
		if _, _, err := tr.full(v); err != nil {
			t.Fatal(err)
		}
		for step := range 150 {
			ch := newChanges()
			for range 1 + m.r.IntN(4) {
				m.change(ch)
			}
			got, _, err := tr.apply(v, ch, v.cni)
			if err != nil {
				fallbacks++
				t.Logf("seed %d step %d: full build: %v", seed, step, err)
				if got, _, err = tr.full(v); err != nil {
					t.Fatal(err)
				}
			} else {
				incremental++
			}
			want, _, err := (&tracker{td: kubeTD}).full(v)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := readState(got), readState(want); g != w {
				t.Fatalf("seed %d step %d: incremental state reads\n%s\nthe full build\n%s", seed, step, g, w)
			}
		}
	}
	t.Logf("%d incremental builds, %d full", incremental, fallbacks)
	if fallbacks > incremental/20 {
		t.Errorf("%d of %d batches fell back to a full build", fallbacks, incremental+fallbacks)
	}
}

// TestPodInfoKeepsWhatSpecReads: what the informer keeps of a pod as a Deployment makes it
// (podInfo) converts to the workload the pod's fields say: owner, probe ports (named and
// numbered, exec left out), IPs, labels.
func TestPodInfoKeepsWhatSpecReads(t *testing.T) {
	ctrl := true
	pod := kpod("a", "web-5d8f7c9b6-x2x9z", "node1", "10.30.0.9", podLabels(map[string]string{"app": "web", "pod-template-hash": "5d8f7c9b6"}))
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d8f7c9b6", UID: "rs", Controller: &ctrl}, {Kind: "Other", Name: "x"}}
	pod.Annotations = map[string]string{"big": strings.Repeat("x", 4096)}
	pod.Spec.Containers = []corev1.Container{
		{Name: "app", Image: "img", Env: []corev1.EnvVar{{Name: "A", Value: "b"}},
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "admin", ContainerPort: 9901}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/r", Port: intstr.FromString("http")}}, PeriodSeconds: 3},
			LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(9901)}}},
			StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}},
		{Name: "side", Ports: []corev1.ContainerPort{{Name: "grpc", ContainerPort: 7070}}, ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 7070}}}},
		{Name: "noprobe", Ports: []corev1.ContainerPort{{Name: "x", ContainerPort: 1}}},
	}
	w, ok := podWorkload(infoOf(pod), ambientNS, nil)
	if !ok {
		t.Fatal("not represented")
	}
	want := workload.Workload{UID: "uid-" + pod.Name, Name: pod.Name, WorkloadName: "web", Namespace: "a", ServiceAccount: pod.Name + "-sa", Node: "node1",
		Labels: pod.Labels, Mode: workload.ModeAmbient, IPs: []netip.Addr{netip.MustParseAddr("10.30.0.9")}, HostIP: netip.MustParseAddr("10.250.0.1"), ProbePorts: []uint16{7070, 8080, 9901}}
	if fmt.Sprintf("%+v", w) != fmt.Sprintf("%+v", want) {
		t.Errorf("podInfo converts to\n%+v\nwant\n%+v", w, want)
	}
}
