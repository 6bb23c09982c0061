package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/tunnel"
	"github.com/amesh-dev/amesh/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

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
	up, err := a.dialApp(dctx, p, client.Addr(), dst)
	if err != nil {
		a.refuse(c, &entry, start, "error", err.Error())
		return
	}
	oc := &openConn{src: "", dst: w, port: dst.Port(), kill: func() { resetBoth(c, up) }}
	defer a.track(oc)()
	a.opened(&entry)
	entry.sent, entry.received, err = tunnel.Relay(c, up)
	if d := oc.revocation(); d != nil {
		a.done(&entry, start, "revoked", revokedReason(d))
		return
	}
	a.done(&entry, start, relayResult(err), errString(err))
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
	st, err := a.awaitSource(ctx, req.Client.Addr(), req.Peer)
	if err != nil {
		return tunnel.Refuse(tunnel.ReasonSourceIdentity, err)
	}
	if d, covered := waypointDecision(st, req.Peer.String(), p.w, req.Authority.Port()); covered && !d.Allowed {
		return tunnel.Refuse(tunnel.ReasonWaypointBypass, errors.New(d.Reason))
	}
	d := a.decide(st, req.Peer.String(), p, req.Authority.Port())
	if !d.Allowed {
		return errors.New(d.Reason)
	}
	return nil
}

// sourceHolds checks that the HBONE client at address client may present peer: the
// workload of the mesh with that address must be the one whose identity peer is. HBONE is
// dialed from inside the source pod's network namespace, so a genuine client always connects
// from its pod's IP; a certificate presented from any other address (a node's, another pod's)
// is a stolen or minted one, and is refused before any policy is asked.
func sourceHolds(st *workload.State, client netip.Addr, peer spiffeid.ID) error {
	w := st.WorkloadByIP(client.Unmap())
	if w == nil {
		return fmt.Errorf("source identity: %s presented from %s, and no workload of the mesh has the address", peer, client)
	}
	// A waypoint's pod is not captured (it speaks HBONE itself) but is of the mesh.
	if !w.Enrolled() && st.WaypointOf(w) == nil {
		return fmt.Errorf("source identity: %s presented from %s, which is the address of %s/%s, a workload outside the mesh", peer, client, w.Namespace, w.Name)
	}
	id, err := w.ID(st.TrustDomain())
	if err != nil {
		return fmt.Errorf("source identity: %w", err)
	}
	if id != peer {
		return fmt.Errorf("source identity: %s presented from %s, which is the address of %s/%s (%s)", peer, client, w.Namespace, w.Name, id)
	}
	return nil
}

// sourceWait bounds how long a CONNECT whose source does not (yet) hold its identity waits for
// the state to say it does: a pod's first connection can reach another node before that
// node's agent has heard of the pod's IP (the informers take tens of milliseconds).
const sourceWait = 2 * time.Second

// awaitSource returns the state in which the client at client holds peer (sourceHolds),
// waiting up to sourceWait for a state update that makes it so; else sourceHolds' refusal.
func (a *Agent) awaitSource(ctx context.Context, client netip.Addr, peer spiffeid.ID) (*workload.State, error) {
	st := a.store.Load()
	err := sourceHolds(st, client, peer)
	if err == nil {
		return st, nil
	}
	updates, cancel := a.store.Subscribe()
	defer cancel()
	timeout := time.NewTimer(sourceWait)
	defer timeout.Stop()
	for {
		select {
		case next := <-updates:
			if err = sourceHolds(next, client, peer); err == nil {
				return next, nil
			}
		case <-timeout.C:
			return nil, err
		case <-ctx.Done():
			return nil, err
		}
	}
}

// dialHBONEApp is the tunnel server's upstream dial: to the app of the pod whose HBONE
// listener the stream came in on.
func (a *Agent) dialHBONEApp(ctx context.Context, req *tunnel.Request) (net.Conn, error) {
	p := podFrom(ctx)
	if p == nil {
		return nil, errors.New("no pod for this listener")
	}
	up, err := a.dialApp(ctx, p, req.Client.Addr(), req.Authority)
	if err != nil {
		return nil, err
	}
	// Revoking the stream resets its upstream: the relay then ends the stream with RST_STREAM.
	oc := &openConn{src: req.Peer.String(), dst: p.w, port: req.Authority.Port(), kill: func() { resetBoth(up) }}
	a.hboneOpen.Store(req, &hboneConn{oc: oc, remove: a.track(oc)})
	e := inboundEntry(req)
	a.opened(&e)
	return up, nil
}

