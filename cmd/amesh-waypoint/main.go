// Command amesh-waypoint is amesh's Go waypoint: an L7 proxy that the node agents send the
// traffic of the destinations that use it to, over HBONE. It authorizes each HTTP request
// (L7 AuthorizationPolicies that target it, and the destinations' own policies, against the
// original caller) and routes it (HTTPRoute subset) to an endpoint, over HBONE again.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/waypoint"
	"github.com/amesh-dev/amesh/waypoint/xds"
	"github.com/amesh-dev/amesh/workload"
	"github.com/amesh-dev/amesh/workload/file"
	"github.com/amesh-dev/amesh/workload/kube"
)

func main() { os.Exit(run()) }

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run() int {
	fs := flag.NewFlagSet("amesh-waypoint", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `amesh-waypoint serves the waypoint --name of --namespace: the service whose
endpoints are this waypoint's pods (waypoint-for set), as the state file or the Kubernetes
API server (--kube: Services, EndpointSlices, AuthorizationPolicies, and HTTPRoutes where
Gateway API is installed) describes it.

Usage: amesh-waypoint (--state FILE | --kube) --name NAME --namespace NS --service-account SA [flags]

`)
		fs.PrintDefaults()
	}
	state := fs.String("state", env("AMESH_STATE", ""), "YAML state file, re-read when it changes [AMESH_STATE]")
	name := fs.String("name", env("AMESH_WAYPOINT", ""), "the waypoint's service [AMESH_WAYPOINT]")
	ns := fs.String("namespace", env("POD_NAMESPACE", ""), "the waypoint's namespace [POD_NAMESPACE]")
	sa := fs.String("service-account", env("SERVICE_ACCOUNT", ""), "the service account of the waypoint's pods: its identity [SERVICE_ACCOUNT]")
	caDir := fs.String("ca-dir", env("AMESH_CA_DIR", "/var/lib/amesh/ca"), "built-in CA directory (ca.crt, ca.key) the agents issue from [AMESH_CA_DIR]")
	listen := fs.String("listen", env("AMESH_WAYPOINT_LISTEN", ":15008"), "HBONE address [AMESH_WAYPOINT_LISTEN]")
	level := fs.String("log-level", env("AMESH_LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	xdsAddr := fs.String("xds-addr", env("AMESH_XDS_ADDR", ""), "also serve this waypoint's Envoy configuration over ADS (gRPC, plaintext: loopback or a pod-local address) here; off when empty [AMESH_XDS_ADDR]")
	xdsOnly := fs.Bool("xds-only", false, "with --xds-addr: serve only the Envoy configuration, not HBONE (an Envoy beside it serves :15008)")
	bootstrap := fs.Bool("envoy-bootstrap", false, "print the Envoy bootstrap for --xds-addr (envoy -c) and exit")
	useKube := fs.Bool("kube", os.Getenv("AMESH_KUBE") == "true", "take the state from the Kubernetes API server instead of --state [AMESH_KUBE=true]")
	kubeconfig := fs.String("kubeconfig", env("KUBECONFIG", ""), "kubeconfig for --kube (default: in-cluster service account) [KUBECONFIG]")
	trustDomain := fs.String("trust-domain", env("AMESH_TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain with --kube [AMESH_TRUST_DOMAIN]")
	rootNS := fs.String("root-namespace", env("AMESH_ROOT_NAMESPACE", "amesh-system"), "namespace of the mesh-wide AuthorizationPolicies, with --kube [AMESH_ROOT_NAMESPACE]")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *bootstrap {
		if *xdsAddr == "" {
			fmt.Fprintln(os.Stderr, "amesh-waypoint: --envoy-bootstrap needs --xds-addr")
			return 2
		}
		b, err := xds.Bootstrap(*ns+"/"+*name, *xdsAddr)
		if err == nil {
			var y []byte
			if y, err = xds.MarshalYAML(b); err == nil {
				os.Stdout.Write(y)
				return 0
			}
		}
		fmt.Fprintln(os.Stderr, "amesh-waypoint: --envoy-bootstrap:", err)
		return 1
	}
	if *xdsOnly && *xdsAddr == "" {
		fmt.Fprintln(os.Stderr, "amesh-waypoint: --xds-only needs --xds-addr")
		return 2
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintln(os.Stderr, "amesh-waypoint: --log-level:", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	if (*state == "") == !*useKube || *name == "" || *ns == "" || *sa == "" {
		fmt.Fprintln(os.Stderr, "amesh-waypoint: one of --state or --kube, and --name, --namespace and --service-account are required (see --help)")
		return 2
	}
	var src feed
	if *useKube {
		td, err := spiffeid.TrustDomainFromString(*trustDomain)
		if err != nil {
			fmt.Fprintln(os.Stderr, "amesh-waypoint: --trust-domain:", err)
			return 2
		}
		dyn, rc, err := kube.NewClients(*kubeconfig, "amesh-waypoint")
		if err != nil {
			fmt.Fprintln(os.Stderr, "amesh-waypoint:", err)
			return 1
		}
		ks := &kube.Source{Dynamic: dyn, Protobuf: rc, TrustDomain: td, RootNamespace: *rootNS, Logger: log, WatchRoutes: true}
		src = feed{start: ks.Start, run: func(ctx context.Context, st *workload.Store) { ks.Run(ctx, st) }}
	} else {
		fsrc := &file.Source{Path: *state, Logger: log}
		src = feed{start: func(context.Context) (*workload.State, error) { return fsrc.Load() }, run: func(ctx context.Context, st *workload.Store) { fsrc.Run(ctx, st) }}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, log, src, *ns, *name, *sa, *caDir, *listen, *xdsAddr, *xdsOnly); err != nil {
		log.Error("waypoint stopped", "err", err)
		return 1
	}
	return 0
}

// feed is where the state comes from: the state file or the API server.
type feed struct {
	start func(ctx context.Context) (*workload.State, error)
	run   func(ctx context.Context, store *workload.Store)
}

func serve(ctx context.Context, log *slog.Logger, src feed, ns, name, sa, caDir, listen, xdsAddr string, xdsOnly bool) error {
	st, err := src.start(ctx)
	if err != nil {
		return err
	}
	id, err := identity.WorkloadID(st.TrustDomain(), ns, sa)
	if err != nil {
		return err
	}
	cfg, err := waypoint.Build(st, ns, name, id)
	if err != nil {
		return err
	}
	ca, err := identity.LoadCA(st.TrustDomain(), caDir, identity.CAConfig{})
	if err != nil {
		return fmt.Errorf("amesh-waypoint: the built-in CA: %w", err)
	}
	cache := identity.NewCache(ca, log)
	defer cache.Close()
	srv, err := waypoint.New(cfg, waypoint.Options{Source: cache, Identity: id, Logger: log})
	if err != nil {
		return err
	}
	defer srv.Close()
	store := workload.NewStore(st)
	go src.run(ctx, store)
	if xdsAddr != "" {
		xl, err := net.Listen("tcp", xdsAddr)
		if err != nil {
			return fmt.Errorf("amesh-waypoint: --xds-addr: %w", err)
		}
		xs := xds.NewServer(log)
		go xs.Follow(ctx, store, ns, name, cache, id)
		log.Info("serving the Envoy configuration over ADS", "addr", xl.Addr().String())
		if xdsOnly {
			return xs.Serve(ctx, xl)
		}
		go func() {
			if err := xs.Serve(ctx, xl); err != nil && ctx.Err() == nil {
				log.Error("ADS server stopped", "err", err)
			}
		}()
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("amesh-waypoint: %w", err)
	}
	go srv.Follow(ctx, store)
	log.Info("waypoint serving", "waypoint", ns+"/"+name, "id", id.String(), "addr", ln.Addr().String(),
		"services", len(cfg.Services), "workloads", len(cfg.Workloads), "routes", len(cfg.Routes))
	err = srv.Serve(ctx, ln)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
