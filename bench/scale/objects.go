package scale

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The cluster the harness makes is shaped like a real one, because what the agent caches of
// each object is what the run measures: pods as a Deployment makes them (owner, probes, a
// projected token volume, env, resources, four conditions), one EndpointSlice per service as the
// endpointslice controller writes it.

// meshLabel puts a namespace in the mesh (workload/kube.LabelDataplaneMode).
const meshLabel = "amesh.io/dataplane-mode"

// appPort is the port every fake pod serves and every service targets.
const appPort = 8080

// podIP is the i-th address of the fake pods' range, 10.200.0.0/15 (131,072 addresses: a run
// never runs out; the churn reuses some on purpose, see reuseEvery).
func podIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(200 + i>>16&1), byte(i >> 8), byte(i)})
}

// nodeIP is the address of fake node k (10.251.0.0/16).
func nodeIP(k int) netip.Addr { return netip.AddrFrom4([4]byte{10, 251, byte(k >> 8), byte(k)}) }

func nsName(i int) string       { return fmt.Sprintf("scale-%03d", i) }
func appName(j int) string      { return fmt.Sprintf("app-%04d", j) }
func fakeNodeName(k int) string { return fmt.Sprintf("fake-%03d", k) }

func ptr[T any](v T) *T { return &v }

// podObject is a pod of Deployment app as the API server would hold it before the kubelet
// reports its status.
func podObject(name, ns, app, node string) *corev1.Pod {
	hash := "5d8f7c9b6"
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns,
			Labels: map[string]string{"app": app, "version": "v1", "pod-template-hash": hash},
			Annotations: map[string]string{
				"kubectl.kubernetes.io/restartedAt": "2026-12-01T00:00:00Z",
				"prometheus.io/scrape":              "true",
				"prometheus.io/port":                "9090",
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "ReplicaSet", Name: app + "-" + hash,
				UID: types.UID("0b7e4f3c-" + app), Controller: ptr(true), BlockOwnerDeletion: ptr(true),
			}},
		},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: app,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.example.com/team/" + app + ":1.4.2",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: appPort, Protocol: corev1.ProtocolTCP}, {Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{
					{Name: "LOG_LEVEL", Value: "info"}, {Name: "PORT", Value: "8080"},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}},
					{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}},
					{Name: "UPSTREAM_URL", Value: "http://backend." + ns + ".svc.cluster.local:8080"},
				},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}, PeriodSeconds: 5},
				LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}, PeriodSeconds: 10},
				VolumeMounts:   []corev1.VolumeMount{{Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr(int64(3607))}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
			}}}}},
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr(int64(300))},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr(int64(300))},
			},
		},
	}
}

// runningStatus is what the kubelet reports for a started pod at ip on a node at host.
func runningStatus(ip, host netip.Addr) corev1.PodStatus {
	now := metav1.Now()
	conds := []corev1.PodCondition{}
	for _, t := range []corev1.PodConditionType{"PodReadyToStartContainers", corev1.PodInitialized, corev1.PodReady, corev1.ContainersReady, corev1.PodScheduled} {
		conds = append(conds, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	return corev1.PodStatus{
		Phase: corev1.PodRunning, Conditions: conds,
		HostIP: host.String(), HostIPs: []corev1.HostIP{{IP: host.String()}},
		PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}},
		StartTime: &now, QOSClass: corev1.PodQOSBurstable,
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "app", Ready: true, Started: ptr(true), Image: "registry.example.com/team/app:1.4.2",
			ImageID:     "registry.example.com/team/app@sha256:4b825dc642cb6eb9a060e54bf8d69288fbee4904e2f5a4d5b0d3b6c1f8a2c9d1",
			ContainerID: "containerd://9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
}

// serviceObject is service app in ns, selecting its pods; the API server gives it its VIP.
func serviceObject(ns, app string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: ns, Labels: map[string]string{"app": app}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": app},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}},
		},
	}
}

// sliceObject is the EndpointSlice of service app in ns listing the pods at ips, as the
// endpointslice controller writes it.
func sliceObject(ns, app string, eps []endpoint) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: app + "-x7k2p", Namespace: ns,
			Labels: map[string]string{discoveryv1.LabelServiceName: app, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(appPort)), Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{},
	}
	for _, e := range eps {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
			NodeName:   ptr(e.node),
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e.pod},
		})
	}
	return es
}

// endpoint is one pod of a service, as its slice lists it.
type endpoint struct {
	pod, node string
	ip        netip.Addr
}

// policyObject is AuthorizationPolicy k in ns: its app's pods take port 8080 from the
// namespace's own pods and from the service account of the app before it.
func policyObject(ns, name, app, prevApp string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.amesh.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{"app": app}},
			"action":   "ALLOW",
			"rules": []any{map[string]any{
				"from": []any{
					map[string]any{"source": map[string]any{"namespaces": []any{ns}}},
					map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/" + ns + "/sa/" + prevApp}}},
				},
				"to": []any{map[string]any{"operation": map[string]any{"ports": []any{fmt.Sprint(appPort)}}}},
			}},
		},
	}}
}

// denyObject is the probe's policy: ns's pods labelled app=target refuse every connection.
func denyObject(ns, name, target string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.amesh.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{"app": target}},
			"action":   "DENY",
			"rules":    []any{map[string]any{}},
		},
	}}
}
