package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/amesh-dev/amesh/handoff"
)

// The hand-over of an upgrade (DESIGN §6 and issue 16 §3): the new agent takes the running
// one's listening sockets (every enrolled pod's, the health endpoint's, the enrollment API's)
// over Config.HandoffSocket, serves them, and only then does the old one stop accepting and
// drain. The sockets are the same ones, so the kernel's steering (sk_lookup's listener map, the
// connect rewrite to :15001) never points at nothing. Kernel-path connections have no agent in
// their data path and are untouched; their registry passes to the new agent with the sockets.

// Names of the handed-over sockets.
const (
	healthSocketName  = "health"
	metricsSocketName = "metrics"
	adminSocketName   = "admin"
	cniSocketName     = "cni"
)

// podListenerName names a pod's listener in a hand-over: the pod's UID and the listener's
// address in its netns, which both agents derive alike.
func podListenerName(uid, addr string) string { return "pod/" + uid + "/" + addr }

// takeOver takes the sockets of the agent serving the hand-off socket, if one does. The agent
// then serves them (startAPIs, enrollLocked) and calls finishTakeover once its pods are
// enrolled. No predecessor is no error.
func (a *Agent) takeOver(ctx context.Context) error {
	if a.cfg.HandoffSocket == "" {
		return nil
	}
	tctx, cancel := context.WithTimeout(ctx, handoff.Timeout)
	defer cancel()
	t, err := handoff.Take(tctx, a.cfg.HandoffSocket, a.handoffOwner())
	if errors.Is(err, handoff.ErrNoPredecessor) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent: take over from the running agent (%s): %w", a.cfg.HandoffSocket, err)
	}
	a.taking, a.inherited = t, t.Files
	a.log.Info("taking over from the running agent", "sockets", len(t.Files), "handoff_socket", a.cfg.HandoffSocket)
	return nil
}

// handoffOwner is what this agent's sockets serve: its node and pins. A successor must serve
// the same.
func (a *Agent) handoffOwner() string { return a.cfg.Node + " " + a.cfg.PinDir }

// inheritedTCP returns the handed-over TCP listener called name, or nil.
func (a *Agent) inheritedTCP(name string) *net.TCPListener {
	l, _ := a.inheritedListener(name).(*net.TCPListener)
	return l
}

// inheritedListener returns the handed-over listener called name, or nil; it is the caller's.
func (a *Agent) inheritedListener(name string) net.Listener {
	f, ok := a.inherited[name]
	if !ok {
		return nil
	}
	delete(a.inherited, name)
	defer f.Close() // the listener holds a duplicate
	l, err := net.FileListener(f)
	if err != nil {
		a.log.Warn("a handed-over socket is unusable; opening a new one", "socket", name, "err", err)
		return nil
	}
	return l
}

// finishTakeover completes a hand-over once this agent serves the sockets: the predecessor
// stops accepting and hands its kernel-path registry over; sockets of pods this agent did not
// enroll are closed (their connections are refused, as for any pod not enrolled).
func (a *Agent) finishTakeover(start time.Time) {
	state, err := a.taking.Finish()
	a.taking = nil
	for name, f := range a.inherited {
		a.log.Info("closing a handed-over socket no pod here uses", "socket", name)
		f.Close()
	}
	a.inherited = nil
	if err != nil {
		// The predecessor may or may not have stopped: both serving the sockets is harmless.
		a.log.Warn("hand-over not confirmed by the previous agent", "err", err)
	}
	n, rerr := a.kernelOpen.restore(state)
	if rerr != nil {
		a.log.Warn("kernel-path connections of the previous agent not taken over", "err", rerr)
	}
	a.log.Info("took over from the previous agent", "took", time.Since(start), "kernel_conns", n)
}

// serveHandoff offers this agent's sockets to a successor until one takes them or ctx ends.
func (a *Agent) serveHandoff(ctx context.Context) {
	if a.cfg.HandoffSocket == "" {
		return
	}
	srv, err := handoff.Listen(a.cfg.HandoffSocket, a.handoffOwner())
	if err != nil {
		a.log.Error("no hand-off socket: an upgrade of this agent will drop connections", "err", err)
		return
	}
	a.handoffWG.Go(func() {
		err := srv.Serve(ctx, handoffHandler{a}, func(err error) { a.log.Warn("hand-over failed; still serving", "err", err) })
		if err != nil {
			a.log.Warn("hand-off socket stopped", "err", err)
		}
	})
}

