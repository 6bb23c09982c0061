// Package agent is amesh's node agent: the one place that joins the state view (workload),
// identities (identity), eBPF redirection (redirect), authorization (policy) and the HBONE
// tunnel (tunnel). Per node it enrolls the node's pods that are in the mesh, opens their
// listeners inside their network namespaces (:15001 outbound, :15008 HBONE, :15006 plaintext),
// and carries every captured connection over mutual TLS with SPIFFE identities.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/handoff"
	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/identity/spire"
	"github.com/amesh-dev/amesh/internal/version"
	"github.com/amesh-dev/amesh/metrics"
	"github.com/amesh-dev/amesh/netns"
	"github.com/amesh-dev/amesh/podevents"
	"github.com/amesh-dev/amesh/redirect"
	"github.com/amesh-dev/amesh/tunnel"
	"github.com/amesh-dev/amesh/workload"
	"github.com/amesh-dev/amesh/workload/file"
	"github.com/amesh-dev/amesh/workload/kube"
)

// Config configures an Agent. Node and StatePath are required.
type Config struct {
	// Node is the name of this node in the state view; only its workloads are enrolled.
	Node string
	// StatePath is the YAML state file (local mode), polled for changes. Exactly one of
	// StatePath and Kube is set.
	StatePath string
	// Kube feeds the state from the Kubernetes API server (its PodIPs is set by the agent, from
	// what amesh-cni reports). Pods get their netns from CNI ADD, or, for pods that were running
	// before (a namespace labelled later, an agent restart), from the netns that holds their IP.
	Kube *kube.Source
	// PodEvents, when set, is where a pod's failed enrollment is also reported as a Warning
	// Event on the pod (reason EnrollmentFailed), besides readiness, the log and
	// amesh_enrollment_failures: what the pod's owner sees in `kubectl describe pod`.
	PodEvents *podevents.Recorder
	// CNISocket is the unix socket of the enrollment API amesh-cni calls; none when empty.
	CNISocket string
	// AdminAddr serves the admin API (/config_dump, /logging, /debug/pprof/, /quitquitquit, as
	// ztunnel's); a loopback address only; none when empty. The DaemonSet uses DefaultAdminAddr.
	AdminAddr string
	// AccessLogOff turns the access log off (metrics still count every connection);
	// AccessLogSample, in (0, 1), logs that share of the connections that went well, and every
	// one that did not.
	AccessLogOff    bool
	AccessLogSample float64
	// LogLevel, when set, is the level /logging changes at run time.
	LogLevel *slog.LevelVar
	// MetricsAddr serves Prometheus metrics on /metrics and /stats/prometheus (ztunnel's
	// names, package metrics); none when empty. The DaemonSet uses DefaultMetricsAddr.
	MetricsAddr string
	// HealthAddr serves /healthz/ready (200 once the state has synced and pods are enrolled) and
	// /healthz/live; none when empty. The DaemonSet uses DefaultHealthAddr.
	HealthAddr string
	// StatePoll is how often the state file is polled; file.DefaultInterval when zero.
	StatePoll time.Duration
	// CADir holds the built-in CA (ca.crt, ca.key); a new CA is written there if it is empty.
	CADir string
	// SVIDTTL is the lifetime of issued SVIDs; identity.DefaultSVIDTTL when zero.
	SVIDTTL time.Duration
	// Identity is where the SVIDs of the node's workloads come from: IdentityBuiltin (the
	// built-in CA in CADir; the default) or IdentitySPIRE (the node's SPIRE agent, as its
	// authorized delegate, configured by SPIRE).
	Identity string
	// SPIRE configures the SPIRE source (Identity IdentitySPIRE); its Logger is the agent's.
	SPIRE spire.Config
	// PinDir is the agent's bpffs directory; DefaultPinDir(Node) when empty.
	PinDir string
	// DrainTimeout bounds the graceful drain on shutdown; DefaultDrainTimeout when zero.
	DrainTimeout time.Duration
	// HandoffSocket is the unix socket over which an upgrade's new agent takes this one's
	// listening sockets (package handoff): at start the agent takes over from whichever agent
	// serves it, then serves it for its own successor. None when empty: an upgrade then has a
	// moment with nothing accepting. On SIGTERM an agent that serves it waits up to
	// DrainTimeout for a successor before it stops accepting.
	HandoffSocket string
	// MaxConnsPerSource and MaxStreamsPerSource bound the HBONE connections and streams one
	// source address (a pod of another node) may have open to this node's agent at once: its
	// memory budget (tunnel.ServerConfig's MaxConnsPerPeer and MaxStreamsPerPeer, whose
	// defaults apply when zero). Raise them for a gateway pod that holds thousands of
	// connections to the pods of one node.
	MaxConnsPerSource, MaxStreamsPerSource int
	// SameNode is how a connection between two pods of this node travels: SameNodeSplice
	// (authorized here, where both identities are known, then spliced socket to socket in the
	// kernel, never encrypted on a path that never leaves the node), SameNodeKernel (the first
	// connection of a pod pair is spliced, later ones go pod to pod with no agent in the data
	// path while the agent lives), SameNodeHBONE (the full tunnel, as across nodes), or
	// SameNodeAuto (the default: kernel where redirect's ProbeKernelPath passes, else splice).
	SameNode SameNodeMode
	// Logger for operational logs; AccessLog for one line per connection (Logger when nil).
	Logger, AccessLog *slog.Logger
}

