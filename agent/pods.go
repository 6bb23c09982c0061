package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/netns"
	"github.com/amesh-dev/amesh/podevents"
	"github.com/amesh-dev/amesh/redirect"
	"github.com/amesh-dev/amesh/tunnel"
	"github.com/amesh-dev/amesh/workload"
)

// pod is one enrolled workload of this node and the listeners the agent holds in its netns.
type pod struct {
	w      *workload.Workload
	id     spiffeid.ID
	cookie uint64
	lns    []*net.TCPListener
	cancel context.CancelFunc
	// dials holds a token per dial in flight for this pod, from it (outbound: HBONE,
	// passthrough, splice) or to it (the agent's connection to its app); see maxPodDials.
	dials chan struct{}
}

// maxPodDials bounds the dials in flight for one pod. A pod that opens thousands of
// connections to a black-holed address would otherwise hold a socket, a goroutine and a
// pending connect per connection for the whole dial timeout; past the bound its new
// connections are reset at once (access line reason "dial budget"), and other pods are not
// touched. 1,024 pending dials cost about 20 MiB (goroutine, two sockets and buffers each).
const maxPodDials = 1024

// errDialBudget refuses a dial over a pod's maxPodDials.
var errDialBudget = fmt.Errorf("dial budget: %d dials of this pod already in flight", maxPodDials)

// acquireDial takes one of p's dial tokens, or fails at once when all are taken.
func (p *pod) acquireDial() (release func(), err error) {
	select {
	case p.dials <- struct{}{}:
		return func() { <-p.dials }, nil
	default:
		return nil, errDialBudget
	}
}

func (p *pod) stop() {
	p.cancel()
	p.closeListeners()
}

// closeListeners stops accepting for p; connections being dialed or relayed carry on.
func (p *pod) closeListeners() {
	for _, l := range p.lns {
		l.Close()
	}
}

// ip is the pod's IPv4 address (or its first), the source of its HBONE connections.
func (p *pod) ip() netip.Addr {
	for _, ip := range p.w.IPs {
		if ip.Is4() {
			return ip
		}
	}
	return p.w.IPs[0]
}

type podKey struct{}

func podFrom(ctx context.Context) *pod {
	p, _ := ctx.Value(podKey{}).(*pod)
	return p
}

