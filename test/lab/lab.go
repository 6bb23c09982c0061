package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"

	"github.com/amesh-dev/amesh/netns"
)

// Config describes a lab. The zero value of every field but Nodes has a default.
type Config struct {
	// Prefix starts the name of everything the lab creates: namespaces, pin directories, Dir.
	// Default: DefaultPrefixBase and six random hex digits. At most 48 of [a-z0-9-].
	Prefix string
	// TrustDomain is the state file's trust domain. Default "cluster.local".
	TrustDomain string
	// Nodes are the lab's nodes, at least one; node i gets 10.250.0.<i+1> and pods 10.20.<i+1>.0/24.
	Nodes []NodeSpec
}

// NodeSpec describes a node and the pods on it.
type NodeSpec struct {
	Name string // a DNS label, unique in the lab, not "sw" (the switch's namespace)
	Pods []PodSpec
}

// PodSpec describes a pod: its namespace and the workload the state file lists for it.
type PodSpec struct {
	Name           string // a DNS label, unique in the lab (not only in its namespace)
	Namespace      string // default "default"
	ServiceAccount string // default "default"
	Mode           string // "ambient" (default) or "none"
	InboundMode    string // "strict" (default) or "permissive"
	Labels         map[string]string
	ProbePorts     []uint16 // the kubelet probe ports the state file lists for it
	Waypoint       string   // the waypoint the state file names for it, if any
}

// Lab is a cluster of namespaces built by New. Its exported fields are set by New and must not
// be changed; its methods are safe for concurrent use.
type Lab struct {
	Prefix      string
	TrustDomain string
	// Dir is a directory of the lab's own, removed by Close: state files, CA, logs.
	Dir string
	// SwitchNetns is the path of the underlay's namespace, whose bridge is br0.
	SwitchNetns string
	Nodes       []*Node

	mu       sync.Mutex
	closed   bool
	created  []string // names of the namespaces New created, in order
	pinDirs  []string // pin directories of the nodes whose namespace New created
	procs    map[*Proc]struct{}
	captures map[*Capture]struct{}
	logSeq   int
}

// Node is a node of the lab: a namespace on the underlay, routing for its pods.
type Node struct {
	Name  string
	Netns string     // /run/netns/<prefix>-<name>
	IP    netip.Addr // 10.250.0.<i+1>, on eth0
	// PodCIDRs are its pods' ranges, routed to it by the other nodes: 10.20.<i+1>.0/24, and
	// 10.21.<i+1>.0/24 when it has more pods than the first holds.
	PodCIDRs []netip.Prefix
	// PinDir is where the node's agent should pin its eBPF objects. The lab does not create it;
	// Close removes it.
	PinDir string
	Pods   []*Pod
}

// Pod is a pod of the lab: a namespace with a veth (eth0) to its node.
type Pod struct {
	Name           string
	Namespace      string
	ServiceAccount string
	Node           *Node
	Netns          string     // /run/netns/<prefix>-<node>-<name>
	IP             netip.Addr // 10.20.<node index+1>.<pod index+2>/32 on eth0 (see the package doc past 253)
	Spec           PodSpec    // as configured, defaults applied

	hostVeth string // the node's end of the pod's veth
}

// New builds the lab cfg describes. It needs root and Linux. When it fails it removes
// everything it had made; when it succeeds the caller must Close the lab.
func New(ctx context.Context, cfg Config) (*Lab, error) {
	if err := checkPlatform(); err != nil {
		return nil, err
	}
	l, err := plan(cfg)
	if err != nil {
		return nil, err
	}
	l.procs = map[*Proc]struct{}{}
	l.captures = map[*Capture]struct{}{}
	if l.Dir, err = os.MkdirTemp("", l.Prefix+"-"); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if err := l.build(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("lab: build %s: %w", l.Prefix, err), l.Close())
	}
	return l, nil
}

