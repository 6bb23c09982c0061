// Command amesh-agent is amesh's node agent: it captures the TCP of this node's enrolled pods
// with eBPF, inside each pod's network namespace, and carries it over HBONE (HTTP/2 CONNECT in
// mutual TLS 1.3) with the pods' SPIFFE identities.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/amesh-dev/amesh/agent"
	cniv1 "github.com/amesh-dev/amesh/api/cni/v1"
	"github.com/amesh-dev/amesh/cniplugin"
	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/identity/spire"
	"github.com/amesh-dev/amesh/podevents"
	"github.com/amesh-dev/amesh/workload/kube"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/rest"
)

func main() {
	os.Exit(run())
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// envInt is the integer in the environment variable name, 0 when it is unset.
func envInt(name string) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s=%q: want a number ≥ 0", name, v)
	}
	return n, nil
}

func run() int {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "install-cni", "uninstall-cni":
			return installCNI(os.Args[1], os.Args[2:])
		case "keep-cni":
			return keepCNIContainer(os.Args[2:])
		case "create-ca":
			return createCA(os.Args[2:])
		}
	}
	o, code := parseFlags(os.Args[1:])
	if o == nil {
		return code
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*o.level)); err != nil {
		fmt.Fprintf(os.Stderr, "amesh-agent: --log-level %q: %v\n", *o.level, err)
		return 2
	}
	// A LevelVar, so the admin API's /logging can change it at run time.
	var level slog.LevelVar
	level.Set(lvl)
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: &level}))
	if *o.pinDir == "" && *o.node != "" {
		*o.pinDir = agent.DefaultPinDir(*o.node)
	}
	if *o.uninstall {
		return uninstall(*o.pinDir, log)
	}
	if *o.node == "" || (*o.state == "") == !*o.kube {
		fmt.Fprintln(os.Stderr, "amesh-agent: --node and one of --state or --kube are required (see --help)")
		return 2
	}
	cfg, code := agentConfig(o, log)
	if code != 0 {
		return code
	}
	cfg.LogLevel = &level
	a, err := agent.New(cfg)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *o.kube && *o.keepConf != "" {
		if code := keepCNI(ctx, o, cfg.CNISocket, log); code != 0 {
			return code
		}
	}
	if err := a.Run(ctx); err != nil {
		log.Error("agent failed", "err", err)
		return 1
	}
	if ctx.Err() != nil && *o.kube && *o.pod != "" {
		return uninstallIfDeleted(o, cfg.Kube, log)
	}
	return 0
}

// uninstallIfDeleted is --pod, once the agent has stopped on a signal: if the pod's DaemonSet is
// gone (`kubectl delete -k deploy/`), amesh leaves the node — every pin and attachment, and with
// --cni-conf-dir the CNI entry, plugin and its kubeconfig (in the DaemonSet the cni container,
// keep-cni, does that part); the node's pods are then out of the mesh, as the user asked.
// Otherwise (an upgrade, a restart, an eviction, or any doubt) everything stays pinned, failing
// closed until the next agent re-adopts the pods.
func uninstallIfDeleted(o *options, src *kube.Source, log *slog.Logger) int {
	if gone, code := installationDeleted(*o.pod, src.Dynamic, log); !gone {
		return code
	}
	var errs []error
	if *o.keepConf != "" {
		errs = append(errs, cniplugin.Uninstall(cniplugin.InstallConfig{BinDir: *o.keepBin, ConfDir: *o.keepConf}))
	}
	errs = append(errs, agent.Uninstall(*o.pinDir))
	if err := errors.Join(errs...); err != nil {
		log.Error("uninstall failed", "err", err)
		return 1
	}
	log.Info("uninstalled: no CNI entry, pin or attachment of amesh is left on the node", "pin_dir", *o.pinDir)
	return 0
}

// options are the agent's flags, as parsed.
type options struct {
	node             *string
	state            *string
	caDir            *string
	pinDir           *string
	ttl              *time.Duration
	identity         *string
	spireSocket      *string
	spireSelectors   *string
	drain            *time.Duration
	sameNode         *string
	level            *string
	uninstall        *bool
	kube             *bool
	kubeconfig       *string
	trustDomain      *string
	rootNS           *string
	debounce         *time.Duration
	cniSocket        *string
	keepConf         *string
	keepBin          *string
	hostConf         *string
	pluginBin        *string
	pluginKubeconfig *string
	keepEvery        *time.Duration
	health           *string
	handoff          *string
	statePoll        *time.Duration
	metricsAddr      *string
	adminAddr        *string
	accessLog        *string
	accessSample     *float64
	maxConns         *int
	maxStreams       *int
	pod              *string
}

