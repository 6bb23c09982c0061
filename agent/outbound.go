package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/amesh-dev/amesh/netns"
	"github.com/amesh-dev/amesh/tunnel"
)

// dialTimeout bounds an outbound tunnel or passthrough dial.
const dialTimeout = 10 * time.Second

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
	rt := resolve(st, p.w, orig, a.lbCounter.Add(1))
	if rt.refuse != "" {
		a.refuse(c, &entry, start, "refused", rt.refuse)
		return
	}
	entry.upstream = rt.addr
	if rt.via != nil || (rt.dst != nil && rt.dst.Enrolled()) {
		// A mesh path needs the pod's own SVID (the splice path too, though it shows none: the
		// identity it is authorized as must still be one the source issues).
		if err := a.src.Check(p.id); err != nil {
			a.refuse(c, &entry, start, "refused", "no SVID for the source "+p.id.String()+": "+err.Error())
			return
		}
	}
	release, err := p.acquireDial()
	if err != nil {
		a.dialsRefused.Add(1)
		a.refuse(c, &entry, start, "refused", err.Error())
		return
	}
	dialed := sync.OnceFunc(release)
	defer dialed()
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var up net.Conn
	var tracked *openConn // the splice path's entry in a.open
	if rt.via != nil {
		// Through a waypoint: over HBONE to one of its pods, wherever it runs (never the
		// splice or kernel path, which would skip it), asking for the original destination.
		wpID, err := rt.dst.ID(st.TrustDomain())
		if err != nil {
			a.refuse(c, &entry, start, "error", err.Error())
			return
		}
		entry.dstID, entry.path, entry.waypoint = wpID.String(), "hbone", rt.via.Key()
		entry.upstream = rt.hop
		up, err = a.cli.Dial(dctx, tunnel.Target{
			Source: p.id, SourceIP: p.ip(), Dest: wpID,
			Addr:      rt.hop,
			Authority: rt.addr,
			Forwarded: "for=" + forwardedFor(p.ip()),
			Baggage:   baggage(p.w),
		})
		if err != nil {
			entry.cause = tunnel.ReasonOf(err)
			a.refuse(c, &entry, start, resultOf(err), "waypoint "+rt.via.Key()+": "+err.Error())
			return
		}
	} else if local := a.localPod(rt); local != nil && a.cfg.SameNode != SameNodeHBONE {
		// Both ends on this node: the agent knows both identities first-hand, so it authorizes
		// here and joins the sockets directly (DESIGN §2), with the policy, access log and the
		// app seeing the client's IP exactly as over HBONE.
		entry.dstID, entry.path = local.id.String(), "splice"
		if err := a.src.Check(local.id); err != nil {
			a.refuse(c, &entry, start, "refused", "no SVID for the destination "+local.id.String()+": "+err.Error())
			return
		}
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
		oc := &openConn{src: p.id.String(), dst: local.w, port: rt.addr.Port(), kill: func() { resetBoth(c, up) }}
		defer a.track(oc)()
		tracked = oc
		if a.cfg.SameNode == SameNodeKernel && orig == rt.addr {
			// Decided: the pair's next connections may skip the agent (not for a VIP, which
			// the kernel path would not balance).
			if err := a.red.AllowKernelPath(p.cookie, rt.addr); err != nil {
				a.log.Warn("kernel path not cached", "err", err)
			}
			// The decision was made on st, before a dial that may have taken seconds: a change
			// that landed meanwhile, and was revalidated before this verdict existed, must
			// not leave it cached. Decided again on the newest state (a later change is
			// revalidated after this write, by reconcile).
			if cur := a.store.Load(); cur != st {
				if !a.decideAgain(cur, p.id.String(), local.w, rt.addr.Port()).Allowed {
					if err := a.red.ForgetKernelPath(p.cookie, rt.addr); err != nil {
						a.log.Warn("kernel path verdict not withdrawn", "err", err)
					}
				}
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
			entry.cause = tunnel.ReasonOf(err)
			a.refuse(c, &entry, start, resultOf(err), err.Error())
			return
		}
	} else {
		// Not in the mesh (outside the cluster, or a pod with dataplane-mode none): as Istio
		// ambient does, pass it through, from the pod's netns, marked so it is not captured again.
		entry.path = "passthrough"
		up, err = netns.DialContext(dctx, p.w.Netns, "tcp", rt.addr.String(), a.red.AgentControl)
		if err != nil {
			a.refuse(c, &entry, start, "error", err.Error())
			return
		}
	}
	dialed()
	a.opened(&entry)
	entry.sent, entry.received, err = tunnel.Relay(c, up)
	if tracked != nil {
		if d := tracked.revocation(); d != nil {
			a.done(&entry, start, "revoked", revokedReason(d))
			return
		}
	}
	a.done(&entry, start, relayResult(err), errString(err))
}

// dialHBONE opens an HBONE connection from inside the source pod's netns, so the pod's IP is
// the source on the wire (NetworkPolicies keep working) and the agent's mark keeps it uncaptured.
func (a *Agent) dialHBONE(ctx context.Context, src netip.Addr, addr netip.AddrPort) (net.Conn, error) {
	p := a.podByIP(src)
	if p == nil {
		return nil, fmt.Errorf("no enrolled pod with IP %s on this node", src)
	}
	return netns.DialContext(ctx, p.w.Netns, "tcp", addr.String(), a.red.AgentControl)
}
