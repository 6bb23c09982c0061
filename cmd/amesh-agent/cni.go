package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/dynamic"

	cniv1 "github.com/amesh-dev/amesh/api/cni/v1"
	"github.com/amesh-dev/amesh/cniplugin"
	"github.com/amesh-dev/amesh/workload/kube"
)

// keepCNIContainer is `amesh-agent keep-cni`, the DaemonSet's cni container: it keeps amesh-cni
// chained into the node's CNI configuration, and the plugin's kubeconfig token fresh, until
// SIGTERM; then, with --pod, it takes amesh-cni off the node if the installation is deleted. It
// runs beside the agent's container so that the node's CNI directories are writable only in a
// container with no capability (the agent's holds BPF, NET_ADMIN and SYS_ADMIN).
func keepCNIContainer(args []string) int {
	fs := flag.NewFlagSet("amesh-agent keep-cni", flag.ContinueOnError)
	binDir := fs.String("cni-bin-dir", "/host/opt/cni/bin", "the node's CNI bin directory, as mounted here")
	confDir := fs.String("cni-conf-dir", "/host/etc/cni/net.d", "the node's CNI configuration directory, as mounted here")
	hostConfDir := fs.String("host-cni-conf-dir", "/etc/cni/net.d", "the same directory as the node sees it")
	plugin := fs.String("plugin-binary", "", "the amesh-cni binary (default: amesh-cni beside this program)")
	socket := fs.String("agent-socket", cniv1.DefaultSocket, "the agent's enrollment socket on the node")
	pluginKubeconfig := fs.String("plugin-kubeconfig", "", "the plugin's kubeconfig (a node path); default: one written from this pod's service account and refreshed as its token rotates")
	every := fs.Duration("cni-keep-interval", cniplugin.DefaultKeepInterval, "how often the configuration is re-checked")
	kubeconfig := fs.String("kubeconfig", env("KUBECONFIG", ""), "kubeconfig for --pod's check (default: in-cluster service account) [KUBECONFIG]")
	pod := fs.String("pod", env("AMESH_POD", ""), "this container's pod, namespace/name: when stopped by a signal, amesh-cni is taken off the node if the pod's DaemonSet is gone [AMESH_POD]")
	level := fs.String("log-level", env("AMESH_LOG_LEVEL", "info"), "log level: debug, info, warn, error [AMESH_LOG_LEVEL]")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "amesh-agent keep-cni: --log-level %q: %v\n", *level, err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	ic := cniplugin.InstallConfig{BinDir: *binDir, ConfDir: *confDir, PluginBinary: *plugin, AgentSocket: *socket, Kubeconfig: *pluginKubeconfig}
	sa, code := keeperSetup(&ic, "keep-cni", log)
	if code != 0 {
		return code
	}
	var dyn dynamic.Interface
	if *pod != "" {
		// The client first: a pod that cannot reach the API server's configuration should say so
		// at start, not when the installation is being deleted.
		d, _, err := kube.NewClients(*kubeconfig, "amesh-agent")
		if err != nil {
			log.Error("cannot start: --pod needs an API client", "err", err)
			return 2
		}
		dyn = d
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("keeping amesh-cni chained", "conf_dir", *confDir, "bin_dir", *binDir, "interval", *every)
	cniplugin.Keep(ctx, ic, sa, *hostConfDir, *every, log)
	if dyn == nil {
		return 0
	}
	if gone, code := installationDeleted(*pod, dyn, log); !gone {
		return code
	}
	if err := cniplugin.Uninstall(ic); err != nil {
		log.Error("uninstall failed", "err", err)
		return 1
	}
	log.Info("uninstalled: amesh-cni is off the node's CNI configuration", "conf_dir", *confDir)
	return 0
}

// pluginBeside returns path, or, when it is empty, amesh-cni beside this program (the image
// ships both).
func pluginBeside(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(self), "amesh-cni"), nil
}

// keeperSetup completes ic for cniplugin.Keep (the plugin binary's default) and returns the
// service account whose token Keep writes into the plugin's kubeconfig: this pod's, unless the
// plugin has a kubeconfig of its own (ic.Kubeconfig). A non-zero code means exit with it; what
// names, in the error, the mode that needs the account.
func keeperSetup(ic *cniplugin.InstallConfig, what string, log *slog.Logger) (*cniplugin.ServiceAccount, int) {
	plugin, err := pluginBeside(ic.PluginBinary)
	if err != nil {
		log.Error("cannot start", "err", err)
		return nil, 1
	}
	ic.PluginBinary = plugin
	if ic.Kubeconfig != "" {
		return nil, 0
	}
	sa, err := cniplugin.InClusterServiceAccount()
	if err != nil {
		log.Error("cannot start: "+what+" without --plugin-kubeconfig needs the in-cluster service account", "err", err)
		return nil, 2
	}
	return &sa, 0
}

// installationDeleted says whether pod's DaemonSet is gone (`kubectl delete -k deploy/`), which
// is when a stopping container takes amesh off the node. Any doubt (an error, the DaemonSet
// there or being replaced) answers no: everything stays for the next pod. code is the exit
// status when the answer is no.
func installationDeleted(pod string, dyn dynamic.Interface, log *slog.Logger) (gone bool, code int) {
	ns, name, ok := strings.Cut(pod, "/")
	if !ok || ns == "" || name == "" {
		log.Error("--pod: want namespace/name", "pod", pod)
		return false, 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gone, why, err := kube.DaemonSetGone(ctx, dyn, ns, name)
	if err != nil || !gone {
		log.Info("stopped; amesh stays on the node for the next pod", "reason", why, "err", err)
		return false, 0
	}
	log.Info("the installation is deleted: removing amesh from the node", "reason", why)
	return true, 0
}
