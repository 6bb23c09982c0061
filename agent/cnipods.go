package agent

import (
	"net/netip"
	"slices"
	"sync"
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
