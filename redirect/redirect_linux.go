package redirect

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"github.com/amesh-dev/amesh/netns"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Redirector owns amesh's eBPF programs on one node: the cgroup-root capture of enrolled pods'
// connect(), the sockops re-keying of original destinations, and one sk_lookup link per
// enrolled pod netns. Programs, maps and links are pinned under Config.PinDir, so redirection
// (and so fail-closed behaviour) outlives the agent; Open re-adopts what is pinned.
//
// Invariants: a netns cookie is in the enrolled map only while its sk_lookup link is pinned;
// pods holds exactly the pinned pods/<cookie> entries.
type Redirector struct {
	cfg  Config
	log  *slog.Logger
	objs ameshObjects

	mu    sync.Mutex
	cgrp  []link.Link
	pods  map[uint64]*podLinks
	close sync.Once
}

type podLinks struct {
	pod    Pod
	lookup link.Link
}

// Open checks the kernel, loads the programs (reusing pinned maps), attaches or re-adopts the
// cgroup-root programs, and re-adopts every pinned pod.
func Open(cfg Config) (*Redirector, error) {
	if cfg.PinDir == "" {
		return nil, errors.New("redirect: no pin directory")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := Probe(); err != nil {
		return nil, err
	}
	if err := checkBPFFS(filepath.Dir(cfg.PinDir)); err != nil {
		return nil, err
	}
	if cfg.CgroupPath == "" {
		p, err := CgroupV2Root()
		if err != nil {
			return nil, err
		}
		cfg.CgroupPath = p
	}
	if err := os.MkdirAll(filepath.Join(cfg.PinDir, podsDir), 0o700); err != nil {
		return nil, fmt.Errorf("redirect: pin directory: %w", err)
	}
	// The layout first: nothing pinned is touched, or re-pointed at new programs, unless this
	// agent knows what the pins mean.
	layout, err := checkLayout(cfg.PinDir)
	if err != nil {
		return nil, err
	}
	r := &Redirector{cfg: cfg, log: log, pods: map[uint64]*podLinks{}}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}}
	if err := loadAmeshObjects(&r.objs, opts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("redirect: the pinned maps in %s (layout %d) do not match this agent's (layout %d) though the layouts say they should: a bug; "+
				"`amesh-agent --uninstall` clears them, but takes every pod of the node out of the mesh until an agent enrolls them again: %w", cfg.PinDir, layout, LayoutVersion, err)
		}
		return nil, fmt.Errorf("redirect: load eBPF programs: %w", err)
	}
	if err := writeLayout(cfg.PinDir); err != nil {
		r.objs.Close()
		return nil, err
	}
	for _, a := range []struct {
		name   string
		attach ebpf.AttachType
		prog   *ebpf.Program
	}{
		{"connect4", ebpf.AttachCGroupInet4Connect, r.objs.AmeshConnect4},
		{"connect6", ebpf.AttachCGroupInet6Connect, r.objs.AmeshConnect6},
		{"sockops", ebpf.AttachCGroupSockOps, r.objs.AmeshSockops},
		{"getpeername4", ebpf.AttachCgroupInet4GetPeername, r.objs.AmeshGetpeername4},
		{"getpeername6", ebpf.AttachCgroupInet6GetPeername, r.objs.AmeshGetpeername6},
	} {
		l, err := r.cgroupLink(a.name, a.attach, a.prog)
		if err != nil {
			r.Close()
			return nil, err
		}
		r.cgrp = append(r.cgrp, l)
	}
	if err := r.setupProbeSource(); err != nil {
		r.Close()
		return nil, err
	}
	if err := r.adoptPods(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

const linkPrefix = "link_"

// cgroupLink re-adopts the pinned link for name (pointing it at the freshly loaded program, so
// an upgraded agent never runs its predecessor's code) or attaches and pins a new one.
func (r *Redirector) cgroupLink(name string, attach ebpf.AttachType, prog *ebpf.Program) (link.Link, error) {
	pin := filepath.Join(r.cfg.PinDir, linkPrefix+name)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, fmt.Errorf("redirect: update pinned %s link: %w", name, err)
		}
		r.log.Info("re-adopted pinned cgroup program", "program", name, "pin", pin)
		return l, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("redirect: load pinned %s link: %w", name, err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: r.cfg.CgroupPath, Attach: attach, Program: prog})
	if err != nil {
		return nil, fmt.Errorf("redirect: attach %s at cgroup %s: %w", name, r.cfg.CgroupPath, err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		// Without a pinnable bpf_link the program would detach when the agent dies: fail open.
		return nil, fmt.Errorf("redirect: pin %s link (kernel needs bpf_link for cgroups, 5.7+): %w", name, err)
	}
	return l, nil
}

