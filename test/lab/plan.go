package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"regexp"
)

// Defaults and names. The prefix and the names derived from it are file names (under /run/netns,
// /sys/fs/bpf and the temp dir); interface names never carry them (see the package doc).
const (
	// DefaultPrefixBase starts every default prefix, and is what CleanupStale looks for by default.
	DefaultPrefixBase  = "amesh-lab-"
	defaultTrustDomain = "cluster.local"

	maxPrefix    = 48 // so that P-<node>-<pod> (two DNS labels) stays a valid file name
	maxNodes     = 254
	podsPerCIDR  = 253             // per /24 of a node: .2 to .254
	maxPods      = 2 * podsPerCIDR // per node: 10.20.<i+1>.2 to .254, then 10.21.<i+1>.2 to .254
	switchName   = "sw"
	bridgeName   = "br0"
	netnsDir     = "/run/netns"
	bpffsDir     = "/sys/fs/bpf"
	defaultNS    = "default"
	defaultSA    = "default"
	modeAmbient  = "ambient"
	modeNone     = "none"
	inStrict     = "strict"
	inPermissive = "permissive"
)

var (
	gatewayIP = netip.AddrFrom4([4]byte{169, 254, 1, 1}) // every pod's default gateway
	underlay  = netip.MustParsePrefix("10.250.0.0/24")   // the nodes, on the switch's bridge

	prefixRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	labelRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`) // an RFC 1123 label
)

func nodeIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 250, 0, byte(i + 1)}) }

// podCIDRs are node i's pod ranges: 10.20.<i+1>.0/24, and 10.21.<i+1>.0/24 for a node of more
// than podsPerCIDR pods (an enrolment curve of 500 pods on one node).
func podCIDRs(i, pods int) []netip.Prefix {
	cidrs := []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 20, byte(i + 1), 0}), 24)}
	if pods > podsPerCIDR {
		cidrs = append(cidrs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 21, byte(i + 1), 0}), 24))
	}
	return cidrs
}

func podIP(i, j int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 20 + byte(j/podsPerCIDR), byte(i + 1), byte(j%podsPerCIDR + 2)})
}

// Interface names, at most 15 characters (IFNAMSIZ-1), unique only within their namespace.
func switchPort(i int) string { return fmt.Sprintf("n%d", i+1) }
func hostVeth(j int) string   { return fmt.Sprintf("vpod%d", j+1) }

// randomPrefix returns DefaultPrefixBase and six random hex digits, the prefix of a Config that
// sets none.
func randomPrefix() string {
	b := make([]byte, 3)
	rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return DefaultPrefixBase + hex.EncodeToString(b)
}

func checkPrefix(p string) error {
	if len(p) > maxPrefix || !prefixRE.MatchString(p) {
		return fmt.Errorf("prefix %q: want at most %d of [a-z0-9-], starting with a letter or digit", p, maxPrefix)
	}
	return nil
}

// plan checks cfg, applies its defaults and lays out the lab it describes (names, addresses,
// namespace paths) without creating anything.
func plan(cfg Config) (*Lab, error) {
	l := &Lab{
		Prefix:      cfg.Prefix,
		TrustDomain: cfg.TrustDomain,
	}
	if l.Prefix == "" {
		l.Prefix = randomPrefix()
	}
	if l.TrustDomain == "" {
		l.TrustDomain = defaultTrustDomain
	}
	var errs []error
	if err := checkPrefix(l.Prefix); err != nil {
		errs = append(errs, err)
	}
	if len(cfg.Nodes) == 0 {
		errs = append(errs, errors.New("no nodes"))
	}
	if len(cfg.Nodes) > maxNodes {
		errs = append(errs, fmt.Errorf("%d nodes: at most %d fit the underlay %s", len(cfg.Nodes), maxNodes, underlay))
	}
	l.SwitchNetns = l.netnsPath(switchName)
	paths := map[string]string{l.SwitchNetns: "the switch"} // netns path -> what has it
	claim := func(path, what string) {
		if prev, ok := paths[path]; ok {
			errs = append(errs, fmt.Errorf("%s and %s would both be netns %s: rename one", prev, what, path))
			return
		}
		paths[path] = what
	}
	nodes, pods := map[string]bool{}, map[string]bool{}
	for i, ns := range cfg.Nodes {
		if !labelRE.MatchString(ns.Name) || len(ns.Name) > 63 {
			errs = append(errs, fmt.Errorf("node %d: name %q is not a DNS label", i, ns.Name))
		}
		if nodes[ns.Name] {
			errs = append(errs, fmt.Errorf("node %q: name used twice", ns.Name))
		}
		nodes[ns.Name] = true
		if len(ns.Pods) > maxPods {
			errs = append(errs, fmt.Errorf("node %q: %d pods, at most %d fit its two /24s", ns.Name, len(ns.Pods), maxPods))
		}
		n := &Node{
			Name:     ns.Name,
			Netns:    l.netnsPath(ns.Name),
			IP:       nodeIP(i),
			PodCIDRs: podCIDRs(i, len(ns.Pods)),
			PinDir:   filepath.Join(bpffsDir, l.Prefix+"-"+ns.Name),
		}
		claim(n.Netns, "node "+ns.Name)
		for j, ps := range ns.Pods {
			spec, err := podDefaults(ps)
			if err != nil {
				errs = append(errs, fmt.Errorf("node %q: pod %d: %w", ns.Name, j, err))
			}
			if pods[ps.Name] {
				errs = append(errs, fmt.Errorf("pod %q: name used twice (Lab.Pod finds pods by name)", ps.Name))
			}
			pods[ps.Name] = true
			p := &Pod{
				Name:           spec.Name,
				Namespace:      spec.Namespace,
				ServiceAccount: spec.ServiceAccount,
				Node:           n,
				Netns:          l.netnsPath(ns.Name + "-" + ps.Name),
				IP:             podIP(i, j),
				Spec:           spec,
				hostVeth:       hostVeth(j),
			}
			claim(p.Netns, "pod "+ps.Name)
			n.Pods = append(n.Pods, p)
		}
		l.Nodes = append(l.Nodes, n)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("lab: config: %w", err)
	}
	return l, nil
}

// podDefaults checks a pod's spec and fills in its defaults.
func podDefaults(ps PodSpec) (PodSpec, error) {
	ps.Labels = maps.Clone(ps.Labels)
	if ps.Namespace == "" {
		ps.Namespace = defaultNS
	}
	if ps.ServiceAccount == "" {
		ps.ServiceAccount = defaultSA
	}
	if ps.Mode == "" {
		ps.Mode = modeAmbient
	}
	if ps.InboundMode == "" {
		ps.InboundMode = inStrict
	}
	var errs []error
	for _, f := range []struct{ what, v string }{
		{"name", ps.Name}, {"namespace", ps.Namespace}, {"serviceAccount", ps.ServiceAccount},
	} {
		if !labelRE.MatchString(f.v) || len(f.v) > 63 {
			errs = append(errs, fmt.Errorf("%s %q is not a DNS label", f.what, f.v))
		}
	}
	if ps.Mode != modeAmbient && ps.Mode != modeNone {
		errs = append(errs, fmt.Errorf("mode %q: want %q or %q", ps.Mode, modeAmbient, modeNone))
	}
	if ps.InboundMode != inStrict && ps.InboundMode != inPermissive {
		errs = append(errs, fmt.Errorf("inboundMode %q: want %q or %q", ps.InboundMode, inStrict, inPermissive))
	}
	return ps, errors.Join(errs...)
}

func (l *Lab) netnsPath(suffix string) string { return filepath.Join(netnsDir, l.Prefix+"-"+suffix) }