// reconcile makes the enrolled pods match the state view: enroll what is new or changed,
// unenroll what left, and drop pinned enrollments nothing in the state accounts for (drift
// left by an earlier run).
func (a *Agent) reconcile(ctx context.Context, st *workload.State) {
	want := map[string]*workload.Workload{}
	ambiguous := map[string]bool{} // what ambiguousNetns becomes: pods that left are not counted
	unresolved := 0
	for _, w := range st.WorkloadsOnNode(a.cfg.Node) {
		if !w.Enrolled() || len(w.IPs) == 0 {
			continue
		}
		resolved, cands, pending := a.withNetns(w)
		if resolved != nil {
			want[w.UID] = resolved
			continue
		}
		if pending {
			unresolved++
		}
		if len(cands) > 0 {
			ambiguous[w.UID] = true
			if !a.ambiguousNetns[w.UID] { // once per pod: reconcile runs on every State
				a.log.Warn("pod not enrolled: several network namespaces hold its IP and not exactly one of them is attached to this node (report it by CNI)", "pod", w.UID, "ips", w.IPs, "namespaces", cands)
			}
		}
	}
	a.ambiguousNetns = ambiguous
	a.ambiguousPods.Store(int64(len(ambiguous)))
	a.unresolvedNetns.Store(int64(unresolved))
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.released.Load() || a.handingOver.Load() {
		return // the pods are (being) handed over: the successor reconciles them
	}
	for uid := range a.enrollErrs {
		if _, ok := want[uid]; !ok {
			delete(a.enrollErrs, uid)
		}
	}
	for uid, p := range a.pods {
		if w, ok := want[uid]; !ok || w.Netns != p.w.Netns || !slices.Equal(w.IPs, p.w.IPs) {
			a.unenrollLocked(uid, p)
		} else {
			if !slices.Equal(w.ProbePorts, p.w.ProbePorts) {
				a.setProbes(w)
			}
			p.w = w // labels, inbound mode and the like apply to new connections at once
		}
	}
	for uid, w := range want {
		if _, ok := a.pods[uid]; ok {
			continue
		}
		start := time.Now()
		p, err := a.enrollLocked(ctx, st, w)
		if err != nil {
			a.log.Error("enroll failed: the pod's traffic is refused until it succeeds", "pod", uid, "netns", w.Netns, "err", err)
			a.enrollErrs[uid] = err
			if a.cfg.PodEvents != nil {
				a.cfg.PodEvents.Warning(podevents.Pod{Namespace: w.Namespace, Name: w.Name, UID: w.UID}, ReasonEnrollmentFailed,
					fmt.Sprintf("amesh could not enroll the pod on node %s (retrying; its traffic is refused until then): %v", a.cfg.Node, err))
			}
			continue
		}
		delete(a.enrollErrs, uid)
		a.observeEnrollment(time.Since(start).Seconds())
		a.log.Info("pod enrolled", "pod", uid, "id", p.id.String(), "ips", w.IPs, "netns_cookie", p.cookie, "took", time.Since(start))
	}
	if a.cfg.SameNode == SameNodeKernel {
		a.revalidateKernelPathsLocked(st)
	}
	keep := map[uint64]bool{}
	for _, p := range a.pods {
		keep[p.cookie] = true
	}
	for _, pinned := range a.red.Pods() {
		if !keep[pinned.Cookie] {
			a.log.Info("removing stale enrollment", "netns_cookie", pinned.Cookie, "ips", pinned.IPs)
			if err := a.red.Unenroll(pinned.Cookie); err != nil {
				a.log.Warn("remove stale enrollment", "err", err)
			}
		}
	}
}

// setProbes lets the kubelet's probes reach w's app: plaintext from the node's probe source to
// the ports its probes name (see redirect.SetProbeExemptions).
func (a *Agent) setProbes(w *workload.Workload) {
	for _, ip := range w.IPs {
		if err := a.red.SetProbeExemptions(ip, w.ProbePorts); err != nil {
			a.log.Warn("kubelet probes may be refused", "pod", w.UID, "err", err)
		}
	}
}

// withNetns returns w with the path of its network namespace: the state's, else what amesh-cni
// reported, else the namespace found holding its IP; nil when none is known (yet) or CNI DEL
// came for it, with the namespaces that hold its IP when it is not known because none of them
// could be chosen. pending says a later look may find it (not known yet, or ambiguous), so that
// the caller looks again. The State's workloads are shared, so a resolved one is a copy.
func (a *Agent) withNetns(w *workload.Workload) (resolved *workload.Workload, cands []string, pending bool) {
	if w.Netns != "" {
		return w, nil, false
	}
	reported, ok := a.cniPods.lookup(w.UID)
	if ok && reported.deleted {
		return nil, nil, false
	}
	path := reported.netns
	if path == "" {
		path = a.netnsCache.Find(w.IPs)
	}
	if path == "" {
		if cands = a.netnsCache.Ambiguous(w.IPs); len(cands) > 0 {
			return nil, cands, true
		}
		a.log.Debug("pod's network namespace not known yet", "pod", w.UID, "ips", w.IPs)
		return nil, nil, true
	}
	c := *w
	c.Netns = path
	return &c, nil, false
}