// Node returns the node called name, or nil.
func (l *Lab) Node(name string) *Node {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Pod returns the pod called name, or nil.
func (l *Lab) Pod(name string) *Pod {
	for _, n := range l.Nodes {
		for _, p := range n.Pods {
			if p.Name == name {
				return p
			}
		}
	}
	return nil
}

// Pods returns every pod of the lab, node by node.
func (l *Lab) Pods() []*Pod {
	var out []*Pod
	for _, n := range l.Nodes {
		out = append(out, n.Pods...)
	}
	return out
}

// Close tears the lab down: it stops its captures, kills the processes Start started and any
// other process left in its namespaces, deletes the namespaces (and with them every link), the
// nodes' pin directories and Dir. Calls after the first do nothing and return nil.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	caps, procs := l.captures, l.procs
	l.captures, l.procs = nil, nil
	l.mu.Unlock()

	var errs []error
	for c := range caps {
		c.Stop()
	}
	for p := range procs {
		if err := p.Kill(); err != nil {
			errs = append(errs, err)
		}
		<-p.done
	}
	// Pods first, the switch last: the reverse of creation.
	for i := len(l.created) - 1; i >= 0; i-- {
		name := l.created[i]
		killNetnsPids(name)
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("lab: delete netns %s: %w: %s", name, err, strings.TrimSpace(string(out))))
		}
	}
	for _, d := range l.pinDirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("lab: remove pins: %w", err))
		}
	}
	if l.Dir != "" {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("lab: remove dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// build creates the namespaces, links, addresses, routes and sysctls of the package doc.
func (l *Lab) build(ctx context.Context) error {
	sw := nsName(l.SwitchNetns)
	if err := l.addNetns(ctx, sw); err != nil {
		return err
	}
	if err := runIP(ctx,
		[]string{"-n", sw, "link", "set", "lo", "up"},
		[]string{"-n", sw, "link", "add", bridgeName, "type", "bridge"},
		[]string{"-n", sw, "link", "set", bridgeName, "up"},
	); err != nil {
		return err
	}
	for i, n := range l.Nodes {
		if err := l.buildNode(ctx, i, n); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}

func (l *Lab) buildNode(ctx context.Context, i int, n *Node) error {
	sw, node := nsName(l.SwitchNetns), nsName(n.Netns)
	if err := l.addNetns(ctx, node); err != nil {
		return err
	}
	l.pinDirs = append(l.pinDirs, n.PinDir)
	port := switchPort(i)
	cmds := [][]string{
		// Created in the switch's namespace, its peer straight in the node's: never in ours.
		{"-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", node},
		{"-n", sw, "link", "set", port, "master", bridgeName, "up"},
		{"-n", node, "link", "set", "lo", "up"},
		{"-n", node, "addr", "add", netip.PrefixFrom(n.IP, underlay.Bits()).String(), "dev", "eth0"},
		{"-n", node, "link", "set", "eth0", "up"},
		// Proxy ARP answers for 169.254.1.1 only if the node routes it out of another device than
		// the pod's veth; Calico's hosts have a default route for that. Nothing is sent on it.
		{"-n", node, "route", "add", gatewayIP.String() + "/32", "dev", "eth0", "scope", "link"},
	}
	for k, other := range l.Nodes {
		if k != i {
			for _, cidr := range other.PodCIDRs {
				cmds = append(cmds, []string{"-n", node, "route", "add", cidr.String(), "via", other.IP.String(), "dev", "eth0"})
			}
		}
	}
	if err := runIP(ctx, cmds...); err != nil {
		return err
	}
	if err := sysctl(n.Netns, "net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	for _, p := range n.Pods {
		if err := l.buildPod(ctx, n, p); err != nil {
			return fmt.Errorf("pod %s: %w", p.Name, err)
		}
	}
	return nil
}

func (l *Lab) buildPod(ctx context.Context, n *Node, p *Pod) error {
	node, pod := nsName(n.Netns), nsName(p.Netns)
	if err := l.addNetns(ctx, pod); err != nil {
		return err
	}
	gw := gatewayIP.String()
	if err := runIP(ctx,
		[]string{"-n", node, "link", "add", p.hostVeth, "type", "veth", "peer", "name", "eth0", "netns", pod},
		[]string{"-n", pod, "link", "set", "lo", "up"},
		[]string{"-n", pod, "addr", "add", p.IP.String() + "/32", "dev", "eth0"},
		[]string{"-n", pod, "link", "set", "eth0", "up"},
		[]string{"-n", pod, "route", "add", gw, "dev", "eth0", "scope", "link"},
		[]string{"-n", pod, "route", "add", "default", "via", gw, "dev", "eth0"},
	); err != nil {
		return err
	}
	// Set before the veth comes up, so the pod's first ARP request is answered at once.
	if err := sysctl(n.Netns, "net/ipv4/conf/"+p.hostVeth+"/proxy_arp", "1"); err != nil {
		return err
	}
	if err := sysctl(n.Netns, "net/ipv4/neigh/"+p.hostVeth+"/proxy_delay", "0"); err != nil {
		return err
	}
	return runIP(ctx,
		[]string{"-n", node, "link", "set", p.hostVeth, "up"},
		[]string{"-n", node, "route", "add", p.IP.String() + "/32", "dev", p.hostVeth, "scope", "link"},
	)
}

// addNetns creates the named namespace and records it for Close.
func (l *Lab) addNetns(ctx context.Context, name string) error {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s (a lab with prefix %s left over? `make clean-lab` removes it)",
			name, err, strings.TrimSpace(string(out)), l.Prefix)
	}
	l.created = append(l.created, name)
	return nil
}

// runIP runs `ip` once per argument list, stopping at the first failure.
func runIP(ctx context.Context, cmds ...[]string) error {
	for _, args := range cmds {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// sysctl writes value to /proc/sys/<key> inside the netns at path: /proc/sys/net is the
// namespace of the thread that opens it.
func sysctl(path, key, value string) error {
	err := netns.Do(path, func() error {
		f, err := os.OpenFile("/proc/sys/"+key, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(value)
		return errors.Join(err, f.Close())
	})
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %w", strings.ReplaceAll(key, "/", "."), value, path, err)
	}
	return nil
}
