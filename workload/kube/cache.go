package kube

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
)

// What the informers keep of each object: only what Spec and the tracker read. Every agent
// caches every pod of the cluster (it needs remote identities), so a pod's cached size is the
// agent's memory per pod; a Deployment's pod as the API server holds it is ~5 KiB of Go heap
// in its typed form, of which the agent reads a tenth.

// slimPod is the pods' informer transform: the typed pod (typed), cut down to what
// podWorkload, ownerName and probePorts read.
func slimPod(obj any) (any, error) {
	t, err := typed[corev1.Pod](obj)
	if err != nil {
		return nil, err
	}
	pod, ok := t.(*corev1.Pod)
	if !ok {
		return t, nil // a tombstone
	}
	return slim(pod), nil
}

func slim(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, CreationTimestamp: p.CreationTimestamp,
		},
		Spec: corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork, ServiceAccountName: p.Spec.ServiceAccountName},
		Status: corev1.PodStatus{
			Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs, HostIP: p.Status.HostIP,
		},
	}
	if ref := metav1.GetControllerOf(p); ref != nil {
		out.OwnerReferences = []metav1.OwnerReference{{Kind: ref.Kind, Name: ref.Name, Controller: ref.Controller}}
	}
	for _, c := range p.Spec.Containers {
		sc := corev1.Container{LivenessProbe: slimProbe(c.LivenessProbe), ReadinessProbe: slimProbe(c.ReadinessProbe), StartupProbe: slimProbe(c.StartupProbe)}
		if sc.LivenessProbe == nil && sc.ReadinessProbe == nil && sc.StartupProbe == nil {
			continue // its ports only resolve a probe's named port
		}
		for _, cp := range c.Ports {
			sc.Ports = append(sc.Ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: cp.ContainerPort})
		}
		out.Spec.Containers = append(out.Spec.Containers, sc)
	}
	return out
}

// slimProbe keeps the port a kubelet probe connects to (exec probes connect to nothing).
func slimProbe(pr *corev1.Probe) *corev1.Probe {
	switch {
	case pr == nil:
		return nil
	case pr.HTTPGet != nil:
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: pr.HTTPGet.Port}}}
	case pr.TCPSocket != nil:
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: pr.TCPSocket.Port}}}
	case pr.GRPC != nil:
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: pr.GRPC.Port}}}
	}
	return nil
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

// informerView is the tracker's view of the informers' caches.
type informerView struct {
	src                   *Source
	pods, nss, svcs, pols cache.Store
	eps                   cache.Indexer
	podIPs                map[string][]netip.Addr // for objects
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

func (v informerView) pod(key string) (*corev1.Pod, bool) { return getAs[*corev1.Pod](v.pods, key) }

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
	k := v.src
	objs := Objects{
		Namespaces: k.nsLister(), Pods: k.podLister(), Services: k.svcLister(),
		EndpointSlices: k.epsLister(), Policies: k.polLister(), PodIPs: v.podIPs,
	}
	if k.rtLister != nil {
		objs.Routes = k.rtLister()
	}
	return objs
}
