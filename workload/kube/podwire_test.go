package kube

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/randfill"
)

// codecs are the API server's side of the wire: what encodes the pods podWire reads, and the
// generated decoder podWire must agree with.
var codecs = serializer.NewCodecFactory(protobufScheme)

func protobufInfo(t testing.TB) runtime.SerializerInfo {
	t.Helper()
	info, ok := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeProtobuf)
	if !ok {
		t.Fatal("no protobuf serializer")
	}
	return info
}

func encode(t testing.TB, obj runtime.Object) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := codecs.EncoderForVersion(protobufInfo(t).Serializer, corev1.SchemeGroupVersion).Encode(obj, &b); err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b.Bytes()
}

// generated decodes data as the generated code does and makes its podInfo: what podWire must
// give.
func generated(t testing.TB, data []byte) *podInfo {
	t.Helper()
	obj, _, err := protobufInfo(t).Serializer.Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("generated decoder: %v", err)
	}
	return wantInfo(obj.(*corev1.Pod))
}

// wantInfo is infoOf(pod) with the one annotation podWire keeps: the reflector reads it on the
// object as decoded, before the informer's transform (the bookmark that ends a watch list).
func wantInfo(pod *corev1.Pod) *podInfo {
	p := infoOf(pod)
	if v, ok := pod.Annotations[metav1.InitialEventsAnnotationKey]; ok {
		p.Annotations = map[string]string{metav1.InitialEventsAnnotationKey: v}
	}
	return p
}

func wire(t testing.TB) podWire { return podWire{protobufInfo(t).Serializer} }

// TestPodWireMatchesGenerated: for random pods (every field of the Pod type filled at random,
// probes, named ports and owners among them), podWire's podInfo is the one the generated decoder
// and infoOf make, field by field.
func TestPodWireMatchesGenerated(t *testing.T) {
	f := randfill.NewWithSeed(1).NilChance(0.3).NumElements(0, 3)
	r := rand.New(rand.NewPCG(1, 2))
	w := wire(t)
	for i := range 1500 {
		var pod corev1.Pod
		f.Fill(&pod)
		shape(r, &pod)
		data := encode(t, &pod)
		want := generated(t, data)
		obj, gvk, err := w.Decode(data, nil, nil)
		if err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
		if gvk.Kind != "Pod" {
			t.Fatalf("pod %d: kind %v", i, gvk)
		}
		if got := obj.(*podInfo); !reflect.DeepEqual(got, want) {
			t.Fatalf("pod %d:\n got %+v\nwant %+v", i, got, want)
		}
	}
}

// shape makes a random pod look like one the agent cares about more often than pure chance
// would: probes on named and numbered ports of its containers, a controller owner whose name
// carries the pod-template-hash, the initial-events annotation.
func shape(r *rand.Rand, pod *corev1.Pod) {
	names := []string{"http", "grpc", "admin", ""}
	for ci := range pod.Spec.Containers {
		c := &pod.Spec.Containers[ci]
		for pi := range c.Ports {
			c.Ports[pi].Name = names[r.IntN(len(names))]
			c.Ports[pi].ContainerPort = []int32{0, 80, 8080, 70000, -1}[r.IntN(5)]
		}
		for _, pr := range []**corev1.Probe{&c.LivenessProbe, &c.ReadinessProbe, &c.StartupProbe} {
			if *pr == nil || r.IntN(4) == 0 {
				continue
			}
			port := intstr.FromInt32([]int32{0, 8080, 65536, 9}[r.IntN(4)])
			if r.IntN(2) == 0 {
				port = intstr.FromString(names[r.IntN(len(names))])
			}
			switch r.IntN(4) {
			case 0:
				(*pr).ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: port}}
			case 1:
				(*pr).ProbeHandler = corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: port}}
			case 2:
				(*pr).ProbeHandler = corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: port.IntVal}}
			}
		}
	}
	if r.IntN(2) == 0 {
		tr := true
		hash := "5d8f7c9b4"
		pod.Labels = map[string]string{"app": "web", "pod-template-hash": hash}
		pod.OwnerReferences = append(pod.OwnerReferences, metav1.OwnerReference{Kind: []string{"ReplicaSet", "Job"}[r.IntN(2)], Name: "web-" + hash, Controller: &tr})
	}
	if r.IntN(8) == 0 {
		pod.Annotations = map[string]string{metav1.InitialEventsAnnotationKey: "true", "other": "x"}
	}
}