// parseFlags parses the agent's flags; a nil result means exit with the code.
func parseFlags(args []string) (*options, int) {
	o := &options{}
	maxConnsDef, err1 := envInt("AMESH_MAX_CONNS_PER_SOURCE")
	maxStreamsDef, err2 := envInt("AMESH_MAX_STREAMS_PER_SOURCE")
	if err := errors.Join(err1, err2); err != nil {
		fmt.Fprintln(os.Stderr, "amesh-agent:", err)
		return nil, 2
	}
	fs := flag.NewFlagSet("amesh-agent", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `amesh-agent: the amesh node agent.

It enrolls the pods of --node that the state file puts in the mesh (dataplane mode ambient):
their outbound TCP is captured by eBPF to the agent's :15001 inside the pod's netns, inbound TCP
is steered to :15008 (HBONE) or :15006 (plaintext, only for PERMISSIVE pods), and pod-to-pod
traffic crosses nodes as HBONE (HTTP/2 CONNECT over mutual TLS 1.3, port 15008) with SPIFFE
identities spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> from the built-in CA.
Redirection is pinned in bpffs: with the agent down, enrolled pods' connections are refused,
never sent in plaintext; a restarted agent re-adopts them.

Usage: amesh-agent --node NAME --state FILE [flags]
       amesh-agent --node NAME --kube [--kubeconfig FILE] [flags]
       amesh-agent install-cni|uninstall-cni [flags]   (the DaemonSet's init container; -h)
       amesh-agent keep-cni [flags]                    (the DaemonSet's cni container; -h)
       amesh-agent create-ca [flags]                   (deploy/'s Job: the cluster's CA Secret; -h)
       amesh-agent --uninstall [--node NAME | --pin-dir DIR]

Flags (environment variable in brackets):
`)
		fs.PrintDefaults()
	}
	o.node = fs.String("node", env("AMESH_NODE", ""), "name of this node in the state file [AMESH_NODE]")
	o.state = fs.String("state", env("AMESH_STATE", ""), "YAML state file (local mode), re-read when it changes [AMESH_STATE]")
	o.caDir = fs.String("ca-dir", env("AMESH_CA_DIR", "/var/lib/amesh/ca"), "built-in CA directory (ca.crt, ca.key); created when empty [AMESH_CA_DIR]")
	o.pinDir = fs.String("pin-dir", env("AMESH_PIN_DIR", ""), "bpffs directory for pins (default /sys/fs/bpf/amesh/<node>) [AMESH_PIN_DIR]")
	o.ttl = fs.Duration("svid-ttl", identity.DefaultSVIDTTL, "lifetime of X.509-SVIDs the built-in CA issues; rotated at half-life")
	o.identity = fs.String("identity", env("AMESH_IDENTITY", agent.IdentityBuiltin), "where workloads' SVIDs come from: builtin (amesh's CA in --ca-dir, for trials) or spire (the node's SPIRE agent, amesh-agent being its authorized delegate) [AMESH_IDENTITY]")
	o.spireSocket = fs.String("spire-admin-socket", env("AMESH_SPIRE_ADMIN_SOCKET", "/run/spire/admin/admin.sock"), "with --identity=spire: the SPIRE agent's admin socket (its admin_socket_path) [AMESH_SPIRE_ADMIN_SOCKET]")
	o.spireSelectors = fs.String("spire-selectors", env("AMESH_SPIRE_SELECTORS", strings.Join(spire.DefaultSelectors, ",")), "with --identity=spire: the selectors each workload's SVID is asked with, comma-separated type:value templates over {namespace}, {serviceaccount}, {pod-name}, {pod-uid}, {node} [AMESH_SPIRE_SELECTORS]")
	o.drain = fs.Duration("drain-timeout", agent.DefaultDrainTimeout, "how long SIGTERM waits for open connections")
	o.sameNode = fs.String("same-node", env("AMESH_SAME_NODE", "auto"), "path between two pods of this node: auto (kernel where the start-up probe passes, else splice), kernel (a pod pair's first connection spliced, later ones pod to pod with no agent in the data path while the agent lives), splice (every connection authorized here and joined with splice(2)) or hbone (the full tunnel) [AMESH_SAME_NODE]")
	o.level = fs.String("log-level", env("AMESH_LOG_LEVEL", "info"), "log level: debug, info, warn, error [AMESH_LOG_LEVEL]")
	o.uninstall = fs.Bool("uninstall", false, "remove every eBPF program, link, map and pin of this agent, then exit")
	o.kube = fs.Bool("kube", os.Getenv("AMESH_KUBE") == "true", "take the state from the Kubernetes API server (in-cluster config, or --kubeconfig) instead of --state [AMESH_KUBE=true]")
	o.kubeconfig = fs.String("kubeconfig", env("KUBECONFIG", ""), "kubeconfig file for --kube (default: in-cluster service account) [KUBECONFIG]")
	o.trustDomain = fs.String("trust-domain", env("AMESH_TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain with --kube [AMESH_TRUST_DOMAIN]")
	o.rootNS = fs.String("root-namespace", env("AMESH_ROOT_NAMESPACE", "amesh-system"), "namespace whose AuthorizationPolicies apply mesh-wide, with --kube [AMESH_ROOT_NAMESPACE]")
	o.debounce = fs.Duration("state-debounce", kube.DefaultDebounce, "with --kube, how long after an API change the state is rebuilt (the changes of that window make one build): longer costs less CPU per change in a churning cluster and delays enforcement as much")
	o.cniSocket = fs.String("cni-socket", env("AMESH_CNI_SOCKET", ""), "unix socket of the enrollment API for amesh-cni (with --kube default "+cniv1.DefaultSocket+") [AMESH_CNI_SOCKET]")
	o.keepConf = fs.String("cni-conf-dir", env("AMESH_CNI_CONF_DIR", ""), "with --kube: keep amesh-cni chained into the node's CNI configuration in this directory (as mounted here), re-checked every --cni-keep-interval; off when empty [AMESH_CNI_CONF_DIR]")
	o.keepBin = fs.String("cni-bin-dir", env("AMESH_CNI_BIN_DIR", "/host/opt/cni/bin"), "with --cni-conf-dir: the node's CNI bin directory, as mounted here [AMESH_CNI_BIN_DIR]")
	o.hostConf = fs.String("host-cni-conf-dir", "/etc/cni/net.d", "with --cni-conf-dir: that directory as the node sees it")
	o.pluginBin = fs.String("plugin-binary", "", "with --cni-conf-dir: the amesh-cni binary (default: beside this program)")
	o.pluginKubeconfig = fs.String("plugin-kubeconfig", "", "with --cni-conf-dir: the plugin's kubeconfig (a node path); default: one written from this pod's service account and refreshed as its token rotates")
	o.keepEvery = fs.Duration("cni-keep-interval", cniplugin.DefaultKeepInterval, "how often --cni-conf-dir is re-checked")
	o.maxConns = fs.Int("max-conns-per-source", maxConnsDef, "HBONE connections one source pod may hold to this node at once; 0: the default (64) [AMESH_MAX_CONNS_PER_SOURCE]")
	o.maxStreams = fs.Int("max-streams-per-source", maxStreamsDef, "tunneled connections one source pod may hold to this node's pods at once, its memory budget (~30 KiB each when stalled); 0: the default (2048) [AMESH_MAX_STREAMS_PER_SOURCE]")
	o.adminAddr = fs.String("admin-addr", env("AMESH_ADMIN_ADDR", ""), "loopback address of the admin API: /config_dump, /logging?level=, /debug/pprof/, /quitquitquit (with --kube default "+agent.DefaultAdminAddr+"; off when empty otherwise) [AMESH_ADMIN_ADDR]")
	o.accessLog = fs.String("access-log", env("AMESH_ACCESS_LOG", "on"), "one JSON line per connection: on or off [AMESH_ACCESS_LOG]")
	o.accessSample = fs.Float64("access-log-sample", 1, "with --access-log=on, the share (0 to 1) of connections that went well that get a line; refused and failed ones always do")
	o.metricsAddr = fs.String("metrics-addr", env("AMESH_METRICS_ADDR", ""), "address of the Prometheus metrics, /metrics and /stats/prometheus, with ztunnel's names (with --kube default "+agent.DefaultMetricsAddr+"; off when empty otherwise) [AMESH_METRICS_ADDR]")
	o.statePoll = fs.Duration("state-poll", 0, "how often --state is re-read (0: 250ms)")
	o.handoff = fs.String("handoff-socket", env("AMESH_HANDOFF_SOCKET", ""), "unix socket over which an upgraded agent takes this one's listening sockets, so an upgrade drops no connection; at start the agent takes over from whichever agent serves it (with --kube default "+agent.DefaultHandoffSocket+"; off when empty otherwise) [AMESH_HANDOFF_SOCKET]")
	o.pod = fs.String("pod", env("AMESH_POD", ""), "with --kube, this agent's own pod, namespace/name (the DaemonSet sets it): when stopped by a signal, the agent takes amesh off the node (CNI entry, plugin, pins, attachments) if the pod's DaemonSet is gone, and leaves everything pinned, failing closed, otherwise [AMESH_POD]")
	o.health = fs.String("health-addr", env("AMESH_HEALTH_ADDR", ""), "address of /healthz/ready and /healthz/live (with --kube default "+agent.DefaultHealthAddr+") [AMESH_HEALTH_ADDR]")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil, 0
		}
		return nil, 2
	}
	return o, 0
}

