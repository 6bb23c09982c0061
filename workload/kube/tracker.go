package kube

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// view is how a tracker reads the cluster's objects: the informers' caches (or a test's maps).
// Keys are namespace/name.
type view interface {
	pod(key string) (*podInfo, bool)
	namespaceLabels(ns string) map[string]string
	service(key string) (*corev1.Service, bool)
	slicesOf(serviceKey string) []*discoveryv1.EndpointSlice
	policy(key string) (*unstructured.Unstructured, bool)
	// objects returns every object, for a full build.
	objects() Objects
}

// changes are the objects changed since the last build, by key: pods, services (a change of
// an EndpointSlice is its service's) and AuthorizationPolicies. full asks for a full build:
// a namespace's labels changed (every pod and service of it may read differently), or an
// HTTPRoute. cni: the pod IPs the CNI plugin reported may have changed (Source.Refresh): the
// pods whose IPs did are converted again.
type changes struct {
	pods, services, policies map[string]bool
	full, cni                bool
}

func newChanges() changes {
	return changes{pods: map[string]bool{}, services: map[string]bool{}, policies: map[string]bool{}}
}

func (c changes) empty() bool {
	return !c.full && !c.cni && len(c.pods)+len(c.services)+len(c.policies) == 0
}

// tracker keeps the State the feeder last built and derives the next one from the objects that
// changed (workload.State.Apply), converting only those, so that a change costs what it touches
// and not the cluster. The result is the State Spec and workload.NewState would build from all
// the objects: what the tracker cannot settle from the changed objects alone (two pods
// claiming one IP, a VIP that is a pod's IP, two nodes with one IP: conflicts Spec settles by
// looking at every object) makes Apply refuse the update, and the caller builds in full.
type tracker struct {
	td     spiffeid.TrustDomain
	rootNS string

	cur      *workload.State
	podUID   map[string]string        // pod key → the UID of its workload in cur
	nodePods map[string]int           // node → workloads of cur on it
	policies map[string]policy.Policy // by key, as converted for cur
	// The pods that claim an IP another (newer) pod holds in cur, both ways: when the holder
	// lets the IP go, the claimant must get it back, as a full build would give it.
	shadowOf   map[string][]netip.Addr // pod key → IPs it claims and does not hold
	shadowedBy map[netip.Addr][]string // IP → keys of the pods that claim it and do not hold it
}

// full builds the State from every object (Spec, then workload.NewState) and resets the
// tracker to it. problems are the objects not used as written.
func (t *tracker) full(v view) (*workload.State, []error, error) {
	objs := v.objects()
	spec, problems := Spec(t.td, t.rootNS, objs)
	st, err := workload.NewState(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("workload: kubernetes state: %w", err)
	}
	problems = append(problems, st.WaypointErrors()...)
	t.cur = st
	infos := objs.podInfos()
	t.podUID = make(map[string]string, len(infos))
	for _, pod := range infos {
		if uid := podUID(pod); st.WorkloadByUID(uid) != nil {
			t.podUID[pod.Namespace+"/"+pod.Name] = uid
		}
	}
	t.shadowOf, t.shadowedBy = map[string][]netip.Addr{}, map[netip.Addr][]string{}
	for _, pod := range infos {
		uid := podUID(pod)
		var lost []netip.Addr
		for _, ip := range podIPs(pod, objs.PodIPs[string(pod.UID)]) {
			if h := st.WorkloadByIP(ip); h == nil || h.UID != uid {
				lost = append(lost, ip)
			}
		}
		t.setShadows(pod.Namespace+"/"+pod.Name, lost)
	}
	t.nodePods = map[string]int{}
	for _, n := range st.Nodes() {
		t.nodePods[n.Name] = len(st.WorkloadsOnNode(n.Name))
	}
	t.policies = make(map[string]policy.Policy, len(st.PolicySet()))
	for _, p := range st.Policies() {
		t.policies[p.Key()] = p
	}
	return st, problems, nil
}

// podUID is the UID of pod's workload (podWorkload's rule).
func podUID(pod *podInfo) string { return cmp.Or(string(pod.UID), pod.Namespace+"/"+pod.Name) }

