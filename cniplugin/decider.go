package cniplugin

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// The label that puts pods in the mesh: on a namespace, ModeAmbient enrolls its pods; on a pod,
// ModeNone opts it out. The same rule as the agent's (workload.ModeAmbient, workload.ModeNone).
const (
	DataplaneModeLabel = "amesh.io/dataplane-mode"
	ModeAmbient        = "ambient"
	ModeNone           = "none"
)

// MeshDecider says whether a pod must be in the mesh. amesh-cni asks it only when the agent is
// unreachable, to choose between failing the pod's ADD (a mesh pod must never start unmeshed) and
// letting it start.
type MeshDecider interface {
	// InMesh reports whether pod ns/name is in the mesh and why, in words for an error message
	// ("namespace shop has amesh.io/dataplane-mode=ambient"). An error means it cannot tell.
	InMesh(ctx context.Context, ns, name string) (inMesh bool, reason string, err error)
}

var _ MeshDecider = (*KubeDecider)(nil)

// KubeDecider is the MeshDecider that asks the API server for the labels of the pod's namespace
// and of the pod. It reads metadata only (PartialObjectMetadata), so its client is small enough
// for a binary the runtime starts for every pod.
type KubeDecider struct {
	client metadata.Interface
}

var (
	namespacesResource = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	podsResource       = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
)

// NewKubeDecider returns a KubeDecider with the credentials of the kubeconfig file at path;
// timeout bounds each request (ctx bounds them too).
func NewKubeDecider(path string, timeout time.Duration) (*KubeDecider, error) {
	if path == "" {
		return nil, fmt.Errorf("cniplugin: no kubeconfig configured (amesh-agent install-cni writes one)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("cniplugin: load kubeconfig %s: %w", path, err)
	}
	return newKubeDecider(cfg, timeout)
}

func newKubeDecider(cfg *rest.Config, timeout time.Duration) (*KubeDecider, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = timeout
	cfg.UserAgent = PluginType
	// Deprecation warnings would go to klog on stderr, which the runtime may fold into its error.
	cfg.WarningHandler = rest.NoWarnings{}
	c, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cniplugin: API client for %s: %w", cfg.Host, err)
	}
	return &KubeDecider{client: c}, nil
}

// InMesh implements MeshDecider with the agent's rule (workload/kube.Spec): a pod labelled
// amesh.io/dataplane-mode=none is out, one labelled ambient is in, any other pod is in when its
// namespace is labelled amesh.io/dataplane-mode=ambient. A pod the API server does not know
// (deleted meanwhile) counts as its namespace says: the safe side.
func (d *KubeDecider) InMesh(ctx context.Context, ns, name string) (bool, string, error) {
	nsMeta, err := d.client.Resource(namespacesResource).Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return false, "", fmt.Errorf("cniplugin: get namespace %s: %w", ns, err)
	}
	nsAmbient := nsMeta.Labels[DataplaneModeLabel] == ModeAmbient
	nsReason := fmt.Sprintf("namespace %s has %s=%s", ns, DataplaneModeLabel, ModeAmbient)
	if !nsAmbient {
		nsReason = fmt.Sprintf("namespace %s is not labelled %s=%s", ns, DataplaneModeLabel, ModeAmbient)
	}
	podMeta, err := d.client.Resource(podsResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nsAmbient, nsReason + "; the pod is not found", nil
	case err != nil:
		return false, "", fmt.Errorf("cniplugin: get pod %s/%s: %w", ns, name, err)
	}
	switch podMeta.Labels[DataplaneModeLabel] {
	case ModeNone:
		return false, fmt.Sprintf("pod %s/%s has %s=%s", ns, name, DataplaneModeLabel, ModeNone), nil
	case ModeAmbient:
		return true, fmt.Sprintf("pod %s/%s has %s=%s", ns, name, DataplaneModeLabel, ModeAmbient), nil
	}
	return nsAmbient, nsReason, nil
}