// Identity sources (Config.Identity).
const (
	IdentityBuiltin = identity.SourceBuiltin
	IdentitySPIRE   = identity.SourceSPIRE
)

// SameNodeMode selects the same-node path.
type SameNodeMode string

// Same-node paths.
const (
	SameNodeSplice SameNodeMode = "splice"
	SameNodeKernel SameNodeMode = "kernel"
	SameNodeHBONE  SameNodeMode = "hbone"
	SameNodeAuto   SameNodeMode = "auto"
)

// Agent is one node's agent. Create it with New, run it with Run.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	access *slog.Logger

	feed       feed
	stopFeed   context.CancelFunc
	store      *workload.Store
	cniPods    cniRegistry
	netnsCache netns.Scanner
	// ambiguousNetns: pods whose IP several namespaces hold, already warned of (reconcile's
	// goroutine only); ambiguousPods is its size, for the metrics. unresolvedNetns: the mesh
	// pods of the node whose namespace the last reconcile could not find or choose.
	ambiguousNetns  map[string]bool
	ambiguousPods   atomic.Int64
	unresolvedNetns atomic.Int64
	synced          atomic.Bool // the state has been reconciled once
	src             identity.NodeSource
	red             *redirect.Redirector
	srv             *tunnel.Server
	cli             *tunnel.Client

	mu         sync.Mutex
	pods       map[string]*pod  // by workload UID
	enrollErrs map[string]error // by workload UID: why its last enrollment failed
	byIP       map[netip.Addr]*pod

	metrics *metrics.Registry
	// observeEnrollment records how long a pod's enrollment took, in seconds.
	observeEnrollment func(float64)
	lbCounter         atomic.Uint64
	// stateUpdates counts the states the agent applied.
	stateUpdates atomic.Uint64
	// acceptErrors counts accept errors of the pods' listeners (each retried).
	acceptErrors atomic.Uint64
	// dialsRefused counts connections refused over a pod's dial budget (maxPodDials).
	dialsRefused atomic.Uint64
	// enrollRefused counts enrollment-API connections from a user other than the agent's.
	enrollRefused atomic.Uint64
	conns         sync.WaitGroup
	// open are the relayed connections policy decided, for revocation on a change.
	open openConns
	// kernelOpen are the open short-circuited connections (kernel path).
	kernelOpen kernelConns
	// hboneOpen maps an HBONE stream's request to its entry in open, from its upstream dial to
	// its access line.
	hboneOpen sync.Map // *tunnel.Request → *hboneConn
	// active counts the connections being handled (each pod listener's, and HBONE streams).
	active atomic.Int64

	// The hand-over of an upgrade (handoff.go). As successor: taking and inherited, the
	// predecessor's sockets by name, until finishTakeover. As predecessor: handingOver holds
	// reconciliation while an offer is out, released is set once the successor serves, then
	// handedOver is closed and, when the drain is over, drained.
	taking      *handoff.Taking
	inherited   map[string]*os.File
	handingOver atomic.Bool
	released    atomic.Bool
	handedOver  chan struct{}
	drained     chan struct{}
	handoffWG   sync.WaitGroup
	healthLn    *net.TCPListener
	metricsLn   *net.TCPListener
	adminLn     *net.TCPListener
	// quit is closed by the admin API's /quitquitquit: Run stops as on SIGTERM.
	quit     chan struct{}
	quitOnce sync.Once
	cniLn    *net.UnixListener
	// stopKernel stops the kernel-path event reader and heartbeat and waits for them.
	stopKernel func()
}

