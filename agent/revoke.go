package agent

import (
	"net"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/netns"
	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/workload"
)

// openConn is a connection the agent authorized by the destination pod's policies and still
// relays, held so that a later change of policies or workloads can revoke it (ztunnel#311: a
// policy that stops at new connections leaves a hole for open ones).
type openConn struct {
	src  string             // the source principal; "" for plaintext
	dst  *workload.Workload // the destination, a pod of this node, as it was when decided
	port uint16
	// kill resets both sides of the connection; the relay then ends and the path's access line
	// says revoked (reason).
	kill func()

	mu      sync.Mutex
	revoked *policy.Decision // the decision that revoked it, once one did
}

// revocation returns the decision that revoked c, or nil.
func (c *openConn) revocation() *policy.Decision {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.revoked
}

// openConns are the connections of every path the agent decides (HBONE inbound, splice,
// plaintext inbound). The zero value is ready.
type openConns struct {
	mu    sync.Mutex
	conns map[*openConn]struct{}
}

// add registers c until the returned func is called (when its relay ends).
func (r *openConns) add(c *openConn) (remove func()) {
	r.mu.Lock()
	if r.conns == nil {
		r.conns = map[*openConn]struct{}{}
	}
	r.conns[c] = struct{}{}
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		delete(r.conns, c)
		r.mu.Unlock()
	}
}

// track registers c with the agent's open connections and decides it once more against the
// current state: a change that landed while c was being dialed (after its first decision) is
// not missed. The returned func unregisters it.
func (a *Agent) track(c *openConn) (remove func()) {
	remove = a.open.add(c)
	a.revoke(a.store.Load(), c)
	return remove
}

// revokeDenied decides every open connection again against st, with the same decision new
// connections get, and kills the ones now denied. It returns how many it revoked.
func (a *Agent) revokeDenied(st *workload.State) int {
	a.open.mu.Lock()
	open := make([]*openConn, 0, len(a.open.conns))
	for c := range a.open.conns {
		open = append(open, c)
	}
	a.open.mu.Unlock()
	n := 0
	for _, c := range open {
		if a.revoke(st, c) {
			n++
		}
	}
	return n
}

// revoke kills c when st's policies deny it now, and says whether it did.
func (a *Agent) revoke(st *workload.State, c *openConn) bool {
	d := a.decideAgain(st, c.src, c.dst, c.port)
	if d.Allowed {
		return false
	}
	c.mu.Lock()
	already := c.revoked != nil
	if !already {
		c.revoked = &d
	}
	c.mu.Unlock()
	if already {
		return false
	}
	c.kill()
	return true
}

// decideAgain is decide for a connection decided earlier, against dst as st has it now (its
// labels or namespace may have changed since; as it was when st no longer has it).
func (a *Agent) decideAgain(st *workload.State, src string, dst *workload.Workload, port uint16) policy.Decision {
	if w := st.WorkloadByUID(dst.UID); w != nil {
		dst = w
	}
	return a.decide(st, src, &pod{w: dst}, port)
}

// revokedReason is the access line's reason for a revoked connection: the policy that decided.
func revokedReason(d *policy.Decision) string {
	if d.Policy != "" {
		return "revoked by " + d.Policy + ": " + d.Reason
	}
	return "revoked: " + d.Reason
}

// resetBoth closes a relayed pair with RSTs: the client must see its connection refused, not
// ended cleanly, and the app the same.
func resetBoth(conns ...net.Conn) {
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

// killAll resets every registered connection (the drain deadline of a handed-over agent).
func (r *openConns) killAll() {
	r.mu.Lock()
	open := make([]*openConn, 0, len(r.conns))
	for c := range r.conns {
		open = append(open, c)
	}
	r.mu.Unlock()
	for _, c := range open {
		c.kill()
	}
}

// revokeIdentity ends every open connection whose source is id, relayed (reset) or on the
// kernel path (destroyed), with an access line saying it was revoked: what an identity source
// that revokes (identity.Revoker) drives. It returns how many it ended.
func (a *Agent) revokeIdentity(id spiffeid.ID) int {
	d := policy.Decision{Reason: "the identity " + id.String() + " was revoked by its source"}
	a.open.mu.Lock()
	var victims []*openConn
	for c := range a.open.conns {
		if c.src == id.String() {
			victims = append(victims, c)
		}
	}
	a.open.mu.Unlock()
	n := 0
	for _, c := range victims {
		c.mu.Lock()
		already := c.revoked != nil
		if !already {
			c.revoked = &d
		}
		c.mu.Unlock()
		if !already {
			c.kill()
			n++
		}
	}
	type victim struct {
		kc  *kernelConn
		src *pod
	}
	var kernel []victim
	a.kernelOpen.mu.Lock()
	for _, kc := range a.kernelOpen.conns {
		if kc.revoked != nil {
			continue
		}
		if src := a.podByIP(kc.src.Addr()); src != nil && src.id == id {
			kc.revoked = &d
			kernel = append(kernel, victim{kc, src})
		}
	}
	a.kernelOpen.mu.Unlock()
	for _, v := range kernel {
		if err := netns.DestroyTCP(v.src.w.Netns, v.kc.src, v.kc.dst); err != nil {
			a.log.Warn("revoked kernel-path connection not aborted", "src", v.kc.src, "dst", v.kc.dst, "err", err)
		}
	}
	return n + len(kernel)
}
