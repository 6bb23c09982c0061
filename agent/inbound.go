package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/tunnel"
	"github.com/amesh-dev/amesh/workload"
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

// decide applies the policies of the destination pod to a source principal (empty for a
// plaintext source): one decision for the HBONE, splice and plaintext paths alike.
func (a *Agent) decide(st *workload.State, src string, dst *pod, port uint16) policy.Decision {
	req := policy.Request{SrcPrincipal: src, DstNamespace: dst.w.Namespace, DstLabels: dst.w.Labels, DstPort: port}
	return policy.Evaluate(st.PolicySet(), req, st.RootNamespace())
}
