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

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/waypoint"
	"github.com/amesh-dev/amesh/workload"
	"github.com/amesh-dev/amesh/workload/file"
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
endpoints are this waypoint's pods (waypoint-for set), as the state file describes it.

Usage: amesh-waypoint --state FILE --name NAME --namespace NS --service-account SA [flags]

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
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintln(os.Stderr, "amesh-waypoint: --log-level:", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	if *state == "" || *name == "" || *ns == "" || *sa == "" {
		fmt.Fprintln(os.Stderr, "amesh-waypoint: --state, --name, --namespace and --service-account are required (see --help)")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, log, *state, *ns, *name, *sa, *caDir, *listen); err != nil {
		log.Error("waypoint stopped", "err", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, log *slog.Logger, statePath, ns, name, sa, caDir, listen string) error {
	src := &file.Source{Path: statePath, Logger: log}
	st, err := src.Load()
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
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("amesh-waypoint: %w", err)
	}
	store := workload.NewStore(st)
	go src.Run(ctx, store)
	go srv.Follow(ctx, store)
	log.Info("waypoint serving", "waypoint", ns+"/"+name, "id", id.String(), "addr", ln.Addr().String(),
		"services", len(cfg.Services), "workloads", len(cfg.Workloads), "routes", len(cfg.Routes))
	err = srv.Serve(ctx, ln)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