// handoffHandler is the agent's side as the predecessor.
type handoffHandler struct{ a *Agent }

// Offer duplicates every listener the agent serves and holds reconciliation (a pod enrolled
// now would get listeners of this agent's that the successor does not know of).
func (h handoffHandler) Offer() (map[string]*os.File, error) {
	a := h.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.released.Load() {
		return nil, errors.New("already handed over")
	}
	files := map[string]*os.File{}
	fail := func(err error) (map[string]*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, err
	}
	for uid, p := range a.pods {
		for _, l := range p.lns {
			f, err := l.File()
			if err != nil {
				return fail(fmt.Errorf("pod %s: %w", uid, err))
			}
			files[podListenerName(uid, l.Addr().String())] = f
		}
	}
	if a.healthLn != nil {
		f, err := a.healthLn.File()
		if err != nil {
			return fail(fmt.Errorf("health listener: %w", err))
		}
		files[healthSocketName] = f
	}
	for name, l := range map[string]*net.TCPListener{metricsSocketName: a.metricsLn, adminSocketName: a.adminLn} {
		if l == nil {
			continue
		}
		f, err := l.File()
		if err != nil {
			return fail(fmt.Errorf("%s listener: %w", name, err))
		}
		files[name] = f
	}
	if a.cniLn != nil {
		f, err := a.cniLn.File()
		if err != nil {
			return fail(fmt.Errorf("enrollment API listener: %w", err))
		}
		files[cniSocketName] = f
	}
	a.handingOver.Store(true)
	a.log.Info("a new agent is taking over: offering sockets", "sockets", len(files))
	return files, nil
}

// Release stops accepting (the successor accepts on the same sockets), stops the kernel-path
// event reader, hands its registry over, and starts the drain.
func (h handoffHandler) Release() (json.RawMessage, error) {
	a := h.a
	a.released.Store(true)
	a.mu.Lock()
	for _, p := range a.pods {
		p.closeListeners()
	}
	a.mu.Unlock()
	if a.healthLn != nil {
		a.healthLn.Close()
	}
	if a.cniLn != nil {
		a.cniLn.Close()
	}
	if a.metricsLn != nil {
		a.metricsLn.Close()
	}
	if a.adminLn != nil {
		a.adminLn.Close()
	}
	if a.stopKernel != nil {
		a.stopKernel()
	}
	state, err := a.kernelOpen.handOver()
	a.log.Info("handed over to the new agent: draining", "timeout", a.cfg.DrainTimeout)
	go a.drainHandedOver()
	close(a.handedOver)
	return state, err
}

// Abort resumes reconciliation: the successor went away.
func (h handoffHandler) Abort() {
	h.a.handingOver.Store(false)
	h.a.log.Warn("the new agent did not take over; serving on")
}

// drainHandedOver is the drain of an agent that handed over (see drainConns).
func (a *Agent) drainHandedOver() {
	defer close(a.drained)
	a.drainConns()
}

// kernelConnState is one kernel-path connection as handed over.
type kernelConnState struct {
	Cookie uint64         `json:"cookie"`
	Start  uint64         `json:"start"`
	Src    netip.AddrPort `json:"src"`
	Dst    netip.AddrPort `json:"dst"`
}

// handOver returns the registry as JSON and empties it: the successor owns it now.
func (k *kernelConns) handOver() (json.RawMessage, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]kernelConnState, 0, len(k.conns))
	for cookie, c := range k.conns {
		if c.revoked == nil {
			out = append(out, kernelConnState{Cookie: cookie, Start: c.start, Src: c.src, Dst: c.dst})
		}
	}
	k.conns = nil
	return json.Marshal(out)
}

// restore adds a predecessor's registry (handOver's JSON) and returns how many it held.
func (k *kernelConns) restore(state json.RawMessage) (int, error) {
	if len(state) == 0 {
		return 0, nil
	}
	var in []kernelConnState
	if err := json.Unmarshal(state, &in); err != nil {
		return 0, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.conns == nil {
		k.conns = map[uint64]*kernelConn{}
	}
	for _, c := range in {
		if len(k.conns) >= maxTracked {
			break
		}
		if _, ok := k.conns[c.Cookie]; !ok {
			k.conns[c.Cookie] = &kernelConn{start: c.Start, src: c.Src, dst: c.Dst, inherited: true}
		}
	}
	return len(in), nil
}
