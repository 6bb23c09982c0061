package kube

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestSlimTransformsKeepConversion: what the informers keep of Services and EndpointSlices
// converts to the same state as the objects the API server sent, whatever else they carried.
func TestSlimTransformsKeepConversion(t *testing.T) {
	full := func(name string, mod func(*corev1.Service)) *corev1.Service {
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, ResourceVersion: "3", Annotations: map[string]string{"a": "b"},
				ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
			Spec: corev1.ServiceSpec{
				ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00::10"}, Selector: map[string]string{"app": name},
				SessionAffinity: corev1.ServiceAffinityClientIP, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
				Ports: []corev1.ServicePort{
					{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), AppProtocol: ptr("http")},
					{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
					{Name: "grpc", Port: 9090, TargetPort: intstr.FromInt32(9091), Protocol: corev1.ProtocolTCP, NodePort: 30000},
				},
			},
			Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "1.2.3.4"}}}},
		}
		if mod != nil {
			mod(s)
		}
		return s
	}
	svcs := []*corev1.Service{
		full("api", nil),
		full("wp", func(s *corev1.Service) {
			s.Labels = map[string]string{LabelWaypointFor: "service", LabelUseWaypoint: "other"}
			s.Spec.ClusterIPs, s.Spec.ClusterIP = nil, "10.96.0.11"
		}),
		full("bad-wp", func(s *corev1.Service) {
			s.Labels = map[string]string{LabelWaypointFor: "everything"}
			s.Spec.ClusterIPs = []string{"10.96.0.12"}
		}),
		full("headless", func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
		}),
		full("ext", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeExternalName
			s.Spec.ExternalName = "example.org"
		}),
	}
	eps := []*discoveryv1.EndpointSlice{{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "api-x", Labels: map[string]string{discoveryv1.LabelServiceName: "api", "other": "x"}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr[int32](8080)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.2"}, NodeName: ptr("node1"), Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true)}},
			{Addresses: []string{"10.244.2.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}},
		},
	}}
	objs := Objects{
		Namespaces: []*corev1.Namespace{kns("shop", ambientNS)},
		Pods:       []*corev1.Pod{kpod("shop", "api-1", "node1", "10.244.1.2"), kpod("shop", "api-2", "node2", "10.244.2.2")},
		Services:   svcs, EndpointSlices: eps,
	}
	slim := objs
	slim.Services, slim.EndpointSlices = nil, nil
	for _, s := range svcs {
		o, err := slimService(s)
		if err != nil {
			t.Fatal(err)
		}
		slim.Services = append(slim.Services, o.(*corev1.Service))
	}
	for _, es := range eps {
		o, err := slimSlice(es)
		if err != nil {
			t.Fatal(err)
		}
		slim.EndpointSlices = append(slim.EndpointSlices, o.(*discoveryv1.EndpointSlice))
	}
	want, wantProblems := Spec(kubeTD, "", objs)
	got, gotProblems := Spec(kubeTD, "", slim)
	// Spec reports problems in map order: compare them as sets.
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(errSet(gotProblems), errSet(wantProblems)) {
		t.Errorf("slimmed objects convert differently:\n got %+v %v\nwant %+v %v", got.Services, gotProblems, want.Services, wantProblems)
	}
	if len(want.Services) != 3 || joinErrs(wantProblems) == "" {
		t.Errorf("the table no longer exercises what it should: %d services, problems %q", len(want.Services), joinErrs(wantProblems))
	}
}

func errSet(errs []error) map[string]bool {
	out := map[string]bool{}
	for _, e := range errs {
		out[e.Error()] = true
	}
	return out
}

// TestSpecDeterministic: whatever order the informers list objects in, Spec gives the same
// Spec, and of two services claiming one VIP the same one (by namespace/name) keeps it.
func TestSpecDeterministic(t *testing.T) {
	svc := func(name string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, Ports: []corev1.ServicePort{{Port: 80}}}}
	}
	objs := Objects{
		Namespaces: []*corev1.Namespace{kns("shop", ambientNS)},
		Pods:       []*corev1.Pod{kpod("shop", "a", "node1", "10.244.1.2"), kpod("shop", "b", "node2", "10.244.2.2"), kpod("shop", "c", "node3", "10.244.3.2")},
		Services:   []*corev1.Service{svc("zeta"), svc("alpha")},
	}
	first, _ := Spec(kubeTD, "", objs)
	if len(first.Services) != 1 || first.Services[0].Name != "alpha" {
		t.Fatalf("VIP conflict: %+v, want alpha to keep 10.96.0.10", first.Services)
	}
	for range 20 {
		objs.Services[0], objs.Services[1] = objs.Services[1], objs.Services[0]
		objs.Pods[0], objs.Pods[2] = objs.Pods[2], objs.Pods[0]
		if again, _ := Spec(kubeTD, "", objs); !reflect.DeepEqual(again, first) {
			t.Fatalf("list order changed the Spec:\n%+v\n%+v", again, first)
		}
	}
}
