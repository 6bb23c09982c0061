// Package redirect steers enrolled pods' TCP into the node agent with eBPF, inside each pod's
// network namespace, owning no iptables rule (DESIGN §2):
//   - outbound: cgroup/connect4 and connect6 at the cgroup v2 root rewrite an enrolled pod's
//     connect() to the agent's 127.0.0.1:15001 (::1) in that pod's netns; sockops re-keys the
//     original destination by {netns cookie, client ip, client port} for OriginalDst;
//   - inbound: sk_lookup, attached to each enrolled pod's netns, hands TCP for the pod's IPs to
//     the agent's :15008 (HBONE) or :15006 (plaintext) listener there, and drops when there is
//     none, so a dead agent fails closed.
//
// Only namespaces in the enrolled map are touched; the host namespace can never be enrolled.
// The C programs are in bpf/; bpf2go's output (amesh_bpfel.go/.o) is committed and `make
// generate` rebuilds it.
package redirect

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Mark is the SO_MARK the agent sets on its own sockets, for routing (replies of its listeners'
// connections go by the main table). The capture does not trust it: a pod with CAP_NET_RAW can
// set any mark. It skips only the sockets the agent registers (Redirector.AgentControl).
const Mark = 0x539

// TransparentMark marks the agent's connections to apps made from a client's IP; the app's
// replies inherit it and are routed back to the agent (see SetupTransparentRouting).
const TransparentMark = 0x53a

// ProbeSource is the address the node's own connections to a pod's probe ports leave from
// (the one Istio ambient SNATs kubelet probes to): connect4 binds them to it, and the pod's
// sk_lookup exempts exactly it from STRICT on exactly those ports. It is on the node's lo,
// added by Open.
var ProbeSource = netip.MustParseAddr("169.254.7.127")

// Ports of the agent's per-pod listeners that the programs steer to, as bpf/amesh.h defines
// them; its third, HBONE's, is tunnel.HBONEPort (an agent test checks all three against the
// header).
const (
	OutboundPort  = 15001
	PlaintextPort = 15006
)

// Config configures a Redirector.
type Config struct {
	// PinDir is this agent's bpffs directory (e.g. /sys/fs/bpf/amesh/<node>); its parent must be
	// on a bpffs.
	PinDir string
	// CgroupPath is the cgroup v2 root the connect programs attach to; found when empty.
	CgroupPath string
	// Logger; discarded when nil.
	Logger *slog.Logger
}

// HeartbeatTTL is how long after the agent's last Heartbeat the kernel short-circuit stays in
// use (HEARTBEAT_TTL_NS in bpf/amesh.h).
const HeartbeatTTL = time.Second

// Pod is an enrolled pod network namespace.
type Pod struct {
	Cookie uint64       // the netns cookie (SO_NETNS_COOKIE)
	Netns  string       // the netns path it was enrolled by; empty for a pod re-adopted from pins (bpffs holds no paths: the agent matches cookies against its state view)
	IPs    []netip.Addr // the pod's own addresses: never redirected, and keys of its listeners
}

// Kind is a kind of per-pod inbound listener.
type Kind uint32

// Listener kinds; the values are the C enum listener_kind.
const (
	KindHBONE     Kind = 0 // :15008, HBONE from other agents
	KindPlaintext Kind = 1 // :15006, anything else (served only where the pod is PERMISSIVE)
)

// String names the kind in logs.
func (k Kind) String() string {
	if k == KindHBONE {
		return "hbone"
	}
	return "plaintext"
}

// statNames name the C enum stat, in order.
var statNames = []string{
	"connect4_redirected",
	"connect6_redirected",
	"connect_skipped_agent",
	"connect_skipped_local",
	"sockops_rekeyed",
	"lookup_assigned",
	"lookup_dropped_no_listener",
	"lookup_dropped_assign",
	"lookup_passthrough",
	"getpeername_restored",
	"lookup_passed_local",
	"connect_kernel_path",
	"events_dropped",
	"lookup_probe",
	"connect_probe_source",
}

// PinnedPods returns how many pods the agent whose pins are in pinDir has enrolled, read from
// the pins alone (each enrolled pod's sk_lookup link is pinned under pods/<netns cookie> once
// its steering is in place): a benchmark can wait for enrolment without asking the agent, whose
// memory an API call would change.
func PinnedPods(pinDir string) (int, error) {
	entries, err := os.ReadDir(filepath.Join(pinDir, podsDir))
	if err != nil {
		return 0, fmt.Errorf("redirect: pinned pods: %w", err)
	}
	n := 0
	for _, e := range entries {
		if _, err := strconv.ParseUint(e.Name(), 10, 64); err != nil || !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(pinDir, podsDir, e.Name(), lookupPin)); err == nil {
			n++
		}
	}
	return n, nil
}

// The pin layout under a pin dir: pods/<netns cookie>/sk_lookup for each enrolled pod.
const (
	podsDir   = "pods"
	lookupPin = "sk_lookup"
)