// adoptPods re-opens the sk_lookup links of pods enrolled by an earlier run.
func (r *Redirector) adoptPods() error {
	entries, err := os.ReadDir(filepath.Join(r.cfg.PinDir, podsDir))
	if err != nil {
		return fmt.Errorf("redirect: list pinned pods: %w", err)
	}
	for _, e := range entries {
		cookie, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil {
			continue
		}
		dir := filepath.Join(r.cfg.PinDir, podsDir, e.Name())
		drop := func() {
			os.RemoveAll(dir)
			r.objs.Enrolled.Delete(cookie)
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, lookupPin), nil)
		if err != nil {
			r.log.Warn("dropping unreadable pinned pod", "cookie", cookie, "err", err)
			drop()
			continue
		}
		if err := l.Update(r.objs.AmeshSkLookup); errors.Is(err, unix.ENOLINK) {
			// The kernel severed the link: the pod's namespace was torn down while no agent
			// ran. Nothing is left to steer; one gone pod must not keep the agent from starting.
			l.Close()
			r.log.Info("dropping pinned pod whose network namespace is gone", "cookie", cookie)
			drop()
			continue
		} else if err != nil {
			l.Close()
			return fmt.Errorf("redirect: update pinned sk_lookup of netns %d: %w", cookie, err)
		}
		var ep ameshEnrolledPod
		pod := Pod{Cookie: cookie}
		if err := r.objs.Enrolled.Lookup(cookie, &ep); err == nil {
			pod.IPs = ep.ips()
		}
		r.pods[cookie] = &podLinks{pod: pod, lookup: l}
	}
	return nil
}

// Enroll puts the pod whose network namespace is at netnsPath in the mesh: its TCP inbound goes
// to the listeners registered for its IPs (sk_lookup) and its connect() to the agent's :15001
// in its netns. Enrolling an enrolled pod updates its IPs. The host namespace is refused.
func (r *Redirector) Enroll(netnsPath string, ips []netip.Addr) (Pod, error) {
	cookie, err := netns.Cookie(netnsPath)
	if err != nil {
		return Pod{}, err
	}
	hosts, err := hostNetnsCookies()
	if err != nil {
		return Pod{}, err
	}
	if slices.Contains(hosts, cookie) {
		return Pod{}, fmt.Errorf("redirect: enroll %s: that is the host (or the agent's own) network namespace: refusing", netnsPath)
	}
	pod := Pod{Cookie: cookie, Netns: netnsPath, IPs: ips}
	ep, err := enrolledValue(ips)
	if err != nil {
		return Pod{}, fmt.Errorf("redirect: enroll %s: %w", netnsPath, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pl, ok := r.pods[cookie]
	if !ok {
		dir := filepath.Join(r.cfg.PinDir, podsDir, strconv.FormatUint(cookie, 10))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return Pod{}, fmt.Errorf("redirect: enroll %s: %w", netnsPath, err)
		}
		l, err := attachLookup(netnsPath, r.objs.AmeshSkLookup)
		if err != nil {
			os.RemoveAll(dir)
			return Pod{}, fmt.Errorf("redirect: enroll %s: %w", netnsPath, err)
		}
		if err := l.Pin(filepath.Join(dir, lookupPin)); err != nil {
			l.Close()
			os.RemoveAll(dir)
			return Pod{}, fmt.Errorf("redirect: enroll %s: pin sk_lookup link: %w", netnsPath, err)
		}
		pl = &podLinks{lookup: l}
		r.pods[cookie] = pl
	}
	pl.pod = pod
	if err := r.objs.Enrolled.Update(cookie, ep, ebpf.UpdateAny); err != nil {
		return Pod{}, fmt.Errorf("redirect: enroll %s: update enrolled map: %w", netnsPath, err)
	}
	return pod, nil
}

func attachLookup(netnsPath string, prog *ebpf.Program) (link.Link, error) {
	f, err := os.Open(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	defer f.Close()
	l, err := link.AttachNetNs(int(f.Fd()), prog)
	if err != nil {
		return nil, fmt.Errorf("attach sk_lookup: %w", err)
	}
	return l, nil
}

// Unenroll takes a pod out of the mesh: capture stops first, then inbound steering.
func (r *Redirector) Unenroll(cookie uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	if err := r.objs.Enrolled.Delete(cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("delete from enrolled map: %w", err))
	}
	if pl, ok := r.pods[cookie]; ok {
		for _, ip := range pl.pod.IPs {
			for _, k := range []Kind{KindHBONE, KindPlaintext} {
				r.objs.Listeners.Delete(listenerKey(ip, k))
			}
			if err := r.SetProbeExemptions(ip, nil); err != nil {
				errs = append(errs, err)
			}
		}
		if err := pl.lookup.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin sk_lookup: %w", err))
		}
		pl.lookup.Close()
		delete(r.pods, cookie)
	}
	if err := os.RemoveAll(filepath.Join(r.cfg.PinDir, podsDir, strconv.FormatUint(cookie, 10))); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redirect: unenroll netns %d: %w", cookie, err)
	}
	return nil
}