// enrollLocked puts a workload in the mesh in the order DESIGN §6 gives: listeners in its netns
// first, its certificate warmed, then inbound steering and outbound capture, so no byte of the
// app leaves before the mesh is in place (and any gap refuses rather than leaks).
func (a *Agent) enrollLocked(ctx context.Context, st *workload.State, w *workload.Workload) (p *pod, err error) {
	id, err := w.ID(st.TrustDomain())
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithCancel(ctx)
	p = &pod{w: w, id: id, cancel: cancel, dials: make(chan struct{}, maxPodDials)}
	// Stop what was opened on any failure; the error returns name p nil, so hold it here.
	opened, held := p, false
	defer func() {
		if err != nil {
			opened.stop()
			if held {
				a.src.Release(w.UID)
			}
		}
	}()
	listen := func(addr string) (*net.TCPListener, error) {
		// A predecessor's socket, as it is: connections already wait in its queue.
		if l := a.inheritedTCP(podListenerName(w.UID, addr)); l != nil {
			p.lns = append(p.lns, l)
			return l, nil
		}
		l, err := netns.ListenTCP(w.Netns, addr, net.ListenConfig{Control: redirect.MarkControl})
		if err == nil {
			p.lns = append(p.lns, l)
		}
		return l, err
	}
	out4, err := listen(fmt.Sprintf("127.0.0.1:%d", redirect.OutboundPort))
	if err != nil {
		return nil, err
	}
	out6, err6 := listen(fmt.Sprintf("[::1]:%d", redirect.OutboundPort))
	if err6 != nil {
		a.log.Warn("no IPv6 loopback in the pod: IPv6 connections will be refused", "pod", w.UID, "err", err6)
	}
	hbone, err := listen(fmt.Sprintf("127.0.0.1:%d", tunnel.HBONEPort))
	if err != nil {
		return nil, err
	}
	plain, err := listen(fmt.Sprintf("127.0.0.1:%d", redirect.PlaintextPort))
	if err != nil {
		return nil, err
	}
	if err := redirect.SetupTransparentRouting(w.Netns); err != nil {
		return nil, err
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	err = a.src.Hold(wctx, identity.Subject{ID: id, UID: w.UID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount, Node: w.Node})
	wcancel()
	if err != nil {
		return nil, err
	}
	held = true
	for _, ip := range w.IPs {
		if err := a.red.RegisterListener(ip, redirect.KindHBONE, hbone); err != nil {
			return nil, err
		}
		if err := a.red.RegisterListener(ip, redirect.KindPlaintext, plain); err != nil {
			return nil, err
		}
	}
	a.setProbes(w)
	rp, err := a.red.Enroll(w.Netns, w.IPs)
	if err != nil {
		return nil, err
	}
	p.cookie = rp.Cookie
	pctx = context.WithValue(pctx, podKey{}, p)
	go a.serve(pctx, p, out4, a.handleOutbound)
	if err6 == nil {
		go a.serve(pctx, p, out6, a.handleOutbound)
	}
	go func() {
		if err := a.srv.Serve(pctx, hbone, id); err != nil && !errors.Is(err, net.ErrClosed) {
			a.log.Warn("HBONE listener stopped", "pod", w.UID, "err", err)
		}
	}()
	go a.serve(pctx, p, plain, a.handlePlaintext)
	a.pods[w.UID] = p
	for _, ip := range w.IPs {
		a.byIP[ip] = p
	}
	return p, nil
}

func (a *Agent) unenrollLocked(uid string, p *pod) {
	if err := a.red.Unenroll(p.cookie); err != nil {
		a.log.Warn("unenroll", "pod", uid, "err", err)
	}
	p.stop()
	delete(a.pods, uid)
	for _, ip := range p.w.IPs {
		if a.byIP[ip] == p {
			delete(a.byIP, ip)
		}
	}
	a.src.Release(uid) // the agent holds keys only for workloads on its node
	a.log.Info("pod unenrolled", "pod", uid)
}

// podByIP finds a local enrolled pod by one of its IPs.
func (a *Agent) podByIP(ip netip.Addr) *pod {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.byIP[ip.Unmap()]
}

// ReasonEnrollmentFailed is the reason of the Event a pod gets when its enrollment fails.
const ReasonEnrollmentFailed = "EnrollmentFailed"

// failedEnrollments returns how many of the node's mesh pods failed their last enrollment.
func (a *Agent) failedEnrollments() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.enrollErrs)
}