// Defaults of Config, which cmd/amesh-agent's flags show.
const (
	// DefaultDrainTimeout bounds the graceful drain on shutdown.
	DefaultDrainTimeout = 5 * time.Second
	// DefaultHealthAddr is where a cluster's agent serves readiness (the port Istio's ztunnel
	// uses for it, DESIGN §3).
	DefaultHealthAddr = ":15021"
	// DefaultMetricsAddr is where a cluster's agent serves its metrics (ztunnel's port).
	DefaultMetricsAddr = ":15020"
	// DefaultAdminAddr is where a cluster's agent serves its admin API: the node's loopback.
	DefaultAdminAddr = "127.0.0.1:15000"
	// DefaultHandoffSocket is where a cluster's agent hands its sockets to its successor: beside
	// the enrollment API's socket, in the directory both agent pods of a rollout mount.
	DefaultHandoffSocket = "/var/run/amesh/handoff.sock"
)

// DefaultPinDir is the bpffs directory of the agent of node: one per node, so that several
// agents of a lab can share a host.
func DefaultPinDir(node string) string { return filepath.Join("/sys/fs/bpf/amesh", node) }

// New loads the state file, the CA and the eBPF programs (re-adopting pinned ones). Any failure,
// a missing kernel feature among them, is an error that names it.
func New(cfg Config) (_ *Agent, err error) {
	if cfg.Node == "" || (cfg.StatePath == "") == (cfg.Kube == nil) {
		return nil, errors.New("agent: a node name and either a state file or Kubernetes are required")
	}
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir(cfg.Node)
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.AdminAddr != "" {
		if err := checkAdminAddr(cfg.AdminAddr); err != nil {
			return nil, err
		}
	}
	switch cfg.SameNode {
	case "":
		cfg.SameNode = SameNodeAuto
	case SameNodeAuto, SameNodeSplice, SameNodeKernel, SameNodeHBONE:
	default:
		return nil, fmt.Errorf("agent: same-node mode %q: want %q, %q, %q or %q", cfg.SameNode, SameNodeAuto, SameNodeKernel, SameNodeSplice, SameNodeHBONE)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("node", cfg.Node)
	access := cfg.AccessLog
	if access == nil {
		access = log
	}
	a := &Agent{cfg: cfg, log: log, access: access, pods: map[string]*pod{}, byIP: map[netip.Addr]*pod{}, enrollErrs: map[string]error{},
		handedOver: make(chan struct{}), drained: make(chan struct{}), metrics: metrics.New(version.Version), quit: make(chan struct{})}

	a.cniPods.init()
	if cfg.Kube != nil {
		cfg.Kube.PodIPs = a.cniPods.ips
		a.feed = kubeFeed{cfg.Kube}
	} else {
		a.feed = fileFeed{&file.Source{Path: cfg.StatePath, Interval: cfg.StatePoll, Logger: log}}
	}
	// The feed (the informers) lives as long as the agent; the Kubernetes source bounds its own
	// wait for the first State.
	feedCtx, stopFeed := context.WithCancel(context.Background())
	a.stopFeed = stopFeed
	st, err := a.feed.start(feedCtx)
	if err != nil {
		stopFeed()
		return nil, fmt.Errorf("agent: state: %w", err)
	}
	defer func() {
		if err != nil {
			stopFeed()
		}
	}()
	if _, ok := st.Node(cfg.Node); !ok && cfg.Kube == nil {
		return nil, fmt.Errorf("agent: node %q is not in %s", cfg.Node, cfg.StatePath)
	}
	a.store = workload.NewStore(st)

	if a.src, err = openSource(cfg, st.TrustDomain(), log); err != nil {
		return nil, err
	}

	a.red, err = redirect.Open(redirect.Config{PinDir: cfg.PinDir, Logger: log})
	if err != nil {
		a.src.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := a.chooseSameNode(); err != nil {
		a.red.Close()
		a.src.Close()
		return nil, err
	}
	a.srv, err = tunnel.NewServer(tunnel.ServerConfig{
		Source:            a.src,
		Authorize:         a.authorizeHBONE,
		DialUpstream:      a.dialHBONEApp,
		OnStream:          a.logInbound,
		Logger:            log,
		MaxConnsPerPeer:   cfg.MaxConnsPerSource,
		MaxStreamsPerPeer: cfg.MaxStreamsPerSource,
	})
	if err != nil {
		a.red.Close()
		a.src.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	observeHandshake := a.metrics.Histogram("amesh_hbone_handshake_duration_seconds", "How long a new outbound HBONE connection took to be ready (TCP, TLS 1.3, HTTP/2), when it succeeded.")
	a.cli, err = tunnel.NewClient(tunnel.ClientConfig{Source: a.src, Dial: a.dialHBONE, Logger: log,
		OnHandshake: func(d time.Duration, err error) {
			if err == nil {
				observeHandshake(d.Seconds())
			}
		}})
	if err != nil {
		a.red.Close()
		a.src.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.registerMetrics()
	return a, nil
}

// chooseSameNode settles SameNodeAuto on the fastest path this kernel runs correctly, and
// refuses an explicit kernel mode the kernel cannot run, rather than silently downgrading it.
func (a *Agent) chooseSameNode() error {
	switch a.cfg.SameNode {
	case SameNodeAuto:
		if err := a.red.ProbeKernelPath(); err != nil {
			a.cfg.SameNode = SameNodeSplice
			a.log.Warn("same-node kernel short-circuit unavailable, using splice", "err", err)
			return nil
		}
		// A connection on the kernel path has no agent in it: only SOCK_DESTROY can end it when
		// a policy change denies it. Without it, auto keeps every pair where the agent can.
		if err := netns.ProbeDestroy(); err != nil {
			a.cfg.SameNode = SameNodeSplice
			a.log.Warn("open kernel-path connections could not be revoked on this kernel: using splice", "err", err)
			return nil
		}
		a.cfg.SameNode = SameNodeKernel
	case SameNodeKernel:
		if err := a.red.ProbeKernelPath(); err != nil {
			return fmt.Errorf("agent: --same-node=kernel: %w (use auto or splice)", err)
		}
		if err := netns.ProbeDestroy(); err != nil {
			a.log.Warn("--same-node=kernel without SOCK_DESTROY: a policy change will not end open kernel-path connections, only new ones (auto would use splice)", "err", err)
		}
	}
	return nil
}

// openSource opens the identity source cfg names.
func openSource(cfg Config, td spiffeid.TrustDomain, log *slog.Logger) (identity.NodeSource, error) {
	switch cfg.Identity {
	case "", IdentityBuiltin:
		ca, err := openCA(td, cfg.CADir, cfg.SVIDTTL, cfg.Kube != nil)
		if err != nil {
			return nil, err
		}
		return identity.NewCache(ca, log), nil
	case IdentitySPIRE:
		sc := cfg.SPIRE
		sc.Logger = log
		src, err := spire.New(context.Background(), sc)
		if err != nil {
			return nil, fmt.Errorf("agent: --identity=spire: %w", err)
		}
		if src.Ready() == nil {
			if _, err := src.GetX509BundleForTrustDomain(td); err != nil {
				log.Error("SPIRE has no bundle for the mesh's trust domain: every workload will be refused (SPIRE's trust_domain must be the mesh's)", "trust_domain", td.Name(), "err", err)
			}
		}
		return src, nil
	}
	return nil, fmt.Errorf("agent: identity source %q: want %q or %q", cfg.Identity, IdentityBuiltin, IdentitySPIRE)
}

// openCA loads the built-in CA from dir; without Kubernetes it makes one there when there is
// none. With --kube it never does: every node must issue from the one root the amesh-ca Secret
// holds (deploy/), and an agent with a root of its own would split the mesh.
func openCA(td spiffeid.TrustDomain, dir string, ttl time.Duration, kube bool) (*identity.CA, error) {
	if dir == "" {
		return nil, errors.New("agent: no CA directory (--ca-dir)")
	}
	cfg := identity.CAConfig{SVIDTTL: ttl}
	if !kube {
		ca, err := identity.LoadOrCreateCA(td, dir, cfg)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		return ca, nil
	}
	ca, err := identity.LoadCA(td, dir, cfg)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("agent: no CA in %s (with --kube it is the amesh-ca Secret that deploy/'s amesh-ca-init Job creates, mounted there): %w", dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return ca, nil
}

// Run enrolls this node's pods and serves them until ctx is done, following state changes;
// then it stops accepting, drains open connections for DrainTimeout and returns. Pinned
// redirection stays: enrolled pods fail closed until the agent is back.
func (a *Agent) Run(ctx context.Context) error {
	// What the agent runs ends when Run says so, after the drain, not when ctx does: the pods'
	// listeners and relays live in runCtx, and a drain that ended them first would drain nothing.
	// /quitquitquit stops the agent as SIGTERM does.
	ctx, stopCtx := context.WithCancel(ctx)
	defer stopCtx()
	go func() {
		select {
		case <-a.quit:
			a.log.Info("stopping: /quitquitquit")
			stopCtx()
		case <-ctx.Done():
		}
	}()
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		a.feed.run(runCtx, a.store)
	}()
	if a.cfg.PodEvents != nil {
		go a.cfg.PodEvents.Run(runCtx)
	}
	updates, stop := a.store.Subscribe()
	defer stop()
	start := time.Now()
	err := a.takeOver(runCtx)
	if err == nil && a.taking == nil && a.cfg.SameNode == SameNodeKernel {
		// Verdicts pinned by an earlier run (one that was killed, so could not withdraw them)
		// were decided on a state that may be gone: forget them before the first heartbeat
		// would bring them back to life. The pairs' next connects are decided again. A
		// predecessor handing over is alive and its verdicts current: they stay.
		if ferr := a.red.FlushKernelPaths(); ferr != nil {
			err = fmt.Errorf("agent: %w", ferr)
		}
	}
	var servers *sync.WaitGroup
	if err == nil {
		servers, err = a.startAPIs(runCtx)
	}
	if err != nil {
		if a.taking != nil {
			a.taking.Abort() // the predecessor serves on
			for _, f := range a.inherited {
				f.Close()
			}
		}
		cancel()
		<-feedDone
		a.stopFeed()
		a.shutdown()
		return err
	}
	defer servers.Wait()
	defer a.handoffWG.Wait()
	if a.taking == nil {
		// A successor starts its reader once the predecessor stopped its own (one ring buffer).
		a.startKernelPath(runCtx)
	}
	handoffServed := false
	revoked, stopRevocations := a.src.Revocations()
	defer stopRevocations()
	source := a.cfg.StatePath
	if a.cfg.Kube != nil {
		source = "kubernetes"
	}
	// HBONE's TLS runs in user space (Go's crypto/tls). What the kernel would offer for kTLS is
	// logged so that the choice is visible per node (issue 20: kTLS is not built, since no
	// kernel amesh is tested on has it; see the README's "Runtime and kernel TLS").
	ktls := "available"
	if err := tunnel.ProbeKernelTLS(); err != nil {
		ktls = err.Error()
	}
	a.log.Info("agent started", "pin_dir", a.cfg.PinDir, "state", source, "same_node", a.cfg.SameNode, "tls", "user", "kernel_tls", ktls)
	// A failed enrollment (a netns not there yet, a transient kernel error), or a pod whose
	// namespace could not be found or chosen (TestAmbiguousNetns), is retried with backoff, not
	// left until the next state change, which may never come for a running pod.
	var retry enrollRetry
	for {
		select {
		case <-ctx.Done():
			a.synced.Store(false)
			retry.stop()
			a.awaitSuccessor()
			// Drain before the pods' contexts end with runCtx: the relays they hold carry on.
			a.drain()
			cancel()
			if a.stopKernel != nil {
				a.stopKernel()
			}
			a.shutdown()
			<-feedDone
			a.stopFeed()
			return nil
		case st, ok := <-updates:
			if !ok {
				continue
			}
			a.stateUpdates.Add(1)
			a.reconcile(runCtx, st)
			if n := a.revokeDenied(st) + a.revokeKernel(st); n > 0 {
				a.log.Info("open connections revoked by a state change", "count", n)
			}
			a.synced.Store(true)
			if a.taking != nil {
				a.finishTakeover(start)
				a.startKernelPath(runCtx)
			}
			if !handoffServed {
				handoffServed = true
				a.serveHandoff(runCtx)
			}
			retry.after(a.pendingEnrollments())
		case id := <-revoked:
			if a.cfg.SameNode == SameNodeKernel {
				// Cached kernel-path verdicts of the identity's pods would let new connections
				// skip the agent, and with it the check that the identity is still held.
				a.mu.Lock()
				a.revalidateKernelPathsLocked(a.store.Load())
				a.mu.Unlock()
			}
			n := a.revokeIdentity(id)
			a.log.Info("identity revoked: its open connections ended", "id", id.String(), "count", n)
		case <-retry.c:
			a.reconcile(runCtx, a.store.Load())
			retry.after(a.pendingEnrollments())
		case <-a.cniPods.changed:
			// amesh-cni reported a pod: its IPs are in the next State (Kubernetes) or its netns
			// resolves now (either source).
			if a.cfg.Kube != nil {
				a.cfg.Kube.Refresh()
			} else {
				a.reconcile(runCtx, a.store.Load())
			}
		}
	}
}

// startKernelPath runs the kernel path's event reader and heartbeat until ctx ends or
// stopKernel is called.
func (a *Agent) startKernelPath(ctx context.Context) {
	if a.cfg.SameNode != SameNodeKernel {
		return
	}
	kctx, kcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.runKernelPath(kctx)
	}()
	var once sync.Once
	a.stopKernel = func() { once.Do(func() { kcancel(); <-done }) }
}

// awaitSuccessor is SIGTERM's first step for an agent with a hand-off socket: it keeps serving
// for up to DrainTimeout while a successor may come to take over (a DaemonSet rollout with
// maxSurge starts the new agent beside the old one, and which of the two the kubelet's probes
// of the new pod reach is not known), so that stopping never leaves a moment with nobody
// accepting.
func (a *Agent) awaitSuccessor() {
	if a.cfg.HandoffSocket == "" || a.released.Load() {
		return
	}
	a.log.Info("stopping: waiting for a new agent to take over", "timeout", a.cfg.DrainTimeout)
	select {
	case <-a.handedOver:
	case <-time.After(a.cfg.DrainTimeout):
		a.log.Info("no new agent took over")
	}
}

// drain stops accepting on every pod's listeners and lets the connections open now finish, up
// to DrainTimeout. A handed-over agent began its drain at the hand-over: it waits for that one.
func (a *Agent) drain() {
	if a.released.Load() {
		<-a.drained
		return
	}
	a.log.Info("agent stopping: draining connections", "timeout", a.cfg.DrainTimeout)
	a.mu.Lock()
	for _, p := range a.pods {
		p.closeListeners()
	}
	a.mu.Unlock()
	a.drainConns()
}

// drainConns waits up to DrainTimeout for the connections the agent relays to finish (HBONE
// peers are told with GOAWAY to open new streams elsewhere), then cuts the rest and says how
// many there were.
func (a *Agent) drainConns() {
	dctx, cancel := context.WithTimeout(context.Background(), a.cfg.DrainTimeout)
	defer cancel()
	done := make(chan struct{})
	go func() {
		a.srv.Shutdown(dctx)
		a.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
		a.log.Info("drained: every connection of this agent finished")
		return
	case <-dctx.Done():
	}
	cut := a.active.Load()
	a.hboneOpen.Range(func(any, any) bool { cut++; return true })
	a.log.Warn("drain deadline: cutting the connections still open", "cut", cut, "timeout", a.cfg.DrainTimeout)
	a.cli.Close()
	a.open.killAll()
}

// shutdown ends what the agent still runs once it drained; pinned redirection stays.
func (a *Agent) shutdown() {
	a.mu.Lock()
	for _, p := range a.pods {
		p.stop()
	}
	a.mu.Unlock()
	a.cli.Close()
	a.red.Close()
	a.src.Close()
	a.log.Info("agent stopped")
}

// Uninstall removes every pin and attachment of the agent whose pins are in pinDir.
func Uninstall(pinDir string) error {
	r, err := redirect.Open(redirect.Config{PinDir: pinDir})
	if err != nil {
		return fmt.Errorf("agent: uninstall: %w", err)
	}
	if err := r.Uninstall(); err != nil {
		return err
	}
	// The directory of the default pin dirs, which the first agent of the node made: gone too
	// once no other agent's pins are in it (Remove refuses a directory that is not empty).
	if parent := filepath.Dir(DefaultPinDir("node")); filepath.Dir(pinDir) == parent {
		if err := os.Remove(parent); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
			return fmt.Errorf("agent: uninstall: %w", err)
		}
	}
	return nil
}

// Pods returns the UIDs of the pods the agent serves now.
func (a *Agent) Pods() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.pods))
	for uid := range a.pods {
		out = append(out, uid)
	}
	return out
}
