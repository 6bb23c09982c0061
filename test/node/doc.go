// Package node runs real Kubernetes nodes on this machine for tests: per node, containerd (with
// runc) and kubelet inside the node's network namespace and a mount namespace of its own, images
// imported from local archives, pods made by kubelet through containerd and the node's real CNI
// chain (the reference bridge plugin, and whatever a DaemonSet chains into it). Nothing is
// pulled: the sandbox image and the app image are built here from testapp.
//
// The mount namespace is what lets two nodes share one machine: kubelet, containerd and libcni
// write fixed paths whatever they are configured with (/var/lib/kubelet, /run/containerd,
// /var/lib/cni, /etc/cni/net.d, /opt/cni/bin), and a DaemonSet's hostPath volumes name those
// paths. Each node mounts a tmpfs of its own over /run, /var/lib and /opt, binds its own CNI
// directories at /opt/cni/bin and /etc/cni/net.d (under an overlay of /etc, so nothing is made
// on the host), mounts a bpffs of its own on /sys/fs/bpf (so two agents' pins never meet), and
// keeps /run/netns to itself (containerd's pod namespaces, which the agent's hostPath reads).
// Its mounts are shared within the node, so what
// containerd mounts later (a pod's network namespace) reaches a container that asked for
// HostToContainer propagation. ../shared/recipes/kube-node/README.md records the traps this
// avoids.
//
// Stop kills every process of the node (kubelet, containerd, its shims, every container: all
// that is in the node's cgroups or its mount namespace) and removes its cgroups and its data; the
// node's mounts go with its mount namespace.
package node
