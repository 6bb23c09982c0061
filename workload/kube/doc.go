// Package kube feeds a workload.Store from the Kubernetes API server (cluster mode): Source
// watches Namespaces, Pods, Services, EndpointSlices and amesh's AuthorizationPolicies through the
// dynamic client, and Spec converts what it sees into the workload.Spec a State is built from.
// The labels users set on namespaces, pods and services (LabelDataplaneMode, LabelUseWaypoint,
// LabelInboundMode) are read here.
package kube
