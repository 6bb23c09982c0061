package k8s

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
)

// StartControllers starts kube-controller-manager (every controller, each with its own service
// account's credentials, as a real cluster runs them) and kube-scheduler, as the admin, and
// waits for their health endpoints. It is for a control plane with real nodes (Config.Nodes):
// without kubelets, Deployments and DaemonSets would only make pods nobody runs. Stop stops them.
func (cp *ControlPlane) StartControllers(ctx context.Context) error {
	if cp.bin.ControllerManager == "" || cp.bin.Scheduler == "" {
		return errors.New("k8s: StartControllers: no kube-controller-manager or kube-scheduler (Config.Nodes, or EnsureNodeBinaries)")
	}
	kubeconfig, err := cp.kubeconfig("")
	if err != nil {
		return err
	}
	ports, err := cp.freePorts(2)
	if err != nil {
		return err
	}
	common := []string{
		"--kubeconfig", kubeconfig, "--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
		"--leader-elect=false", "--bind-address", cp.bindIP,
	}
	kcm := append([]string{
		"--secure-port", strconv.Itoa(ports[0]),
		"--cert-dir", filepath.Join(cp.dir, "kcm-certs"),
		"--service-account-private-key-file", filepath.Join(cp.dir, "sa.key"),
		"--root-ca-file", filepath.Join(cp.dir, "certs", "apiserver.crt"),
		"--controllers", "*",
		"--use-service-account-credentials",
		// Faster than a real cluster's defaults, for a test that deletes pods and nodes.
		"--node-monitor-grace-period", "20s",
	}, common...)
	sched := append([]string{
		"--secure-port", strconv.Itoa(ports[1]),
		"--cert-dir", filepath.Join(cp.dir, "scheduler-certs"),
	}, common...)
	insecure := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // their self-signed serving certificates, in the test's namespace
	for _, c := range []struct {
		name, bin string
		args      []string
		port      int
	}{
		{"kube-controller-manager", cp.bin.ControllerManager, kcm, ports[0]},
		{"kube-scheduler", cp.bin.Scheduler, sched, ports[1]},
	} {
		p, err := cp.startProc(c.name, c.bin, c.args)
		if err != nil {
			return err
		}
		cp.mu.Lock()
		if cp.stopped {
			cp.mu.Unlock()
			p.stop()
			return errors.New("k8s: StartControllers: control plane stopped")
		}
		cp.controllers = append(cp.controllers, p)
		cp.mu.Unlock()
		url := "https://" + net.JoinHostPort(cp.bindIP, strconv.Itoa(c.port)) + "/healthz"
		if err := cp.waitReady(ctx, p, url, insecure, false); err != nil {
			return fmt.Errorf("k8s: %s: %w", c.name, err)
		}
		cp.log.Info("started", "process", c.name, "healthz", url)
	}
	return nil
}