// Pods returns the enrolled pods (including those re-adopted from pins).
func (r *Redirector) Pods() []Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Pod, 0, len(r.pods))
	for _, pl := range r.pods {
		out = append(out, pl.pod)
	}
	return out
}

// RegisterListener makes l the listener that inbound TCP for ip of kind goes to. l must be a
// listener opened by ListenTCP (no MPTCP: a SOCKHASH refuses MPTCP sockets).
func (r *Redirector) RegisterListener(ip netip.Addr, kind Kind, l *net.TCPListener) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return fmt.Errorf("redirect: register listener: %w", err)
	}
	var uerr error
	err = rc.Control(func(fd uintptr) {
		uerr = r.objs.Listeners.Update(listenerKey(ip, kind), uint64(fd), ebpf.UpdateAny)
	})
	if err == nil {
		err = uerr
	}
	if errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("redirect: register %s listener for %s: the socket is not plain TCP (an MPTCP listener? use ListenTCP): %w", kind, ip, err)
	}
	if err != nil {
		return fmt.Errorf("redirect: register %s listener for %s: %w", kind, ip, err)
	}
	return nil
}

// OriginalDst returns (and forgets) the destination a redirected connection asked for, given
// the client's netns cookie and the remote address the agent's :15001 listener saw.
func (r *Redirector) OriginalDst(netnsCookie uint64, client netip.AddrPort) (netip.AddrPort, error) {
	k := ameshTupleKey{Netns: netnsCookie, Ip: client.Addr().As16(), Port: client.Port()}
	var od ameshOrigDst
	if err := r.objs.OrigByTuple.LookupAndDelete(&k, &od); err != nil {
		return netip.AddrPort{}, fmt.Errorf("redirect: no original destination for %s in netns %d: %w", client, netnsCookie, err)
	}
	ip := netip.AddrFrom16(od.Ip)
	if od.Family == unix.AF_INET {
		ip = ip.Unmap()
	}
	port := od.Port>>8 | od.Port<<8 // network byte order, as connect() had it
	return netip.AddrPortFrom(ip, port), nil
}

// allowPassthrough lets the connection src → dst (the agent's own, to an app in an enrolled
// pod) past sk_lookup; the returned func withdraws it once the connection is established.
func (r *Redirector) allowPassthrough(src, dst netip.AddrPort) (func(), error) {
	k := ameshPassKey{Src: src.Addr().As16(), Dst: dst.Addr().As16(), Sport: src.Port(), Dport: dst.Port()}
	if err := r.objs.Passthrough.Update(&k, uint8(1), ebpf.UpdateAny); err != nil {
		return nil, fmt.Errorf("redirect: allow passthrough %s -> %s: %w", src, dst, err)
	}
	return func() { r.objs.Passthrough.Delete(&k) }, nil
}

// Stats returns the programs' counters, summed over CPUs.
func (r *Redirector) Stats() (map[string]uint64, error) {
	out := map[string]uint64{}
	for i, name := range statNames {
		var per []uint64
		if err := r.objs.Stats.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("redirect: read stats: %w", err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		out[name] = sum
	}
	return out, nil
}

// Close releases this process's handles. Everything pinned stays in force: enrolled pods keep
// failing closed while no agent runs, and the next Open re-adopts them.
func (r *Redirector) Close() error {
	r.close.Do(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, l := range r.cgrp {
			l.Close()
		}
		for _, pl := range r.pods {
			pl.lookup.Close()
		}
		r.objs.Close()
	})
	return nil
}

// Uninstall removes everything: cgroup programs, every pod's sk_lookup, maps and pins.
// Enrolled pods go back to plain networking.
func (r *Redirector) Uninstall() error {
	var errs []error
	r.mu.Lock()
	for cookie := range r.pods {
		r.mu.Unlock()
		if err := r.Unenroll(cookie); err != nil {
			errs = append(errs, err)
		}
		r.mu.Lock()
	}
	for _, l := range r.cgrp {
		if err := l.Unpin(); err != nil {
			errs = append(errs, err)
		}
	}
	r.mu.Unlock()
	for _, m := range []*ebpf.Map{r.objs.Enrolled, r.objs.Listeners, r.objs.OrigByCookie, r.objs.OrigByTuple, r.objs.Passthrough, r.objs.Stats,
		r.objs.LocalVerdicts, r.objs.Heartbeat, r.objs.KernelSocks, r.objs.Events, r.objs.ProbeExempt, r.objs.ProbeDsts,
		r.objs.NodeNetns, r.objs.AgentSocks} {
		if err := m.Unpin(); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, removeProbeSource())
	r.Close()
	if err := os.RemoveAll(r.cfg.PinDir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redirect: uninstall: %w", err)
	}
	return nil
}

