package kube

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"

	"github.com/amesh-dev/amesh/internal/intern"
)

// What the informers keep of each object: only what Spec and the tracker read. Every agent
// caches every pod of the cluster (it needs remote identities), so a pod's cached size is the
// agent's memory per pod: a Deployment's pod as the API server holds it is ~5 KiB of Go heap
// in its typed form, a podInfo a few hundred bytes.

// slimPod is the pods' informer transform: the typed pod (typed) as a podInfo.
func slimPod(obj any) (any, error) {
	if p, ok := obj.(*podInfo); ok { // decoded by podWire
		return p, nil
	}
	t, err := typed[corev1.Pod](obj)
	if err != nil {
		return nil, err
	}
	pod, ok := t.(*corev1.Pod)
	if !ok {
		return t, nil // a tombstone
	}
	return infoOf(pod), nil
}

// slimSlice is the EndpointSlices' informer transform: what service reads.
func slimSlice(obj any) (any, error) {
	t, err := typed[discoveryv1.EndpointSlice](obj)
	if err != nil {
		return nil, err
	}
	es, ok := t.(*discoveryv1.EndpointSlice)
	if !ok {
		return t, nil
	}
	out := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: es.Name, Namespace: es.Namespace, ResourceVersion: es.ResourceVersion},
		AddressType: es.AddressType, Ports: es.Ports,
		Endpoints: make([]discoveryv1.Endpoint, len(es.Endpoints)),
	}
	if svc := es.Labels[discoveryv1.LabelServiceName]; svc != "" {
		out.Labels = map[string]string{discoveryv1.LabelServiceName: svc}
	}
	for i, ep := range es.Endpoints {
		out.Endpoints[i] = discoveryv1.Endpoint{Addresses: ep.Addresses, Conditions: discoveryv1.EndpointConditions{Ready: ep.Conditions.Ready}}
	}
	return out, nil
}

// slimService is the Services' informer transform: what service reads (a Service as decoded
// is ~2 KiB of heap: its spec's session affinity, IP families, traffic policies, status).
func slimService(obj any) (any, error) {
	t, err := typed[corev1.Service](obj)
	if err != nil {
		return nil, err
	}
	svc, ok := t.(*corev1.Service)
	if !ok {
		return t, nil
	}
	out := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svc.Name, Namespace: intern.String(svc.Namespace), ResourceVersion: svc.ResourceVersion, Labels: intern.Labels(svc.Labels)},
		Spec: corev1.ServiceSpec{
			Type: svc.Spec.Type, ClusterIP: svc.Spec.ClusterIP, ClusterIPs: svc.Spec.ClusterIPs,
			Ports: make([]corev1.ServicePort, len(svc.Spec.Ports)),
		},
	}
	for i, p := range svc.Spec.Ports {
		out.Spec.Ports[i] = corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, TargetPort: p.TargetPort}
	}
	return out, nil
}

// byServiceIndex indexes EndpointSlices by the key (namespace/name) of their service.
const byServiceIndex = "service"

func sliceServiceKeys(obj any) ([]string, error) { return serviceKeysOf(obj), nil }

// serviceKeysOf returns the key of the service an EndpointSlice belongs to, if any.
func serviceKeysOf(obj any) []string {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil
	}
	if svc := es.Labels[discoveryv1.LabelServiceName]; svc != "" {
		return []string{es.Namespace + "/" + svc}
	}
	return nil
}

// byUIDIndex indexes pods by UID (the key of the CNI plugin's pod IPs).
const byUIDIndex = "uid"

// podUIDIndex indexes the pods without an IP in their status only: those are the pods whose
// IPs the CNI plugin may report (Source.Refresh), and few (an index of every pod would cost
// ~250 bytes of each).
func podUIDIndex(obj any) ([]string, error) {
	if pod, ok := obj.(*podInfo); ok && pod.UID != "" && len(pod.podIPs) == 0 && pod.podIP == "" {
		return []string{string(pod.UID)}, nil
	}
	return nil, nil
}

// mergedKeys returns the keys of a and b.
func mergedKeys[V any](a, b map[string]V) map[string]bool {
	out := make(map[string]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// informerView is the tracker's view of the informers' caches.
type informerView struct {
	nss, svcs, pols cache.Store
	rts             cache.Store // nil without Gateway API (or not watched)
	pods, eps       cache.Indexer
	podIPs          map[string][]netip.Addr // for objects
}

// listAs returns what s holds of type T.
func listAs[T any](s cache.Store) []T {
	objs := s.List()
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

func getAs[T any](s cache.Store, key string) (T, bool) {
	var zero T
	obj, ok, err := s.GetByKey(key)
	if err != nil || !ok {
		return zero, false
	}
	t, ok := obj.(T)
	return t, ok
}

func (v informerView) pod(key string) (*podInfo, bool) { return getAs[*podInfo](v.pods, key) }

// podKeys returns the keys of the pods with uid (one, or none).
func (v informerView) podKeys(uid string) []string {
	keys, _ := v.pods.IndexKeys(byUIDIndex, uid)
	return keys
}

func (v informerView) namespaceLabels(ns string) map[string]string {
	if n, ok := getAs[*corev1.Namespace](v.nss, ns); ok {
		return n.Labels
	}
	return nil
}

func (v informerView) service(key string) (*corev1.Service, bool) {
	return getAs[*corev1.Service](v.svcs, key)
}

func (v informerView) slicesOf(key string) []*discoveryv1.EndpointSlice {
	objs, err := v.eps.ByIndex(byServiceIndex, key)
	if err != nil {
		return nil
	}
	var out []*discoveryv1.EndpointSlice
	for _, o := range objs {
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, es)
		}
	}
	return out
}

func (v informerView) policy(key string) (*unstructured.Unstructured, bool) {
	return getAs[*unstructured.Unstructured](v.pols, key)
}

func (v informerView) objects() Objects {
	objs := Objects{
		Namespaces: listAs[*corev1.Namespace](v.nss), infos: listAs[*podInfo](v.pods), Services: listAs[*corev1.Service](v.svcs),
		EndpointSlices: listAs[*discoveryv1.EndpointSlice](v.eps), Policies: listAs[*unstructured.Unstructured](v.pols), PodIPs: v.podIPs,
	}
	if v.rts != nil {
		objs.Routes = listAs[*unstructured.Unstructured](v.rts)
	}
	return objs
}
