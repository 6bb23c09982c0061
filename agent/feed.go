package agent

import (
	"context"
	"runtime/debug"

	"github.com/amesh-dev/amesh/workload"
	"github.com/amesh-dev/amesh/workload/file"
	"github.com/amesh-dev/amesh/workload/kube"
)

// feed is where the state view comes from: the YAML state file or the Kubernetes API server.
type feed interface {
	// start returns the first State; for Kubernetes, once the caches have synced. ctx bounds the
	// life of what start starts (the informers), not the wait.
	start(ctx context.Context) (*workload.State, error)
	// run replaces store's State on every change until ctx is done.
	run(ctx context.Context, store *workload.Store)
	// health counts what went wrong so far: states rejected whole (the last good one kept),
	// objects left out of a state, interrupted watches.
	health() feedHealth
}

// feedHealth is what a feed counts of its failures.
type feedHealth struct {
	rejected, ignored, watchErrors uint64
	// fullBuilds and incrementalBuilds: States built from everything the feed holds, and from
	// one change.
	fullBuilds, incrementalBuilds uint64
}

type fileFeed struct{ src *file.Source }

func (f fileFeed) start(context.Context) (*workload.State, error) { return f.src.Load() }

func (f fileFeed) run(ctx context.Context, store *workload.Store) { f.src.Run(ctx, store) }

// health: a state file is taken or rejected whole, and is not watched.
func (f fileFeed) health() feedHealth {
	return feedHealth{rejected: f.src.Rejected(), fullBuilds: f.src.Builds()}
}

type kubeFeed struct{ src *kube.Source }

func (k kubeFeed) start(ctx context.Context) (*workload.State, error) {
	st, err := k.src.Start(ctx)
	// The first sync decoded every object of the cluster at once (the watch list's initial
	// events): a transient the size of the cluster that the runtime's scavenger would hand back
	// to the node over minutes. Hand it back now (one forced collection, once).
	debug.FreeOSMemory()
	return st, err
}

func (k kubeFeed) run(ctx context.Context, store *workload.Store) { k.src.Run(ctx, store) }

func (k kubeFeed) health() feedHealth {
	full, incr := k.src.Builds()
	return feedHealth{rejected: k.src.Rejected(), ignored: uint64(k.src.Problems()), watchErrors: k.src.WatchErrors(), fullBuilds: full, incrementalBuilds: incr}
}
