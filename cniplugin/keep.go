package cniplugin

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"
)

// DefaultKeepInterval is how often Keep re-checks the node's CNI configuration.
const DefaultKeepInterval = 15 * time.Second

// Keep holds the installation in place until ctx is done, for the agent that runs beside the
// plugin: every interval it re-runs Install (a primary plugin that rewrites its configuration, as
// some do on restart, drops amesh-cni out of the chain until then) and, when sa is set, writes the
// plugin's kubeconfig again (kubelet rotates projected service-account tokens, and the kubeconfig
// holds a copy). Both write only what changed. hostConfDir is ConfDir as the node sees it, for the
// kubeconfig path in the entry. Failures are logged and retried.
func Keep(ctx context.Context, c InstallConfig, sa *ServiceAccount, hostConfDir string, interval time.Duration, log *slog.Logger) {
	if interval <= 0 {
		interval = DefaultKeepInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if sa != nil {
			path, err := WriteKubeconfig(c.ConfDir, *sa)
			if err != nil {
				log.Warn("amesh-cni kubeconfig not refreshed", "err", err)
			} else {
				c.Kubeconfig = filepath.Join(hostConfDir, filepath.Base(path))
			}
		}
		if err := Install(ctx, c); err != nil {
			log.Warn("amesh-cni not chained into the node's CNI configuration; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
