package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cniv1 "github.com/amesh-dev/amesh/api/cni/v1"
)

// addPodTimeout bounds how long AddPod waits for the pod to show in the state and be enrolled,
// when the caller's context has no earlier deadline.
const addPodTimeout = 20 * time.Second

// startAPIs serves the health endpoints and the enrollment API until ctx is done; Wait on the
// result waits for both to have stopped.
func (a *Agent) startAPIs(ctx context.Context) (*sync.WaitGroup, error) {
	var wg sync.WaitGroup
	refused := a.metrics.CounterVec("amesh_endpoint_refusals_total", "Connections to the agent's HTTP endpoints (health, metrics, admin) closed at once: over the budget of their source or of the endpoint.", "endpoint", "reason")
	if a.cfg.HealthAddr != "" {
		ln := a.inheritedTCP(healthSocketName)
		if ln == nil {
			l, err := net.Listen("tcp", a.cfg.HealthAddr)
			if err != nil {
				return nil, fmt.Errorf("agent: health endpoint: %w", err)
			}
			ln = l.(*net.TCPListener)
		}
		a.healthLn = ln
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz/live", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "live") })
		mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
			if ok, why := a.readiness(); !ok {
				// As ztunnel answers: 500 and what is pending.
				http.Error(w, "not ready, pending: "+why, http.StatusInternalServerError)
				return
			}
			fmt.Fprintln(w, "ready")
		})
		serveEndpoint(ctx, &wg, "health", ln, mux, endpointTimeouts{readHeader: 5 * time.Second, idle: 30 * time.Second, write: 10 * time.Second}, refused)
	}
	if a.cfg.AdminAddr != "" {
		ln := a.inheritedTCP(adminSocketName)
		if ln == nil {
			l, err := net.Listen("tcp", a.cfg.AdminAddr)
			if err != nil {
				return nil, fmt.Errorf("agent: admin endpoint: %w", err)
			}
			ln = l.(*net.TCPListener)
		}
		a.adminLn = ln
		// No write timeout: /debug/pprof/profile streams for as long as it was asked to.
		serveEndpoint(ctx, &wg, "admin", ln, a.adminMux(), endpointTimeouts{readHeader: 5 * time.Second, idle: 30 * time.Second}, refused)
	}
	if a.cfg.MetricsAddr != "" {
		ln := a.inheritedTCP(metricsSocketName)
		if ln == nil {
			l, err := net.Listen("tcp", a.cfg.MetricsAddr)
			if err != nil {
				return nil, fmt.Errorf("agent: metrics endpoint: %w", err)
			}
			ln = l.(*net.TCPListener)
		}
		a.metricsLn = ln
		mux := http.NewServeMux()
		mux.Handle("/metrics", a.metrics.Handler())
		mux.Handle("/stats/prometheus", a.metrics.Handler())
		serveEndpoint(ctx, &wg, "metrics", ln, mux, endpointTimeouts{readHeader: 5 * time.Second, idle: 90 * time.Second, write: 30 * time.Second}, refused)
	}
	if a.cfg.CNISocket != "" {
		ln, err := a.listenEnrollment(a.cfg.CNISocket)
		if err != nil {
			return nil, err
		}
		gs := grpc.NewServer()
		cniv1.RegisterEnrollmentServer(gs, &enrollment{a: a})
		wg.Go(func() {
			if err := gs.Serve(ln); err != nil {
				a.log.Warn("enrollment API stopped", "err", err)
			}
		})
		wg.Go(func() {
			<-ctx.Done()
			gs.Stop() // in-flight AddPods see their context cancelled and fail: kubelet retries
			if !a.released.Load() {
				os.Remove(a.cfg.CNISocket) // else it is the successor's socket now
			}
		})
		a.log.Info("enrollment API listening", "socket", a.cfg.CNISocket)
	}
	return &wg, nil
}

// listenEnrollment listens on the enrollment API's unix socket, which only the agent's own
// user may reach, since whoever can connect can take pods in and out of the mesh: its directory
// is made 0700 (an existing one too: a hostPath the runtime created is 0755) and the socket
// 0600, and every connection's peer credentials (SO_PEERCRED) are checked, in case a mount or a
// hand loosened those modes.
func (a *Agent) listenEnrollment(path string) (net.Listener, error) {
	if l, ok := a.inheritedListener(cniSocketName).(*net.UnixListener); ok {
		a.cniLn = l
		return &ownerOnly{Listener: l, uid: os.Geteuid(), a: a}, nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: enrollment socket: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: enrollment socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("agent: enrollment socket: remove stale %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("agent: enrollment socket: %w", err)
	}
	// Closing must not unlink it: after a hand-over the path is the successor's socket too.
	ln.SetUnlinkOnClose(false)
	a.cniLn = ln
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: enrollment socket: %w", err)
	}
	return &ownerOnly{Listener: ln, uid: os.Geteuid(), a: a}, nil
}

// ownerOnly is a unix listener that serves only peers running as uid, closing others unserved.
type ownerOnly struct {
	net.Listener
	uid int
	a   *Agent
}

// Accept returns the next connection from a peer running as l.uid.
func (l *ownerOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err == nil && uid == l.uid {
			return c, nil
		}
		l.a.enrollRefused.Add(1)
		l.a.log.Warn("enrollment API: connection refused: the peer is not the agent's user", "peer_uid", uid, "err", err)
		c.Close()
	}
}

// enrollment is the agent's side of amesh-cni's calls.
type enrollment struct {
	cniv1.UnimplementedEnrollmentServer
	a *Agent
}

