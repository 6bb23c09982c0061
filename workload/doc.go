// Package workload is the agent's view of the cluster: nodes, workloads (pods), services and
// authorization policies, as an immutable, indexed State, held by a Store that readers Load
// lock-free and subscribers are told about.
//
// A State is built by NewState from a Spec, which a feeder fills, each in its own package:
// workload/file reads a YAML state file (local mode: the lab, CI, a laptop; its package doc
// describes the format), workload/kube watches the Kubernetes API server (cluster mode). This
// package imports neither YAML nor client-go. A feeder that reports problems of its own, with
// their place in its source, collects them in Problems and builds with Build, so that one error
// lists them all with the Spec's own.
//
// Decisions built on a State are pure functions: Diff says which of a node's workloads to enroll
// and unenroll between two states, PickEndpoint chooses a backend of a service VIP;
// policy.Evaluate authorizes a connection against State.PolicySet.
package workload