// TestPodWire pins what the agent relies on, case by case.
func TestPodWire(t *testing.T) {
	tr := true
	full := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-5d8f7c9b4-abcde", Namespace: "shop", UID: "u1", ResourceVersion: "42",
			Labels:          map[string]string{"app": "web", "pod-template-hash": "5d8f7c9b4"},
			Annotations:     map[string]string{"kubectl.kubernetes.io/restartedAt": "now"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-5d8f7c9b4", Controller: &tr}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", FieldsV1: metav1.NewFieldsV1(`{"f:metadata":{}}`)}},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web", NodeName: "node1",
			Containers: []corev1.Container{{
				Name:           "app",
				Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "admin", ContainerPort: 9901}},
				Env:            []corev1.EnvVar{{Name: "A", Value: strings.Repeat("x", 500)}},
				LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromString("http")}}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(9901)}}},
				StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
			}, {
				Name:          "sidecar",
				LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 7070}}},
			}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, HostIP: "192.168.0.1", PodIP: "10.0.0.5",
			PodIPs:     []corev1.PodIP{{IP: "10.0.0.5"}, {IP: "fd00::5"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	bookmark := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "99", Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "true"}}}
	w := wire(t)
	tests := []struct {
		name  string
		pod   *corev1.Pod
		check func(t *testing.T, p *podInfo)
	}{
		{"deployment pod", full, func(t *testing.T, p *podInfo) {
			if p.Name != "web-5d8f7c9b4-abcde" || p.Namespace != "shop" || p.UID != "u1" || p.ResourceVersion != "42" {
				t.Errorf("meta: %+v", p.ObjectMeta)
			}
			if p.owner != "web" || p.serviceAccount != "web" || p.node != "node1" || p.phase != corev1.PodRunning {
				t.Errorf("owner %q sa %q node %q phase %q", p.owner, p.serviceAccount, p.node, p.phase)
			}
			if !reflect.DeepEqual(p.probePorts, []uint16{7070, 8080, 9901}) {
				t.Errorf("probe ports %v, want 7070 (grpc), 8080 (named http), 9901; not the exec probe", p.probePorts)
			}
			if !reflect.DeepEqual(p.podIPs, []string{"10.0.0.5", "fd00::5"}) || p.podIP != "10.0.0.5" || p.hostIP != "192.168.0.1" {
				t.Errorf("ips %v %q %q", p.podIPs, p.podIP, p.hostIP)
			}
			if p.Annotations != nil || p.ManagedFields != nil {
				t.Errorf("kept what the agent does not read: %v %v", p.Annotations, p.ManagedFields)
			}
		}},
		{"watch list bookmark", bookmark, func(t *testing.T, p *podInfo) {
			if p.Annotations[metav1.InitialEventsAnnotationKey] != "true" || p.ResourceVersion != "99" {
				t.Errorf("the reflector needs the bookmark's annotation and version: %+v", p.ObjectMeta)
			}
		}},
		{"host network pod", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "h"}, Spec: corev1.PodSpec{HostNetwork: true}}, func(t *testing.T, p *podInfo) {
			if !p.hostNetwork || p.owner != "h" || p.Labels != nil {
				t.Errorf("%+v", p)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := encode(t, tt.pod)
			obj, _, err := w.Decode(data, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			p := obj.(*podInfo)
			if want := generated(t, data); !reflect.DeepEqual(p, want) {
				t.Errorf("podWire and the generated decoder differ:\n got %+v\nwant %+v", p, want)
			}
			tt.check(t, p)
		})
	}

	t.Run("two pods of a Deployment share their labels and strings", func(t *testing.T) {
		a, _, _ := w.Decode(encode(t, full), nil, nil)
		other := full.DeepCopy()
		other.Name, other.UID = "web-5d8f7c9b4-fghij", "u2"
		b, _, _ := w.Decode(encode(t, other), nil, nil)
		pa, pb := a.(*podInfo), b.(*podInfo)
		if reflect.ValueOf(pa.Labels).UnsafePointer() != reflect.ValueOf(pb.Labels).UnsafePointer() {
			t.Error("each pod has its own labels map")
		}
		for _, s := range [][2]string{{pa.Namespace, pb.Namespace}, {pa.node, pb.node}, {pa.serviceAccount, pb.serviceAccount}, {pa.owner, pb.owner}} {
			if unsafe.StringData(s[0]) != unsafe.StringData(s[1]) {
				t.Errorf("%q is not interned", s[0])
			}
		}
	})

	t.Run("list", func(t *testing.T) {
		list := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "7", Continue: "next"}, Items: []corev1.Pod{*full, *bookmark}}
		obj, gvk, err := w.Decode(encode(t, list), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		l := obj.(*podInfoList)
		if gvk.Kind != "PodList" || l.ResourceVersion != "7" || l.Continue != "next" || len(l.Items) != 2 || l.Items[0].owner != "web" {
			t.Errorf("%v %+v", gvk, l)
		}
	})

	t.Run("anything else goes to the generated decoder", func(t *testing.T) {
		st := &metav1.Status{Status: metav1.StatusFailure, Reason: metav1.StatusReasonExpired, Code: 410}
		obj, _, err := w.Decode(encode(t, st), nil, nil)
		if s, ok := obj.(*metav1.Status); err != nil || !ok || s.Code != 410 {
			t.Errorf("a watch's Status: %T %v", obj, err)
		}
		js, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "j"}})
		if _, _, err := w.Decode(js, nil, nil); err == nil || !strings.Contains(err.Error(), "protobuf") {
			t.Errorf("JSON to the protobuf decoder: %v, want the generated decoder's refusal", err)
		}
	})

	t.Run("corrupt data is an error, never a pod", func(t *testing.T) {
		data := encode(t, full)
		for _, cut := range []int{len(data) - 1, len(data) / 2, 7} {
			obj, _, err := w.Decode(data[:cut], nil, nil)
			if err == nil {
				// A cut may fall on a field boundary of the envelope; then the Pod's bytes are
				// what is short, and that must fail.
				t.Errorf("cut at %d of %d: decoded %+v", cut, len(data), obj)
			}
		}
		// A field a later Kubernetes adds, of any type, is skipped.
		raw, err := full.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		raw = protowire.AppendVarint(protowire.AppendTag(raw, 99, protowire.VarintType), 7)
		raw = protowire.AppendFixed32(protowire.AppendTag(raw, 100, protowire.Fixed32Type), 7)
		later := append(append([]byte{}, protobufPrefix...), envelope(t, "Pod", raw)...)
		if obj, _, err := w.Decode(later, nil, nil); err != nil || obj.(*podInfo).owner != "web" {
			t.Errorf("a pod with fields this decoder does not know: %v", err)
		}
		// The namespace (metadata field 3) as a varint instead of a string.
		bad := append(append([]byte{}, protobufPrefix...), envelope(t, "Pod", []byte{0x0a, 0x02, 0x18, 0x01})...)
		if _, _, err := w.Decode(bad, nil, nil); !errors.Is(err, errWireType) {
			t.Errorf("wrong wire type: %v", err)
		}
	})
}

// envelope is a runtime.Unknown of kind around raw, as the API server wraps an object.
func envelope(t *testing.T, kind string, raw []byte) []byte {
	t.Helper()
	u := runtime.Unknown{TypeMeta: runtime.TypeMeta{APIVersion: "v1", Kind: kind}, Raw: raw}
	b, err := u.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzPodWire: no input makes podWire panic, and whatever both decoders accept they read alike.
func FuzzPodWire(f *testing.F) {
	tr := true
	f.Add(encode(f, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{"x": "y"},
		OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "a-1", Controller: &tr}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "p", ContainerPort: 1}},
			LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromString("p")}}}}}}}))
	info := protobufInfo(f)
	w := podWire{info.Serializer}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, _, err := w.Decode(data, nil, nil)
		if err != nil {
			return
		}
		p, ok := got.(*podInfo)
		if !ok {
			return
		}
		obj, _, gerr := info.Serializer.Decode(data, nil, nil)
		if gerr != nil {
			return // the generated code checks what podWire skips
		}
		if want := wantInfo(obj.(*corev1.Pod)); !reflect.DeepEqual(p, want) {
			t.Errorf("\n got %+v\nwant %+v", p, want)
		}
	})
}
