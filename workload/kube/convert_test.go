package kube

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var kubeTD = spiffeid.RequireTrustDomainFromString("cluster.local")

func kns(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

type podOpt func(*corev1.Pod)

func kpod(ns, name, node, ip string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), CreationTimestamp: metav1.NewTime(time.Unix(1000, 0))},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: name + "-sa"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, HostIP: map[string]string{"node1": "10.250.0.1", "node2": "10.250.0.2"}[node]},
	}
	if ip != "" {
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func podLabels(l map[string]string) podOpt { return func(p *corev1.Pod) { p.Labels = l } }

var ambientNS = map[string]string{LabelDataplaneMode: "ambient"}

func TestSpecWorkloads(t *testing.T) {
	probe := func(p *corev1.Pod) {
		p.Spec.Containers = []corev1.Container{{
			Name:  "app",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
				HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
				TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(9090)}}},
			StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
				Exec: &corev1.ExecAction{Command: []string{"true"}}}},
		}}
	}
	tests := []struct {
		name     string
		ns       []*corev1.Namespace
		pods     []*corev1.Pod
		want     map[string]workload.Mode // workload name -> mode; absent: left out
		problems string                   // substring of the reported problems; empty: none
		cni      map[string][]netip.Addr
	}{
		{
			name: "namespace label enrolls, pod label opts out, other namespaces stay out",
			ns:   []*corev1.Namespace{kns("shop", ambientNS), kns("plain", nil)},
			pods: []*corev1.Pod{
				kpod("shop", "web", "node1", "10.244.1.2"),
				kpod("shop", "batch", "node1", "10.244.1.3", podLabels(map[string]string{LabelDataplaneMode: "none"})),
				kpod("plain", "legacy", "node2", "10.244.2.2"),
				kpod("plain", "solo", "node2", "10.244.2.3", podLabels(map[string]string{LabelDataplaneMode: "ambient"})),
			},
			want: map[string]workload.Mode{"web": workload.ModeAmbient, "batch": workload.ModeNone, "legacy": workload.ModeNone, "solo": workload.ModeAmbient},
		},
		{
			name: "pods without an IP or node, finished or on the host network are left out; a node's IP may be unknown",
			ns:   []*corev1.Namespace{kns("shop", ambientNS)},
			pods: []*corev1.Pod{
				kpod("shop", "pending", "node1", ""),
				kpod("shop", "unscheduled", "", "10.244.1.4"),
				kpod("shop", "nohost", "node3", "10.244.3.4"),
				kpod("shop", "done", "node1", "10.244.1.5", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
				kpod("shop", "hostnet", "node1", "10.250.0.1", func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
				kpod("shop", "web", "node1", "10.244.1.2"),
			},
			want: map[string]workload.Mode{"web": workload.ModeAmbient, "nohost": workload.ModeAmbient},
		},
		{
			name: "a pod being created has its IPs from the CNI plugin before its status does",
			ns:   []*corev1.Namespace{kns("shop", ambientNS)},
			pods: []*corev1.Pod{kpod("shop", "pending", "node1", ""), kpod("shop", "other", "node1", "")},
			cni:  map[string][]netip.Addr{"uid-pending": {netip.MustParseAddr("10.244.1.9")}},
			want: map[string]workload.Mode{"pending": workload.ModeAmbient},
		},
		{
			name: "of two pods with one IP the newer keeps it",
			ns:   []*corev1.Namespace{kns("shop", ambientNS)},
			pods: []*corev1.Pod{
				kpod("shop", "old", "node1", "10.244.1.2"),
				kpod("shop", "new", "node1", "10.244.1.2", func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(time.Unix(2000, 0)) }),
			},
			want:     map[string]workload.Mode{"new": workload.ModeAmbient},
			problems: "ip 10.244.1.2 is also pod shop/new's",
		},
		{
			name: "probe ports",
			ns:   []*corev1.Namespace{kns("shop", ambientNS)},
			pods: []*corev1.Pod{kpod("shop", "web", "node1", "10.244.1.2", probe)},
			want: map[string]workload.Mode{"web": workload.ModeAmbient},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, problems := Spec(kubeTD, "", Objects{Namespaces: tt.ns, Pods: tt.pods, PodIPs: tt.cni})
			if tt.problems == "" && len(problems) > 0 || tt.problems != "" && !strings.Contains(joinErrs(problems), tt.problems) {
				t.Errorf("problems %q, want %q", joinErrs(problems), tt.problems)
			}
			st, err := workload.NewState(spec)
			if err != nil {
				t.Fatalf("workload.NewState refused Spec's output: %v", err)
			}
			got := map[string]workload.Mode{}
			for _, w := range st.Workloads() {
				got[w.Name] = w.Mode
				if w.Name == "web" && w.ServiceAccount != "web-sa" {
					t.Errorf("web's service account %q", w.ServiceAccount)
				}
				if w.Name == "web" && w.HostIP != netip.MustParseAddr("10.250.0.1") {
					t.Errorf("web's host IP %v", w.HostIP)
				}
				if tt.name == "probe ports" && !slices.Equal(w.ProbePorts, []uint16{8080, 9090}) {
					t.Errorf("probe ports %v, want [8080 9090] (named port resolved, exec probe ignored)", w.ProbePorts)
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("workloads %v, want %v", got, tt.want)
			}
			for name, mode := range tt.want {
				if m, ok := got[name]; !ok || m != mode {
					t.Errorf("%s: mode %v (present %v), want %v", name, m, ok, mode)
				}
			}
		})
	}
}