// uninstall is --uninstall: every program, link, map and pin under pinDir goes.
func uninstall(pinDir string, log *slog.Logger) int {
	if pinDir == "" {
		fmt.Fprintln(os.Stderr, "amesh-agent: --uninstall needs --node or --pin-dir")
		return 2
	}
	if err := agent.Uninstall(pinDir); err != nil {
		log.Error("uninstall failed", "err", err)
		return 1
	}
	log.Info("uninstalled", "pin_dir", pinDir)
	return 0
}

// agentConfig is the agent's configuration from its flags; a non-zero code means exit with it.
func agentConfig(o *options, log *slog.Logger) (agent.Config, int) {
	cfg := agent.Config{
		Node: *o.node, StatePath: *o.state, CADir: *o.caDir, PinDir: *o.pinDir, SVIDTTL: *o.ttl,
		DrainTimeout: *o.drain, SameNode: agent.SameNodeMode(*o.sameNode), Logger: log,
		CNISocket: *o.cniSocket, HealthAddr: *o.health, HandoffSocket: *o.handoff, StatePoll: *o.statePoll, MetricsAddr: *o.metricsAddr, AdminAddr: *o.adminAddr,
		AccessLogOff: *o.accessLog == "off", AccessLogSample: *o.accessSample,
		MaxConnsPerSource: *o.maxConns, MaxStreamsPerSource: *o.maxStreams,
		Identity: *o.identity, SPIRE: spire.Config{AdminSocket: *o.spireSocket, Selectors: strings.Split(*o.spireSelectors, ",")},
	}
	if *o.accessLog != "on" && *o.accessLog != "off" {
		fmt.Fprintf(os.Stderr, "amesh-agent: --access-log %q: want on or off\n", *o.accessLog)
		return cfg, 2
	}
	if !*o.kube {
		return cfg, 0
	}
	src, err := kubeSource(*o.kubeconfig, *o.trustDomain, *o.rootNS, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "amesh-agent:", err)
		return cfg, 2
	}
	cfg.Kube = src
	src.Debounce = *o.debounce
	cfg.PodEvents = podevents.New(src.Dynamic, podevents.Config{Component: "amesh-agent", Host: *o.node, Logger: log})
	if cfg.CNISocket == "" {
		cfg.CNISocket = cniv1.DefaultSocket
	}
	if cfg.HealthAddr == "" {
		cfg.HealthAddr = agent.DefaultHealthAddr
	}
	if cfg.HandoffSocket == "" {
		cfg.HandoffSocket = agent.DefaultHandoffSocket
	}
	if cfg.MetricsAddr == "" {
		cfg.MetricsAddr = agent.DefaultMetricsAddr
	}
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = agent.DefaultAdminAddr
	}
	return cfg, 0
}

