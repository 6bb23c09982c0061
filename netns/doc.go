// Package netns runs code, opens sockets and finds namespaces across Linux network namespaces,
// for the agent (a pod's listeners and dials live in the pod's namespace) and for the tests
// that build network namespaces of their own.
//
// A socket belongs for good to the namespace of the thread that created it, so every entry
// point here creates its sockets on a thread that is inside the target namespace, and no
// goroutine ever runs in a namespace it did not ask for (see Do). Cilium's pkg/netns and
// Istio's node agent switch threads the same way.
package netns
