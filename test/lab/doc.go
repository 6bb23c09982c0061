// Package lab builds a small cluster on one machine, out of network namespaces, for end-to-end
// tests, `make demo` and benchmarks.
//
// # Topology
//
// New creates, under a per-run prefix P (default "amesh-lab-" and six random hex digits):
//
//	/run/netns/P-sw            the underlay: a Linux bridge br0, one port n<i> per node
//	/run/netns/P-<node>        a node: eth0 10.250.0.<i+1>/24 on the bridge, ip_forward=1,
//	                           routes to the other nodes' pod /24s via their underlay IPs
//	/run/netns/P-<node>-<pod>  a pod: eth0 10.20.<i+1>.<j+2>/32 (pods past the 253rd of a
//	                           node: 10.21.<i+1>.<j-253+2>/32),
//	                           169.254.1.1 dev eth0 scope link, default via 169.254.1.1
//
// A pod's veth is routed as Calico routes it: the node end (vpod<j+1>) has no address, answers
// ARP for the pod's gateway 169.254.1.1 by proxy_arp (with proxy_delay 0, so the answer is not
// held back up to 0.8 s) and has a /32 route to the pod's IP. Proxy ARP only answers for an
// address the node routes out of another device, so each node also routes 169.254.1.1 to its
// underlay; nothing is ever sent there, since every pod packet is addressed to its real
// destination. Each node's PinDir (/sys/fs/bpf/P-<node>) is where its agent should pin.
//
// Every address exists only inside the lab's namespaces, and every link is created inside them,
// never in the caller's namespace, so interface names need not carry the prefix (they are at
// most 15 characters) and deleting the namespaces deletes the links.
//
// # Lifecycle
//
// Close kills what Start started (and anything else still running in the lab's namespaces),
// stops captures, deletes the namespaces, the nodes' pin directories and Dir. It is safe to call
// more than once, and New calls it on whatever it had built when it fails. A run interrupted
// before Close (a killed test binary) leaves namespaces behind: CleanupStale, or `make
// clean-lab`, removes them. Sockets from Listen and Dial keep their namespace (and its links)
// alive, unnamed, until they are closed: close them before Close.
//
// # Traffic
//
// Package lab is the shared test lab: what the e2e tests, `make demo` and the bench suite need on
// top of the cluster lives here once. Echo is the echo server they run in every pod (on EchoPort),
// RR the request/response latency loop they time against it (back to back or at a fixed rate),
// Iperf the throughput run and RSSMiB an agent's memory.
//
// The package works on Linux only (and as root); elsewhere New and Capture fail, and only the
// pure parts (StateYAML, ContainsPayload) run.
package lab