// apply derives the next State from t's and the objects ch names, as they are in v now. On an
// error (an update Apply refuses) t is unchanged in what matters: the caller builds in full,
// which resets it.
func (t *tracker) apply(v view, ch changes, podIPs map[string][]netip.Addr) (*workload.State, []error, error) {
	if ch.full || t.cur == nil {
		return nil, nil, fmt.Errorf("a full build is needed")
	}
	cur := t.cur
	u := workload.Update{Workloads: map[string]*workload.Workload{}, Services: map[string]*workload.Service{}}
	var problems []error
	// The changed pods, and every pod that claims an IP one of them holds, held or claims
	// (transitively): of two pods with one IP the newer keeps it (Spec's rule), which only
	// the claimants together can settle.
	claims := t.claimants(v, ch.pods, podIPs)
	order := slices.Collect(maps.Keys(claims))
	slices.SortFunc(order, func(a, b string) int { return newerFirst(claims[a].pod, claims[b].pod) })
	podUIDs := map[string]string{}       // what podUID becomes for the claimants ("" removed)
	shadows := map[string][]netip.Addr{} // what shadowOf becomes for them
	taken := map[netip.Addr]string{}     // IP → the claimant that keeps it
	for _, key := range order {
		c := claims[key]
		old := t.podUID[key]
		if c.ok {
			var errs []error
			c.w.IPs, shadows[key], errs = keepFreeIPs(key, c.w.IPs, taken)
			problems = append(problems, errs...)
			c.ok = len(c.w.IPs) > 0
		}
		if old != "" && (!c.ok || old != c.w.UID) {
			u.Workloads[old] = nil
		}
		podUIDs[key] = ""
		if c.ok {
			w := c.w
			u.Workloads[w.UID] = &w
			podUIDs[key] = w.UID
		}
	}
	delta, nodes, nodesChanged := t.nodes(cur, u)
	u.Nodes, u.SetNodes = nodes, nodesChanged
	for key := range ch.services {
		svc, exists := v.service(key)
		var s *workload.Service
		if exists {
			var errs []error
			// VIP conflicts are Apply's to find (taken empty): settled by a full build.
			s, errs = service(svc, v.namespaceLabels(svc.Namespace), v.slicesOf(key), nil)
			problems = append(problems, errs...)
		}
		if s == nil {
			if cur.Service(splitKey(key)) != nil {
				u.Services[key] = nil
			}
			continue
		}
		u.Services[key] = s
	}
	var pols map[string]policy.Policy
	if len(ch.policies) > 0 {
		pols = maps.Clone(t.policies)
		for key := range ch.policies {
			obj, exists := v.policy(key)
			if !exists {
				delete(pols, key)
				continue
			}
			p, err := Policy(obj)
			if err != nil {
				problems = append(problems, err)
			}
			pols[key] = p
		}
		u.Policies, u.SetPolicies = slices.Collect(maps.Values(pols)), true
	}
	next, err := cur.Apply(u)
	if err != nil {
		return nil, nil, err
	}
	// What the changed objects name that does not resolve (the full build reports every one).
	for uid, w := range u.Workloads {
		if w != nil {
			if _, err := next.WorkloadWaypoint(next.WorkloadByUID(uid)); err != nil {
				problems = append(problems, err)
			}
		}
	}
	for key, s := range u.Services {
		if s != nil {
			if _, err := next.ServiceWaypoint(next.Service(splitKey(key))); err != nil {
				problems = append(problems, err)
			}
		}
	}
	// Commit the tracker's view of next.
	for name, d := range delta {
		if t.nodePods[name] += d; t.nodePods[name] <= 0 {
			delete(t.nodePods, name)
		}
	}
	for key, uid := range podUIDs {
		if uid == "" {
			delete(t.podUID, key)
		} else {
			t.podUID[key] = uid
		}
		t.setShadows(key, shadows[key])
	}
	if pols != nil {
		t.policies = pols
	}
	t.cur = next
	return next, problems, nil
}

