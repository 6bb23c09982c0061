// Package k8s runs a real Kubernetes control plane (etcd and kube-apiserver, v1.37.2) for tests,
// and the real kubectl against it.
//
// The binaries are built from Go modules, not downloaded (no machine of this project can
// download release binaries): EnsureBinaries finds them in a cache directory outside the repository
// ($HOME/.cache/amesh/k8s, or $AMESH_K8S_BIN) and builds the missing ones from the scratch module
// test/k8s/tools, as /work/shared/recipes/kube-apiserver/README.md describes. A cold build takes
// minutes; later calls return at once.
//
// Start runs etcd and kube-apiserver on free ports with a data directory of their own, so that two
// control planes (two test packages) can run side by side. With Config.Netns both run inside that
// network namespace, where the caller's sockets cannot reach them: every client this package hands
// out (RESTConfig, Clientset, Dynamic, Kubectl, DialContext) then dials from inside the namespace.
//
// # What runs and what does not
//
// Only the API server runs: no scheduler, no controllers, no kubelet. A test plays their part: it
// sets spec.nodeName itself, patches a pod's status (podIP, phase) itself and creates
// EndpointSlices itself. Nothing runs the objects either: a DaemonSet is stored, never scheduled.
//
// Namespace deletion never finishes (no namespace controller finalizes a namespace, so it stays
// Terminating forever): tests use a fresh namespace each and never reuse a name, and the whole
// control plane is thrown away by Stop.
//
// # Lifecycle
//
// A ControlPlane holds two processes and a directory until Stop, which kills both process groups,
// waits for them and removes the directory; it is safe to call more than once. The processes also
// die with the test process (PR_SET_PDEATHSIG), so a killed test binary does not leave them
// running; the data directory it leaves is removed by the next Start (it records its owner's
// pid). Start cleans up whatever it started when it fails.
//
// The package works on Linux only; elsewhere Start fails and EnsureBinaries only finds binaries.
package k8s
