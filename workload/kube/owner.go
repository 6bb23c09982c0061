package kube

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

var (
	podsGVR       = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	daemonSetsGVR = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}
)

// DaemonSetGone reports whether the DaemonSet that controls pod namespace/name no longer
// stands: deleted, being deleted, or replaced by another of the same name. An agent asks it when
// it is stopped, to tell `kubectl delete` of the installation (take everything out of the node)
// from an upgrade, an eviction or a restart (keep the pods' redirection pinned, failing closed,
// for the next agent). It says true only on what the API server answered; any error, a pod
// already gone, or a pod no DaemonSet controls is false (with the error, or the reason), so a
// doubt always keeps the mesh in place. One refusal is an answer too: `kubectl delete -k` removes
// the agent's ServiceAccount with the DaemonSet (before the pods, which the garbage collector
// deletes afterwards), and the API server then refuses the pod's token as Unauthorized: the
// installation is gone. (Its RBAC goes at the same time, so the DaemonSet itself often cannot be
// read any more by then; Forbidden stays a doubt.)
func DaemonSetGone(ctx context.Context, dyn dynamic.Interface, namespace, name string) (gone bool, reason string, err error) {
	pod, err := dyn.Resource(podsGVR).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsUnauthorized(err) {
		return true, "the agent's ServiceAccount is gone (the API server refuses its token)", nil
	}
	if err != nil {
		return false, "", fmt.Errorf("kube: pod %s/%s: %w", namespace, name, err)
	}
	var owner *metav1.OwnerReference
	for _, ref := range pod.GetOwnerReferences() {
		if ref.Controller != nil && *ref.Controller && ref.Kind == "DaemonSet" {
			owner = &ref
			break
		}
	}
	if owner == nil {
		return false, fmt.Sprintf("pod %s/%s has no DaemonSet controller", namespace, name), nil
	}
	ds, err := dyn.Resource(daemonSetsGVR).Namespace(namespace).Get(ctx, owner.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsUnauthorized(err):
		return true, "the agent's ServiceAccount is gone (the API server refuses its token)", nil
	case apierrors.IsNotFound(err):
		gone, reason = ownerVerdict(string(owner.UID), "", false, true)
	case err != nil:
		return false, "", fmt.Errorf("kube: daemonset %s/%s: %w", namespace, owner.Name, err)
	default:
		gone, reason = ownerVerdict(string(owner.UID), string(ds.GetUID()), ds.GetDeletionTimestamp() != nil, false)
	}
	return gone, "daemonset " + namespace + "/" + owner.Name + " " + reason, nil
}

// ownerVerdict is DaemonSetGone's decision from what the API server said of the pod's owner (the
// UID the pod names) and of the DaemonSet now of that name.
func ownerVerdict(ownerUID, dsUID string, deleting, notFound bool) (gone bool, reason string) {
	switch {
	case notFound:
		return true, "deleted"
	case deleting:
		return true, "being deleted"
	case dsUID != ownerUID:
		return true, "replaced (uid " + dsUID + ", the pod's owner was " + ownerUID + ")"
	}
	return false, "stands"
}