func podName(ref *cniv1.PodRef) string {
	if ref == nil {
		return "?"
	}
	return ref.GetNamespace() + "/" + ref.GetName()
}

// uidOf returns the pod's UID: the one CNI_ARGS carried, else the state's for that name.
func (e *enrollment) uidOf(ref *cniv1.PodRef) string {
	if uid := ref.GetUid(); uid != "" {
		return uid
	}
	for _, w := range e.a.store.Load().WorkloadsOnNode(e.a.cfg.Node) {
		if w.Namespace == ref.GetNamespace() && w.Name == ref.GetName() {
			return w.UID
		}
	}
	if e.a.cfg.Kube == nil {
		return ref.GetNamespace() + "/" + ref.GetName() // the state file's default UID
	}
	return ""
}

// AddPod records the pod's sandbox and returns once the pod is enrolled — listeners up in its
// netns, redirection attached, certificate warmed — or at once for a pod that is not in the mesh.
func (e *enrollment) AddPod(ctx context.Context, req *cniv1.AddPodRequest) (*cniv1.AddPodReply, error) {
	a := e.a
	start := time.Now()
	name := podName(req.GetPod())
	if req.GetNetns() == "" || req.GetPod().GetNamespace() == "" || req.GetPod().GetName() == "" {
		return nil, status.Errorf(codes.InvalidArgument, "amesh-agent: AddPod for %s: netns, namespace and name are required", name)
	}
	var ips []netip.Addr
	for _, s := range req.GetIps() {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "amesh-agent: AddPod for %s: ip %q: %v", name, s, err)
		}
		ips = append(ips, ip.Unmap())
	}
	ctx, cancel := context.WithTimeout(ctx, addPodTimeout)
	defer cancel()
	// The pod object may reach the agent's cache a moment after kubelet calls CNI.
	var uid string
	for {
		if uid = e.uidOf(req.GetPod()); uid != "" {
			break
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return nil, status.Errorf(codes.Unavailable, "amesh-agent: pod %s is not in the agent's view of the cluster yet (%v): retry", name, err)
		}
	}
	a.mu.Lock()
	delete(a.enrollErrs, uid) // an earlier attempt's failure says nothing of this one
	a.mu.Unlock()
	a.cniPods.add(cniPod{uid: uid, namespace: req.GetPod().GetNamespace(), name: req.GetPod().GetName(), netns: req.GetNetns(), ips: ips})
	for {
		w := a.store.Load().WorkloadByUID(uid)
		switch {
		case w != nil && w.Node != a.cfg.Node:
			return nil, status.Errorf(codes.FailedPrecondition, "amesh-agent: pod %s is scheduled on node %s, this agent serves %s", name, w.Node, a.cfg.Node)
		case w != nil && !w.Enrolled():
			a.log.Info("cni add: pod not in the mesh", "pod", name, "uid", uid, "took", time.Since(start))
			return &cniv1.AddPodReply{Enrolled: false, Detail: "not in the mesh"}, nil
		case w != nil && a.enrolledWith(uid, req.GetNetns()):
			a.log.Info("cni add: pod enrolled", "pod", name, "uid", uid, "took", time.Since(start))
			return &cniv1.AddPodReply{Enrolled: true, Detail: "enrolled"}, nil
		}
		if err := a.enrollErr(uid); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "amesh-agent: pod %s must be in the mesh but enrolling it failed: %v", name, err)
		}
		if err := sleepCtx(ctx, 2*time.Millisecond); err != nil {
			return nil, status.Errorf(codes.Unavailable, "amesh-agent: pod %s (netns %s) must be in the mesh but was not enrolled in time (%v); see the agent's log: retry", name, req.GetNetns(), err)
		}
	}
}

func (a *Agent) enrollErr(uid string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.enrollErrs[uid]
}

// enrolledWith reports whether the pod with uid is enrolled in the netns at path.
func (a *Agent) enrolledWith(uid, netns string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.pods[uid]
	return ok && p.w.Netns == netns
}

// DelPod unenrolls the pod and keeps it out until a new ADD.
func (e *enrollment) DelPod(_ context.Context, req *cniv1.DelPodRequest) (*cniv1.DelPodReply, error) {
	uid := e.uidOf(req.GetPod())
	if uid == "" {
		return &cniv1.DelPodReply{}, nil // never known: nothing to undo
	}
	e.a.cniPods.del(uid)
	e.a.log.Info("cni del", "pod", podName(req.GetPod()), "uid", uid)
	return &cniv1.DelPodReply{}, nil
}

// CheckPod says whether the pod is enrolled, and fails if it must be and is not.
func (e *enrollment) CheckPod(_ context.Context, req *cniv1.CheckPodRequest) (*cniv1.CheckPodReply, error) {
	name := podName(req.GetPod())
	uid := e.uidOf(req.GetPod())
	w := e.a.store.Load().WorkloadByUID(uid)
	switch {
	case w == nil:
		return nil, status.Errorf(codes.NotFound, "amesh-agent: pod %s is not in the agent's view of the cluster", name)
	case !w.Enrolled():
		return &cniv1.CheckPodReply{Enrolled: false, Detail: "not in the mesh"}, nil
	}
	e.a.mu.Lock()
	p, ok := e.a.pods[uid]
	e.a.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "amesh-agent: pod %s must be in the mesh but is not enrolled", name)
	}
	if n := req.GetNetns(); n != "" && n != p.w.Netns {
		return nil, status.Errorf(codes.FailedPrecondition, "amesh-agent: pod %s is enrolled in netns %s, not %s", name, p.w.Netns, n)
	}
	return &cniv1.CheckPodReply{Enrolled: true, Detail: "enrolled in " + p.w.Netns}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
