package netns

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Scanner finds the network namespace that holds an IP, for pods the agent has no CNI report of
// (running before it started, or in a namespace labelled later): it looks at the runtime's
// pinned namespaces (/run/netns, where containerd, CRI-O and `ip netns` pin them) and at every
// process's /proc/<pid>/ns/net, never at the host's or the caller's own. The zero value is
// ready; it is safe for concurrent use.
type Scanner struct {
	mu      sync.Mutex
	scanned time.Time
	byIP    map[netip.Addr]string
}

// Rescan bounds how often a miss rescans: a scan enters every candidate namespace.
const Rescan = 500 * time.Millisecond

// Find returns a path of the namespace that holds one of ips, or "" when none is known: it
// answers from its last scan and rescans on a miss at most once per Rescan.
func (s *Scanner) Find(ips []netip.Addr) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lookup := func() string {
		for _, ip := range ips {
			if p, ok := s.byIP[ip]; ok {
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
	s.byIP = scan()
	return lookup()
}

type inode struct{ dev, ino uint64 }

func nsInode(path string) (inode, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return inode{}, false
	}
	return inode{uint64(st.Dev), st.Ino}, true
}

// scan maps every IP found in a candidate network namespace to a path of that namespace.
func scan() map[netip.Addr]string {
	skip := map[inode]bool{}
	for _, p := range []string{"/proc/1/ns/net", "/proc/self/ns/net"} {
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
	out := map[netip.Addr]string{}
	for _, p := range paths {
		ips, err := Addrs(p)
		if err != nil {
			continue // gone meanwhile, or not enterable: not a candidate
		}
		for _, ip := range ips {
			if !ip.IsLinkLocalUnicast() {
				out[ip] = p
			}
		}
	}
	return out
}