// hboneConn is an HBONE stream's entry in the agent's open connections.
type hboneConn struct {
	oc     *openConn
	remove func()
}

// dialApp connects to the app inside pod p from the client's own IP, so the app sees the real
// client address, within p's dial budget.
func (a *Agent) dialApp(ctx context.Context, p *pod, client netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	release, err := p.acquireDial()
	if err != nil {
		a.dialsRefused.Add(1)
		return nil, err
	}
	defer release()
	return a.red.DialTransparent(ctx, p.w.Netns, client, dst)
}

// logInbound writes the access line of an HBONE stream this node served or refused.
func (a *Agent) logInbound(req *tunnel.Request, res tunnel.StreamResult) {
	e := inboundEntry(req)
	e.sent, e.received, e.cause = res.BytesIn, res.BytesOut, res.Reason
	result, reason := relayResult(res.Err), errString(res.Err)
	if v, ok := a.hboneOpen.LoadAndDelete(req); ok {
		e.opened = true // counted by dialHBONEApp
		hc := v.(*hboneConn)
		hc.remove()
		if d := hc.oc.revocation(); d != nil {
			result, reason = "revoked", revokedReason(d)
		}
	}
	if res.Reason != tunnel.ReasonNone {
		result = "refused"
		if res.Reason == tunnel.ReasonDenied {
			result = "denied"
		}
		reason = res.Reason.String() + ": " + errString(res.Err)
	}
	a.record(&e, res.Duration, result, reason)
}

// inboundEntry is the access entry of an HBONE stream.
func inboundEntry(req *tunnel.Request) accessEntry {
	return accessEntry{
		direction: "inbound", src: req.Client.Addr(), dst: req.Authority, srcID: req.Peer.String(),
		dstID: req.Local.String(), path: "hbone",
	}
}

// decide applies the policies of the destination pod to a source principal (empty for a
// plaintext source): one decision for the HBONE, splice and plaintext paths alike.
//
// A port a waypoint covers takes mesh traffic from that waypoint only (DESIGN §7: unlike
// Istio, skipping the waypoint is refused), and traffic from the waypoint is the waypoint's to
// authorize: it evaluates the destination's policies against the original caller, whom this
// agent no longer sees.
func (a *Agent) decide(st *workload.State, src string, dst *pod, port uint16) policy.Decision {
	if d, covered := waypointDecision(st, src, dst.w, port); covered {
		return d
	}
	req := policy.Request{SrcPrincipal: src, DstNamespace: dst.w.Namespace, DstLabels: dst.w.Labels, DstPort: port}
	return policy.Evaluate(st.PolicySet(), req, st.RootNamespace())
}

// waypointDecision decides traffic from src to port of w when a waypoint covers it; covered is
// false when none does (or w accepts bypass), and policy decides.
func waypointDecision(st *workload.State, src string, w *workload.Workload, port uint16) (d policy.Decision, covered bool) {
	if w.AllowWaypointBypass {
		return policy.Decision{}, false
	}
	wps, err := st.WaypointsCovering(w, port)
	if err != nil {
		return policy.Decision{Reason: "waypoint: " + err.Error()}, true
	}
	if len(wps) == 0 {
		return policy.Decision{}, false
	}
	names := make([]string, 0, len(wps))
	for _, wp := range wps {
		for _, ep := range st.Endpoints(wp) {
			if id, err := ep.ID(st.TrustDomain()); err == nil && id.String() == src && src != "" {
				return policy.Decision{Allowed: true, Reason: "from its waypoint " + wp.Key() + " (which authorized the caller)"}, true
			}
		}
		names = append(names, wp.Key())
	}
	return policy.Decision{Reason: fmt.Sprintf("waypoint bypassed: port %d of %s takes mesh traffic only through waypoint %s", port, w.UID, strings.Join(names, ", "))}, true
}
