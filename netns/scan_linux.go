package netns

import (
	"cmp"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
)

// Scanner finds the network namespace that holds an IP, for pods the agent has no CNI report of
// (running before it started, or in a namespace labelled later): it looks at the runtime's
// pinned namespaces (/run/netns, where containerd, CRI-O and `ip netns` pin them) and at every
// process's /proc/<pid>/ns/net, never at the host's or the caller's own. The zero value is
// ready; it is safe for concurrent use.
//
// An IP may be held by more than one namespace of the machine: namespaces that are no pod of
// this node (a test's, a VM's, another lab node's, all numbered alike) reuse pod addresses.
// Of those, the ones attached to Home (a veth, netkit or ipvlan link whose other end is there,
// as every CNI plugin attaches a pod to its node) win; a choice that is still not one
// namespace finds none, since enrolling the wrong namespace would steer someone else's
// traffic.
type Scanner struct {
	// Home is the path of the namespace a pod's links lead to; empty: the caller's own
	// (/proc/self/ns/net), which for the agent is the node's.
	Home string

	mu      sync.Mutex
	scanned time.Time
	byIP    map[netip.Addr][]candidate
}

// candidate is a namespace holding an IP, and whether one of its links leads to Home.
type candidate struct {
	path     string
	attached bool
}

// Rescan bounds how often a miss rescans: a scan enters every candidate namespace.
const Rescan = 500 * time.Millisecond

// Find returns a path of the namespace that holds one of ips, or "" when none is known (or no
// one namespace is the answer): it answers from its last scan and rescans on a miss at most
// once per Rescan.
func (s *Scanner) Find(ips []netip.Addr) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lookup := func() string {
		for _, ip := range ips {
			if p := choose(s.byIP[ip]); p != "" {
				if _, err := os.Stat(p); err == nil {
					return p
				}
			}
		}
		return ""
	}
	if p := lookup(); p != "" {
		return p
	}
	if time.Since(s.scanned) < Rescan {
		return ""
	}
	s.scanned = time.Now()
	s.byIP = scan(cmp.Or(s.Home, "/proc/self/ns/net"))
	return lookup()
}

// Ambiguous returns the namespaces that, in the last scan, held one of ips when no one of them
// could be chosen (see Scanner): what an operator needs to see why a pod is not enrolled.
func (s *Scanner) Ambiguous(ips []netip.Addr) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ip := range ips {
		if cs := s.byIP[ip]; len(cs) > 1 && choose(cs) == "" {
			out := make([]string, len(cs))
			for i, c := range cs {
				out[i] = c.path
			}
			slices.Sort(out)
			return out
		}
	}
	return nil
}

// choose returns the one namespace of cs attached to Home, else the only one of cs, else "".
func choose(cs []candidate) string {
	if len(cs) == 1 {
		return cs[0].path
	}
	found := ""
	for _, c := range cs {
		if c.attached {
			if found != "" {
				return ""
			}
			found = c.path
		}
	}
	return found
}

type inode struct{ dev, ino uint64 }

func nsInode(path string) (inode, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return inode{}, false
	}
	return inode{uint64(st.Dev), st.Ino}, true
}

// scan maps every IP found in a candidate network namespace to the namespaces holding it.
func scan(home string) map[netip.Addr][]candidate {
	skip := map[inode]bool{}
	for _, p := range []string{"/proc/1/ns/net", "/proc/self/ns/net", home} {
		if ino, ok := nsInode(p); ok {
			skip[ino] = true
		}
	}
	paths := map[inode]string{}
	consider := func(p string) {
		if ino, ok := nsInode(p); ok && !skip[ino] {
			if _, seen := paths[ino]; !seen {
				paths[ino] = p
			}
		}
	}
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			consider(filepath.Join(dir, e.Name()))
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			consider(filepath.Join("/proc", e.Name(), "ns", "net"))
		}
	}
	homeNS, err := os.Open(home)
	if err != nil {
		homeNS = nil // no namespace is then attached: only unambiguous IPs are found
	} else {
		defer homeNS.Close()
	}
	out := map[netip.Addr][]candidate{}
	for _, p := range paths {
		var ips []netip.Addr
		attached := false
		err := Do(p, func() error {
			var err error
			if ips, err = localAddrs(); err != nil {
				return err
			}
			if homeNS != nil {
				attached = leadsTo(homeNS)
			}
			return nil
		})
		if err != nil {
			continue // gone meanwhile, or not enterable: not a candidate
		}
		for _, ip := range ips {
			if !ip.IsLinkLocalUnicast() {
				out[ip] = append(out[ip], candidate{path: p, attached: attached})
			}
		}
	}
	return out
}

// leadsTo reports whether a link of the calling thread's namespace has its other end (a veth's
// peer, an ipvlan's or macvlan's parent, a netkit's primary) in the namespace ns.
func leadsTo(ns *os.File) bool {
	links, err := netlink.LinkList() // also has the kernel number the namespaces these lead to
	if err != nil {
		return false
	}
	id, err := netlink.GetNetNsIdByFd(int(ns.Fd()))
	if err != nil || id < 0 {
		return false
	}
	for _, l := range links {
		if l.Attrs().NetNsID == id {
			return true
		}
	}
	return false
}