func joinErrs(errs []error) string {
	var b strings.Builder
	for _, e := range errs {
		b.WriteString(e.Error() + "\n")
	}
	return b.String()
}

func ptr[T any](v T) *T { return &v }

func TestSpecServices(t *testing.T) {
	ns := []*corev1.Namespace{kns("shop", ambientNS)}
	pods := []*corev1.Pod{kpod("shop", "api-1", "node1", "10.244.1.2"), kpod("shop", "api-2", "node2", "10.244.2.2"), kpod("shop", "api-3", "node2", "10.244.2.3")}
	svc := func(name, clusterIP string, ports ...corev1.ServicePort) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name}, Spec: corev1.ServiceSpec{ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}, Ports: ports}}
	}
	slice := func(svcName string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: svcName + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
			AddressType: discoveryv1.AddressTypeIPv4, Ports: ports, Endpoints: eps,
		}
	}
	ep := func(ip string, ready *bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
	}
	objs := Objects{
		Namespaces: ns, Pods: pods,
		Services: []*corev1.Service{
			svc("api", "10.96.0.10", corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("web")}),
			svc("headless", "None", corev1.ServicePort{Port: 80}),
			svc("dns", "10.96.0.53", corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}, corev1.ServicePort{Name: "dns-tcp", Port: 53, TargetPort: intstr.FromInt32(5353)}),
			svc("noslices", "10.96.0.11", corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("web")}),
			{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"}},
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			slice("api", []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr[int32](8080)}},
				ep("10.244.1.2", nil), ep("10.244.2.2", ptr(true)), ep("10.244.2.3", ptr(false)), ep("10.9.9.9", nil)),
		},
	}
	spec, problems := Spec(kubeTD, "", objs)
	if !strings.Contains(joinErrs(problems), `service shop/noslices: port 80: named targetPort "web" not in its EndpointSlices yet`) {
		t.Errorf("problems %q: want the unresolvable named port reported", joinErrs(problems))
	}
	st, err := workload.NewState(spec)
	if err != nil {
		t.Fatal(err)
	}
	if st.Service("shop", "headless") != nil || st.Service("shop", "ext") != nil {
		t.Error("headless or ExternalName service kept: they have no VIP")
	}
	api := st.Service("shop", "api")
	if api == nil || !slices.Equal(api.Ports, []workload.ServicePort{{Port: 80, TargetPort: 8080}}) {
		t.Fatalf("api: %+v, want port 80 -> 8080 through the slice's named port", api)
	}
	var eps []string
	for _, w := range st.Endpoints(api) {
		eps = append(eps, w.Name)
	}
	if !slices.Equal(eps, []string{"api-1", "api-2"}) {
		t.Errorf("api endpoints %v, want [api-1 api-2] (not-ready api-3 and the non-workload 10.9.9.9 left out)", eps)
	}
	if d := st.Service("shop", "dns"); d == nil || !slices.Equal(d.Ports, []workload.ServicePort{{Port: 53, TargetPort: 5353}}) {
		t.Errorf("dns: %+v, want only the TCP port", d)
	}
	if n := st.Service("shop", "noslices"); n == nil || len(st.Endpoints(n)) != 0 {
		t.Errorf("noslices: %+v with endpoints %v, want a service without endpoints", n, st.Endpoints(n))
	}
}