// Probe checks that the kernel has every eBPF feature amesh needs, naming the first one missing.
func Probe() error {
	for _, p := range []struct {
		name string
		err  error
	}{
		{"BPF_PROG_TYPE_CGROUP_SOCK_ADDR (cgroup/connect4, connect6)", features.HaveProgramType(ebpf.CGroupSockAddr)},
		{"BPF_PROG_TYPE_SOCK_OPS", features.HaveProgramType(ebpf.SockOps)},
		{"BPF_PROG_TYPE_SK_LOOKUP (Linux 5.9+)", features.HaveProgramType(ebpf.SkLookup)},
		{"BPF_MAP_TYPE_SOCKHASH", features.HaveMapType(ebpf.SockHash)},
		{"BPF_MAP_TYPE_LRU_HASH", features.HaveMapType(ebpf.LRUHash)},
		{"BPF_MAP_TYPE_RINGBUF (Linux 5.8+)", features.HaveMapType(ebpf.RingBuf)},
	} {
		if p.err != nil {
			return fmt.Errorf("redirect: kernel lacks %s, which amesh needs: %w", p.name, p.err)
		}
	}
	return nil
}

// checkBPFFS checks that dir is on a bpffs, or, while it does not exist, the deepest of its
// parents that does: on a fresh node /sys/fs/bpf/amesh is made by the first agent (New's
// MkdirAll), so only the mount it would be made in can be checked.
func checkBPFFS(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		var st unix.Statfs_t
		err := unix.Statfs(d, &st)
		if errors.Is(err, unix.ENOENT) && d != filepath.Dir(d) {
			continue
		}
		if err != nil {
			return fmt.Errorf("redirect: %s: %w (is bpffs mounted? `mount -t bpf bpf /sys/fs/bpf`)", d, err)
		}
		if st.Type != unix.BPF_FS_MAGIC {
			return fmt.Errorf("redirect: %s is not on a bpffs: pins would not survive the agent (`mount -t bpf bpf /sys/fs/bpf`)", dir)
		}
		return nil
	}
}

func listenerKey(ip netip.Addr, kind Kind) *ameshListenerKey {
	return &ameshListenerKey{Ip: ip.As16(), Kind: uint32(kind)}
}

func enrolledValue(ips []netip.Addr) (*ameshEnrolledPod, error) {
	var ep ameshEnrolledPod
	for _, ip := range ips {
		switch {
		case ip.Is4() && ep.HasIp4 == 0:
			ep.Ip4, ep.HasIp4 = ip.As4(), 1
		case ip.Is6() && !ip.Is4In6() && ep.HasIp6 == 0:
			ep.Ip6, ep.HasIp6 = ip.As16(), 1
		default:
			return nil, fmt.Errorf("pod IPs %v: at most one IPv4 and one IPv6 address", ips)
		}
	}
	return &ep, nil
}

func (ep *ameshEnrolledPod) ips() []netip.Addr {
	var out []netip.Addr
	if ep.HasIp4 != 0 {
		out = append(out, netip.AddrFrom4(ep.Ip4))
	}
	if ep.HasIp6 != 0 {
		out = append(out, netip.AddrFrom16(ep.Ip6))
	}
	return out
}

// MapUsage returns how many entries the maps that fill with traffic hold, and how many they can:
// an operator's early warning (an LRU map that is full forgets its oldest entries).
func (r *Redirector) MapUsage() (entries, capacity map[string]int, err error) {
	entries, capacity = map[string]int{}, map[string]int{}
	for name, m := range map[string]*ebpf.Map{
		"enrolled": r.objs.Enrolled, "local_verdicts": r.objs.LocalVerdicts, "passthrough": r.objs.Passthrough,
		"kernel_socks": r.objs.KernelSocks, "agent_socks": r.objs.AgentSocks, "orig_by_cookie": r.objs.OrigByCookie,
		"orig_by_tuple": r.objs.OrigByTuple,
	} {
		n := 0
		key := make([]byte, m.KeySize())
		var prev any // nil: the first key
		for n < int(m.MaxEntries()) {
			next := make([]byte, m.KeySize())
			if err := m.NextKey(prev, &next); err != nil {
				if !errors.Is(err, ebpf.ErrKeyNotExist) {
					return nil, nil, fmt.Errorf("redirect: count %s: %w", name, err)
				}
				break
			}
			n++
			copy(key, next)
			prev = key
		}
		entries[name], capacity[name] = n, int(m.MaxEntries())
	}
	return entries, capacity, nil
}
