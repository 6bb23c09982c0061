package agent

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/amesh-dev/amesh/redirect"
)

// cniPod is what amesh-cni told the agent about a pod's sandbox.
type cniPod struct {
	uid, namespace, name string
	netns                string
	ips                  []netip.Addr
	deleted              bool // CNI DEL came: never enroll it again unless a new ADD comes
}

// maxCNIPods bounds the registry; beyond it the oldest deleted entries go first.
const maxCNIPods = 1 << 14

// cniRegistry holds the pods amesh-cni reported, by UID. Only this node's pods are ever in it.
type cniRegistry struct {
	mu      sync.Mutex
	byUID   map[string]*cniPod
	order   []string // UIDs, oldest first
	changed chan struct{}
}

func (r *cniRegistry) init() {
	r.byUID = map[string]*cniPod{}
	r.changed = make(chan struct{}, 1)
}

func (r *cniRegistry) notify() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *cniRegistry) add(p cniPod) {
	r.mu.Lock()
	if _, ok := r.byUID[p.uid]; !ok {
		r.order = append(r.order, p.uid)
	}
	r.byUID[p.uid] = &p
	for len(r.order) > maxCNIPods {
		// Drop the oldest entry, preferring deleted ones (a live pod's netns is also found by
		// scanning, so losing it costs a scan, never a leak).
		i := slices.IndexFunc(r.order, func(uid string) bool { return r.byUID[uid].deleted })
		if i < 0 {
			i = 0
		}
		delete(r.byUID, r.order[i])
		r.order = slices.Delete(r.order, i, i+1)
	}
	r.mu.Unlock()
	r.notify()
}

func (r *cniRegistry) del(uid string) {
	r.mu.Lock()
	if p, ok := r.byUID[uid]; ok {
		p.deleted = true
	} else {
		r.byUID[uid] = &cniPod{uid: uid, deleted: true}
		r.order = append(r.order, uid)
	}
	r.mu.Unlock()
	r.notify()
}

func (r *cniRegistry) lookup(uid string) (cniPod, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.byUID[uid]
	if !ok {
		return cniPod{}, false
	}
	return *p, true
}

// ips returns the IPs of the pods that have not been deleted, for kube.Source.PodIPs.
func (r *cniRegistry) ips() map[string][]netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]netip.Addr, len(r.byUID))
	for uid, p := range r.byUID {
		if !p.deleted && len(p.ips) > 0 {
			out[uid] = slices.Clone(p.ips)
		}
	}
	return out
}

// netnsScanner finds the network namespace that holds an IP, for pods the agent has no CNI
// report of (running before it started, or in a namespace labelled later): it looks at the
// runtime's pinned namespaces (/run/netns, where containerd, CRI-O and `ip netns` pin them) and
// at every process's /proc/<pid>/ns/net, never at the host's or the agent's own.
type netnsScanner struct {
	mu      sync.Mutex
	scanned time.Time
	byIP    map[netip.Addr]string
}

// netnsRescan bounds how often a miss rescans.
const netnsRescan = 500 * time.Millisecond

func (s *netnsScanner) find(ips []netip.Addr) string {
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
	if time.Since(s.scanned) < netnsRescan {
		return ""
	}
	s.scanned = time.Now()
	s.byIP = scanNetns()
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

// scanNetns maps every IP found in a candidate network namespace to a path of that namespace.
func scanNetns() map[netip.Addr]string {
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
		var addrs []net.Addr
		if err := redirect.InNetns(p, func() error {
			var err error
			addrs, err = net.InterfaceAddrs()
			return err
		}); err != nil {
			continue // gone meanwhile, or not enterable: not a candidate
		}
		for _, ip := range unicastAddrs(addrs) {
			if !ip.IsLinkLocalUnicast() {
				out[ip] = p
			}
		}
	}
	return out
}

// unicastAddrs returns the IPs of interface addresses, unmapped, without loopback ones.
func unicastAddrs(addrs []net.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && !ip.Unmap().IsLoopback() {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}