// pendingEnrollments returns how many of the node's mesh pods a later reconcile may still
// enroll: those whose enrollment failed, and those whose namespace was not found or was
// ambiguous (withNetns). Run's retry looks again while it is not zero.
func (a *Agent) pendingEnrollments() int {
	return a.failedEnrollments() + int(a.unresolvedNetns.Load())
}

// readiness says whether the agent is ready, and why not: the state reconciled once and every
// pod of the node that is in the mesh enrolled. A pod whose enrollment keeps failing holds
// readiness down, so that a rollout stops on the node rather than leaving the pod's traffic
// refused while the agent reports ready.
func (a *Agent) readiness() (bool, string) {
	if !a.synced.Load() {
		return false, "state not synced yet"
	}
	if err := a.src.Ready(); err != nil {
		return false, "identity source: " + err.Error()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.enrollErrs) == 0 {
		return true, ""
	}
	uids := slices.Sorted(maps.Keys(a.enrollErrs))
	var b strings.Builder
	fmt.Fprintf(&b, "%d pod(s) not enrolled (retrying):", len(uids))
	for _, uid := range uids[:min(len(uids), 5)] {
		fmt.Fprintf(&b, " %s: %v;", uid, a.enrollErrs[uid])
	}
	return false, b.String()
}

// Enrollment retry backoff: from 200 ms doubling to 30 s while enrollments keep failing.
const (
	enrollRetryMin = 200 * time.Millisecond
	enrollRetryMax = 30 * time.Second
)

// enrollRetry schedules the next reconcile while enrollments fail. The zero value is idle; it
// is used by Run's loop only.
type enrollRetry struct {
	timer   *time.Timer
	c       <-chan time.Time // nil while idle: a select on it never fires
	backoff time.Duration
}

// after arms the retry when failed > 0 (backing off from the last delay), and idles it, with
// the backoff reset, when nothing failed.
func (r *enrollRetry) after(failed int) {
	r.stop()
	if failed == 0 {
		r.backoff = 0
		return
	}
	r.backoff = min(max(2*r.backoff, enrollRetryMin), enrollRetryMax)
	r.timer = time.NewTimer(r.backoff)
	r.c = r.timer.C
}

func (r *enrollRetry) stop() {
	if r.timer != nil {
		r.timer.Stop()
	}
	r.timer, r.c = nil, nil
}

// revalidateKernelPathsLocked decides every pod pair cached on the kernel path again against st,
// once the pods match it: a pair whose client or destination left, or that st's policies now
// deny, is forgotten; the rest stay cached (a change elsewhere in the cluster does not send the
// node's same-node traffic back through the agent). Called with a.mu held.
func (a *Agent) revalidateKernelPathsLocked(st *workload.State) {
	byCookie := make(map[uint64]*pod, len(a.pods))
	for _, p := range a.pods {
		byCookie[p.cookie] = p
	}
	dropped, err := a.red.RevalidateKernelPaths(func(cookie uint64, dst netip.AddrPort) bool {
		src, to := byCookie[cookie], a.byIP[dst.Addr()]
		if src == nil || to == nil {
			return false
		}
		if a.src.Check(src.id) != nil || a.src.Check(to.id) != nil {
			return false // an identity not held (revoked, no SPIRE entry): back through the agent, which refuses it
		}
		return a.decide(st, src.id.String(), to, dst.Port()).Allowed
	})
	if err != nil {
		a.log.Warn("revalidate kernel paths", "err", err)
	}
	if dropped > 0 {
		a.log.Info("kernel path verdicts withdrawn", "count", dropped)
	}
}
