package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/amesh-dev/amesh/netns"
	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/redirect"
	"github.com/amesh-dev/amesh/tunnel"
	"github.com/amesh-dev/amesh/workload"
)

// dialTimeout bounds an outbound tunnel or passthrough dial.
const dialTimeout = 10 * time.Second

// route is where an outbound connection goes: a decision of the state view alone (no I/O), so
// it is table-tested.
type route struct {
	// dst is the workload it reaches, nil when it leaves the mesh.
	dst *workload.Workload
	// addr is the address to reach: an endpoint's for a service VIP, else the original.
	addr netip.AddrPort
	// refuse, when set, is why the connection is refused instead.
	refuse string
}

// resolve picks the destination of a connection from src to orig: a service VIP is
// load-balanced over its endpoints (round robin by n), a workload IP is itself, anything else
// passes through unmeshed.
func resolve(st *workload.State, orig netip.AddrPort, n uint64) route {
	if svc, port, ok := st.ServiceByVIP(orig); svc != nil {
		if !ok {
			return route{refuse: fmt.Sprintf("service %s has no port %d", svc.Key(), orig.Port())}
		}
		ep, addr, ok := workload.PickEndpoint(st.Endpoints(svc), orig.Addr(), port, n)
		if !ok {
			return route{refuse: fmt.Sprintf("service %s has no endpoint", svc.Key())}
		}
		return route{dst: ep, addr: addr}
	}
	return route{dst: st.WorkloadByIP(orig.Addr()), addr: orig}
}

// forwardedFor is the RFC 7239 node of the source pod (IPv6 quoted and bracketed).
func forwardedFor(podIP netip.Addr) string {
	if podIP.Is6() && !podIP.Is4In6() {
		return `"[` + podIP.String() + `]"`
	}
	return podIP.String()
}

// baggage describes the source workload in W3C baggage, with the keys ztunnel uses.
func baggage(w *workload.Workload) string {
	return "k8s.namespace.name=" + w.Namespace + ",k8s.pod.name=" + w.Name + ",service.name=" + w.ServiceAccount
}

// localPod is the destination pod when it is enrolled on this node, else nil.
func (a *Agent) localPod(rt route) *pod {
	if rt.dst == nil || !rt.dst.Enrolled() || rt.dst.Node != a.cfg.Node {
		return nil
	}
	return a.podByIP(rt.addr.Addr())
}

// serve accepts on one of a pod's listeners until it closes, handling each connection on its
// own goroutine, counted for the drain on shutdown.
func (a *Agent) serve(ctx context.Context, p *pod, ln *net.TCPListener, handle func(context.Context, *pod, *net.TCPConn)) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		a.conns.Add(1)
		go func() {
			defer a.conns.Done()
			handle(ctx, p, c)
		}()
	}
}