// nodes returns how u changes the number of workloads on each node it touches, and the node
// set after u with whether it differs from cur's: as Spec makes it, the nodes that have
// workloads, each with the host IP its pods report (the first known).
func (t *tracker) nodes(cur *workload.State, u workload.Update) (delta map[string]int, nodes []workload.Node, changed bool) {
	delta = map[string]int{}
	hostIP := map[string]netip.Addr{}
	for uid, w := range u.Workloads {
		if old := cur.WorkloadByUID(uid); old != nil {
			delta[old.Node]--
		}
		if w != nil {
			delta[w.Node]++
			if w.HostIP.IsValid() && !hostIP[w.Node].IsValid() {
				hostIP[w.Node] = w.HostIP
			}
		}
	}
	left := func(name string) int { return t.nodePods[name] + delta[name] }
	for name := range delta {
		n, had := cur.Node(name)
		switch {
		case left(name) <= 0:
			changed = changed || had
		case !had, !n.IP.IsValid() && hostIP[name].IsValid():
			changed = true
		}
	}
	if !changed {
		return delta, nil, false
	}
	for _, n := range cur.Nodes() {
		if left(n.Name) > 0 {
			if !n.IP.IsValid() {
				n.IP = hostIP[n.Name]
			}
			nodes = append(nodes, n)
		}
	}
	for name := range delta {
		if _, had := cur.Node(name); !had && left(name) > 0 {
			nodes = append(nodes, workload.Node{Name: name, IP: hostIP[name]})
		}
	}
	slices.SortFunc(nodes, func(a, b workload.Node) int { return cmp.Compare(a.Name, b.Name) })
	return delta, nodes, true
}

// splitKey splits namespace/name.
func splitKey(key string) (namespace, name string) {
	namespace, name, _ = strings.Cut(key, "/")
	return namespace, name
}

// claim is a pod as podWorkload converts it (ok: it is a workload, with the IPs it claims).
type claim struct {
	pod *podInfo // nil: the pod is gone
	w   workload.Workload
	ok  bool
}

// claimants returns the pods of keys, and every pod that claims an IP one of them holds in cur,
// claims without holding it, or claims in v: closed under that relation, so that each IP the
// result touches is settled among all its claimants.
func (t *tracker) claimants(v view, keys map[string]bool, podIPs map[string][]netip.Addr) map[string]claim {
	out := make(map[string]claim, len(keys))
	queue := make([]string, 0, len(keys))
	add := func(key string) {
		if _, seen := out[key]; seen {
			return
		}
		var c claim
		if pod, exists := v.pod(key); exists {
			c.pod = pod
			c.w, c.ok = podWorkload(pod, v.namespaceLabels(pod.Namespace), podIPs[string(pod.UID)])
		}
		out[key] = c
		queue = append(queue, key)
	}
	for key := range keys {
		add(key)
	}
	for len(queue) > 0 {
		key := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		c := out[key]
		ips := slices.Clone(t.shadowOf[key])
		if w := t.cur.WorkloadByUID(t.podUID[key]); w != nil {
			ips = append(ips, w.IPs...)
		}
		if c.ok {
			ips = append(ips, c.w.IPs...)
		}
		for _, ip := range ips {
			if h := t.cur.WorkloadByIP(ip); h != nil {
				add(h.Namespace + "/" + h.Name)
			}
			for _, k := range t.shadowedBy[ip] {
				add(k)
			}
		}
	}
	return out
}

// newerFirst is newerPodFirst with gone pods (nil) last.
func newerFirst(a, b *podInfo) int {
	if a == nil || b == nil {
		return cmp.Compare(btoi(a == nil), btoi(b == nil))
	}
	return newerPodFirst(a, b)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// setShadows records that the pod at key claims ips without holding them (none: it holds all
// it claims, or is gone).
func (t *tracker) setShadows(key string, ips []netip.Addr) {
	for _, ip := range t.shadowOf[key] {
		rest := slices.DeleteFunc(slices.Clone(t.shadowedBy[ip]), func(k string) bool { return k == key })
		if len(rest) == 0 {
			delete(t.shadowedBy, ip)
		} else {
			t.shadowedBy[ip] = rest
		}
	}
	delete(t.shadowOf, key)
	if len(ips) == 0 {
		return
	}
	t.shadowOf[key] = ips
	for _, ip := range ips {
		t.shadowedBy[ip] = append(t.shadowedBy[ip], key)
	}
}