func kpolicy(spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.amesh.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "p", "namespace": "shop"},
	}}
	if spec != nil {
		u.Object["spec"] = spec
	}
	return u
}

func TestPolicy(t *testing.T) {
	rules := func(r ...any) []any { return r }
	tests := []struct {
		name    string
		spec    map[string]any
		want    policy.Policy
		wantErr string
	}{
		{
			name: "allow from a principal to a port",
			spec: map[string]any{
				"selector": map[string]any{"matchLabels": map[string]any{"app": "api"}},
				"action":   "ALLOW",
				"rules": rules(map[string]any{
					"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/shop/sa/web"}}}},
					"to":   []any{map[string]any{"operation": map[string]any{"ports": []any{"8080"}}}},
				}),
			},
			want: policy.Policy{Name: "p", Namespace: "shop", Selector: map[string]string{"app": "api"}, Action: policy.Allow,
				Rules: []policy.Rule{{From: []policy.Source{{Principals: []string{"cluster.local/ns/shop/sa/web"}}}, To: []policy.Operation{{Ports: []uint16{8080}}}}}},
		},
		{
			name: "deny without rules has no effect and is valid",
			spec: map[string]any{"action": "DENY"},
			want: policy.Policy{Name: "p", Namespace: "shop", Action: policy.Deny},
		},
		{
			name: "an empty spec allows nothing (Istio: ALLOW with no rules)",
			spec: nil,
			want: policy.Policy{Name: "p", Namespace: "shop", Action: policy.Allow},
		},
		{
			name:    "L7 field fails closed",
			spec:    map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": "api"}}, "action": "DENY", "rules": rules(map[string]any{"to": []any{map[string]any{"operation": map[string]any{"methods": []any{"GET"}}}}})},
			want:    policy.Policy{Name: "p", Namespace: "shop", Selector: map[string]string{"app": "api"}, Action: policy.Allow, Rules: []policy.Rule{}},
			wantErr: `is an L7 field: the node agent enforces L4 only`,
		},
		{
			name: "waypoint policy with L7 fields",
			spec: map[string]any{"targetRefs": []any{map[string]any{"kind": "Service", "name": "wp"}}, "action": "DENY", "rules": rules(map[string]any{
				"to":   []any{map[string]any{"operation": map[string]any{"methods": []any{"DELETE"}, "paths": []any{"/admin*"}}}},
				"when": []any{map[string]any{"key": "request.headers[x-debug]", "values": []any{"1"}}},
			})},
			want: policy.Policy{Name: "p", Namespace: "shop", TargetRefs: []policy.TargetRef{{Kind: "Service", Name: "wp"}}, Action: policy.Deny, Rules: []policy.Rule{{
				To:   []policy.Operation{{Methods: []string{"DELETE"}, Paths: []string{"/admin*"}}},
				When: []policy.Condition{{Key: "request.headers[x-debug]", Values: []string{"1"}}},
			}}},
		},
		{
			name:    "bad waypoint policy fails closed through its waypoint",
			spec:    map[string]any{"targetRefs": []any{map[string]any{"kind": "Service", "name": "wp"}}, "rules": rules(map[string]any{"to": []any{map[string]any{"operation": map[string]any{"methods": []any{"get"}}}}})},
			want:    policy.Policy{Name: "p", Namespace: "shop", TargetRefs: []policy.TargetRef{{Kind: "Service", Name: "wp"}}, Action: policy.Allow, Rules: []policy.Rule{}},
			wantErr: `is not an upper-case HTTP method`,
		},
		{
			name:    "unknown action fails closed",
			spec:    map[string]any{"action": "AUDIT"},
			want:    policy.Policy{Name: "p", Namespace: "shop", Action: policy.Allow, Rules: []policy.Rule{}},
			wantErr: `action "AUDIT" is not ALLOW or DENY`,
		},
		{
			name:    "bad port fails closed",
			spec:    map[string]any{"rules": rules(map[string]any{"to": []any{map[string]any{"operation": map[string]any{"ports": []any{"80-90"}}}}})},
			want:    policy.Policy{Name: "p", Namespace: "shop", Action: policy.Allow, Rules: []policy.Rule{}},
			wantErr: `port "80-90" is not a number in 1..65535`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Policy(kpolicy(tt.spec))
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
			if tt.wantErr != "" && !strings.Contains(err.Error(), "denying all traffic") {
				t.Errorf("err %v does not say it fails closed", err)
			}
			if !policyEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			// A fail-closed policy must deny what the original would have allowed.
			if tt.wantErr != "" {
				var d policy.Decision
				if len(got.TargetRefs) > 0 { // a waypoint's: closed at its waypoint
					r := policy.HTTPRequest{SrcPrincipal: "cluster.local/ns/shop/sa/web", DstPort: 80, Method: "GET", Path: "/"}
					r.Waypoint.Namespace, r.Waypoint.Name = "shop", "wp"
					d = policy.EvaluateHTTP([]policy.Policy{got}, r, "")
				} else {
					d = policy.Evaluate([]policy.Policy{got}, policy.Request{SrcPrincipal: "cluster.local/ns/shop/sa/web", SrcNamespace: "shop", DstPort: 8080, DstNamespace: "shop", DstLabels: map[string]string{"app": "api"}}, "")
				}
				if d.Allowed {
					t.Errorf("fail-closed policy allowed a request: %+v", d)
				}
			}
		})
	}
}