// handleOutbound carries one captured connection of the pod (:15001) to its destination.
func (a *Agent) handleOutbound(ctx context.Context, p *pod, c *net.TCPConn) {
	start := time.Now()
	client := netip.MustParseAddrPort(c.RemoteAddr().String())
	entry := accessEntry{direction: "outbound", src: p.ip(), srcID: p.id.String()}
	orig, err := a.red.OriginalDst(p.cookie, client)
	if err != nil {
		a.refuse(c, &entry, start, "error", err.Error())
		return
	}
	entry.dst = orig
	st := a.store.Load()
	rt := resolve(st, orig, a.lbCounter.Add(1))
	if rt.refuse != "" {
		a.refuse(c, &entry, start, "refused", rt.refuse)
		return
	}
	entry.upstream = rt.addr
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var up net.Conn
	if local := a.localPod(rt); local != nil && a.cfg.SameNode != SameNodeHBONE {
		// Both ends on this node: the agent knows both identities first-hand, so it authorizes
		// here and joins the sockets directly (DESIGN §2), with the policy, access log and the
		// app seeing the client's IP exactly as over HBONE.
		entry.dstID, entry.path = local.id.String(), "splice"
		d := a.decide(st, p.id.String(), local, rt.addr.Port())
		if !d.Allowed {
			a.refuse(c, &entry, start, "denied", d.Reason)
			return
		}
		up, err = a.red.DialTransparent(dctx, local.w.Netns, p.ip(), rt.addr)
		if err != nil {
			a.refuse(c, &entry, start, "error", err.Error())
			return
		}
		if a.cfg.SameNode == SameNodeKernel && orig == rt.addr {
			// Decided: the pair's next connections may skip the agent (not for a VIP, which
			// the kernel path would not balance).
			if err := a.red.AllowKernelPath(p.cookie, rt.addr); err != nil {
				a.log.Warn("kernel path not cached", "err", err)
			}
		}
	} else if rt.dst != nil && rt.dst.Enrolled() {
		dstID, err := rt.dst.ID(st.TrustDomain())
		if err != nil {
			a.refuse(c, &entry, start, "error", err.Error())
			return
		}
		entry.dstID = dstID.String()
		entry.path = "hbone"
		up, err = a.cli.Dial(dctx, tunnel.Target{
			Source:    p.id,
			SourceIP:  p.ip(),
			Dest:      dstID,
			Addr:      netip.AddrPortFrom(rt.addr.Addr(), tunnel.HBONEPort),
			Authority: rt.addr,
			// As ztunnel sends them: who the source is, for the waypoint and the destination's logs.
			Forwarded: "for=" + forwardedFor(p.ip()),
			Baggage:   baggage(p.w),
		})
		if err != nil {
			a.refuse(c, &entry, start, resultOf(err), err.Error())
			return
		}
	} else {
		// Not in the mesh (outside the cluster, or a pod with dataplane-mode none): as Istio
		// ambient does, pass it through, from the pod's netns, marked so it is not captured again.
		entry.path = "passthrough"
		up, err = netns.DialContext(dctx, p.w.Netns, "tcp", rt.addr.String(), net.Dialer{Control: redirect.MarkControl})
		if err != nil {
			a.refuse(c, &entry, start, "error", err.Error())
			return
		}
	}
	entry.sent, entry.received, err = tunnel.Relay(c, up)
	entry.done(a.access, start, relayResult(err), errString(err))
}