// keepCNI is --cni-conf-dir: it keeps amesh-cni chained, and its kubeconfig fresh, until ctx ends.
func keepCNI(ctx context.Context, o *options, socket string, log *slog.Logger) int {
	ic := cniplugin.InstallConfig{BinDir: *o.keepBin, ConfDir: *o.keepConf, PluginBinary: *o.pluginBin, AgentSocket: socket, Kubeconfig: *o.pluginKubeconfig}
	sa, code := keeperSetup(&ic, "--cni-conf-dir", log)
	if code != 0 {
		return code
	}
	go cniplugin.Keep(ctx, ic, sa, *o.hostConf, *o.keepEvery, log)
	return 0
}

// kubeSource builds the Kubernetes state source from a kubeconfig, or the in-cluster service
// account when kubeconfig is empty.
func kubeSource(kubeconfig, trustDomain, rootNS string, log *slog.Logger) (*kube.Source, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("--trust-domain %q: %w", trustDomain, err)
	}
	dyn, rc, err := kube.NewClients(kubeconfig, "amesh-agent")
	if err != nil {
		return nil, err
	}
	return &kube.Source{Dynamic: dyn, Protobuf: rc, TrustDomain: td, RootNamespace: rootNS, Logger: log}, nil
}

// installCNI is `amesh-agent install-cni` (the DaemonSet's init container: put amesh-cni in the
// node's CNI bin dir and chain it into the primary configuration, with a kubeconfig of the pod's
// service account for when the agent is unreachable) and `uninstall-cni` (take both out again).
func installCNI(verb string, args []string) int {
	fs := flag.NewFlagSet("amesh-agent "+verb, flag.ContinueOnError)
	binDir := fs.String("cni-bin-dir", "/host/opt/cni/bin", "the node's CNI bin directory, as mounted here")
	confDir := fs.String("cni-conf-dir", "/host/etc/cni/net.d", "the node's CNI configuration directory, as mounted here")
	hostConfDir := fs.String("host-cni-conf-dir", "/etc/cni/net.d", "the same directory as the node sees it (written into the plugin entry)")
	plugin := fs.String("plugin-binary", "", "the amesh-cni binary to install (default: amesh-cni beside this program)")
	socket := fs.String("agent-socket", cniv1.DefaultSocket, "the agent's enrollment socket on the node")
	kubeconfig := fs.Bool("kubeconfig", true, "write a kubeconfig of this pod's service account for the plugin (in-cluster only)")
	pluginKubeconfig := fs.String("plugin-kubeconfig", "", "use this kubeconfig (a node path) for the plugin instead of writing one")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	pluginBin, err := pluginBeside(*plugin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "amesh-agent:", err)
		return 1
	}
	cfg := cniplugin.InstallConfig{BinDir: *binDir, ConfDir: *confDir, PluginBinary: pluginBin, AgentSocket: *socket}
	if verb == "uninstall-cni" {
		if err := cniplugin.Uninstall(cfg); err != nil {
			fmt.Fprintln(os.Stderr, "amesh-agent:", err)
			return 1
		}
		fmt.Println("amesh-cni removed from", *confDir)
		return 0
	}
	if *pluginKubeconfig != "" {
		cfg.Kubeconfig = *pluginKubeconfig
	} else if *kubeconfig {
		sa, err := cniplugin.InClusterServiceAccount()
		if err != nil {
			fmt.Fprintln(os.Stderr, "amesh-agent:", err, "(pass --kubeconfig=false outside a pod)")
			return 1
		}
		path, err := cniplugin.WriteKubeconfig(*confDir, sa)
		if err != nil {
			fmt.Fprintln(os.Stderr, "amesh-agent:", err)
			return 1
		}
		cfg.Kubeconfig = filepath.Join(*hostConfDir, filepath.Base(path))
	}
	if err := cniplugin.Install(context.Background(), cfg); err != nil {
		fmt.Fprintln(os.Stderr, "amesh-agent:", err)
		return 1
	}
	fmt.Println("amesh-cni chained into the primary configuration in", *confDir)
	return 0
}

// restConfig is the client configuration of a kubeconfig, or of the in-cluster service account
// when kubeconfig is empty.
func restConfig(kubeconfig string) (*rest.Config, error) {
	return kube.RESTConfig(kubeconfig, "amesh-agent")
}