func policyEqual(a, b policy.Policy) bool {
	if (a.Rules == nil) != (b.Rules == nil) {
		return false // no rules (deny all for an ALLOW) is not the same as nil
	}
	norm := func(p policy.Policy) policy.Policy {
		if len(p.Rules) == 0 {
			p.Rules = nil
		}
		if len(p.Selector) == 0 {
			p.Selector = nil
		}
		return p
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

func TestOwnerName(t *testing.T) {
	owned := func(kind, name string, labels map[string]string) podOpt {
		return func(p *corev1.Pod) {
			p.Labels = labels
			p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr(true)}}
		}
	}
	hash := map[string]string{"pod-template-hash": "7d4b9c8f6"}
	for _, tc := range []struct {
		what string
		opt  podOpt
		want string
	}{
		{"bare pod", func(*corev1.Pod) {}, "p-1"},
		{"deployment", owned("ReplicaSet", "reviews-v1-7d4b9c8f6", hash), "reviews-v1"},
		{"replicaset of its own", owned("ReplicaSet", "reviews-rs", nil), "reviews-rs"},
		{"replicaset, hash that is not its suffix", owned("ReplicaSet", "reviews-rs", hash), "reviews-rs"},
		{"statefulset", owned("StatefulSet", "db", nil), "db"},
		{"daemonset", owned("DaemonSet", "agent", nil), "agent"},
		{"cronjob", owned("Job", "backup-29012345", nil), "backup"},
		{"job", owned("Job", "migrate", nil), "migrate"},
		{"owner that is not the controller", func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "x"}}
		}, "p-1"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			if got := ownerName(kpod("shop", "p-1", "n1", "10.0.0.1", tc.opt)); got != tc.want {
				t.Errorf("ownerName = %q, want %q", got, tc.want)
			}
		})
	}
}