// handlePlaintext serves TCP for the pod that did not come over HBONE (:15006): only when the
// pod is PERMISSIVE, and then still subject to policy as an unauthenticated source.
func (a *Agent) handlePlaintext(ctx context.Context, p *pod, c *net.TCPConn) {
	start := time.Now()
	client := netip.MustParseAddrPort(c.RemoteAddr().String())
	dst := netip.MustParseAddrPort(c.LocalAddr().String())
	entry := accessEntry{direction: "inbound_plaintext", src: client.Addr(), dst: dst, dstID: p.id.String(), path: "plaintext"}
	w := p.w
	if !w.AcceptsPlaintext() {
		a.refuse(c, &entry, start, "refused", "plaintext to a STRICT workload: only mTLS (HBONE) is accepted")
		return
	}
	d := a.decide(a.store.Load(), "", p, dst.Port())
	if !d.Allowed {
		a.refuse(c, &entry, start, "denied", d.Reason)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	up, err := a.red.DialTransparent(dctx, w.Netns, client.Addr(), dst)
	if err != nil {
		a.refuse(c, &entry, start, "error", err.Error())
		return
	}
	entry.sent, entry.received, err = tunnel.Relay(c, up)
	entry.done(a.access, start, relayResult(err), errString(err))
}

// authorizeHBONE admits a CONNECT that arrived on the HBONE listener of the pod in ctx: it must
// be addressed to that pod (no hopping through one pod's listener to another address) and
// allowed by the pod's policies.
func (a *Agent) authorizeHBONE(ctx context.Context, req *tunnel.Request) error {
	p := podFrom(ctx)
	if p == nil {
		return errors.New("no pod for this listener")
	}
	if a.podByIP(req.Authority.Addr()) != p {
		return fmt.Errorf("CONNECT to %s arrived at the listener of %s (%v)", req.Authority, p.w.UID, p.w.IPs)
	}
	d := a.decide(a.store.Load(), req.Peer.String(), p, req.Authority.Port())
	if !d.Allowed {
		return errors.New(d.Reason)
	}
	return nil
}

// dialApp connects to the app inside the destination pod from the client pod's own IP, so the
// app sees the real client address.
func (a *Agent) dialApp(ctx context.Context, req *tunnel.Request) (net.Conn, error) {
	p := podFrom(ctx)
	if p == nil {
		return nil, errors.New("no pod for this listener")
	}
	return a.red.DialTransparent(ctx, p.w.Netns, req.Client.Addr(), req.Authority)
}

// dialHBONE opens an HBONE connection from inside the source pod's netns, so the pod's IP is
// the source on the wire (NetworkPolicies keep working) and the agent's mark keeps it uncaptured.
func (a *Agent) dialHBONE(ctx context.Context, src netip.Addr, addr netip.AddrPort) (net.Conn, error) {
	p := a.podByIP(src)
	if p == nil {
		return nil, fmt.Errorf("no enrolled pod with IP %s on this node", src)
	}
	return netns.DialContext(ctx, p.w.Netns, "tcp", addr.String(), net.Dialer{Control: redirect.MarkControl})
}

// logInbound writes the access line of an HBONE stream this node served or refused.
func (a *Agent) logInbound(req *tunnel.Request, res tunnel.StreamResult) {
	e := accessEntry{
		direction: "inbound", src: req.Client.Addr(), dst: req.Authority, srcID: req.Peer.String(),
		dstID: req.Local.String(), path: "hbone", sent: res.BytesIn, received: res.BytesOut,
	}
	result, reason := relayResult(res.Err), errString(res.Err)
	if res.Reason != tunnel.ReasonNone {
		result = "refused"
		if res.Reason == tunnel.ReasonDenied {
			result = "denied"
		}
		reason = res.Reason.String() + ": " + errString(res.Err)
	}
	e.log(a.access, res.Duration, result, reason)
}

// reset closes c with a RST: a refused connection must look refused to the app, not served.
func (a *Agent) reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// refuse resets c and writes its access line with result and reason.
func (a *Agent) refuse(c *net.TCPConn, e *accessEntry, start time.Time, result, reason string) {
	a.reset(c)
	e.done(a.access, start, result, reason)
}

// decide applies the policies of the destination pod to a source principal (empty for a
// plaintext source): one decision for the HBONE, splice and plaintext paths alike.
func (a *Agent) decide(st *workload.State, src string, dst *pod, port uint16) policy.Decision {
	req := policy.Request{SrcPrincipal: src, DstNamespace: dst.w.Namespace, DstLabels: dst.w.Labels, DstPort: port}
	return policy.Evaluate(st.PolicySet(), req, st.RootNamespace())
}

// accessEntry is one access-log line.
type accessEntry struct {
	direction, path string
	src             netip.Addr
	dst, upstream   netip.AddrPort
	srcID, dstID    string
	sent, received  int64
}

func (e *accessEntry) done(l *slog.Logger, start time.Time, result, reason string) {
	e.log(l, time.Since(start), result, reason)
}

func (e accessEntry) log(l *slog.Logger, d time.Duration, result, reason string) {
	attrs := []any{
		"direction", e.direction, "path", e.path, "src_addr", e.src.String(), "dst_addr", e.dst.String(),
		"src_id", e.srcID, "dst_id", e.dstID, "bytes_sent", e.sent, "bytes_received", e.received,
		"duration_ms", float64(d.Microseconds()) / 1000, "result", result,
	}
	if e.upstream.IsValid() && e.upstream != e.dst {
		attrs = append(attrs, "upstream_addr", e.upstream.String())
	}
	if reason != "" {
		attrs = append(attrs, "reason", reason)
	}
	l.Info("access", attrs...)
}

func resultOf(err error) string {
	switch tunnel.ReasonOf(err) {
	case tunnel.ReasonDenied:
		return "denied"
	case tunnel.ReasonNone:
		return "error"
	}
	return "refused"
}

func relayResult(err error) string {
	if err != nil {
		return "reset"
	}
	return "ok"
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
