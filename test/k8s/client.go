package k8s

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// RESTConfig returns a client configuration for the user of token (the admin for ""): the
// server's URL, its CA when it verifies (else insecure, see CAData), no proxy, and, when the
// control plane runs in a namespace, DialContext as the dialer. Each call returns a new config.
func (cp *ControlPlane) RESTConfig(token string) *rest.Config {
	if token == "" {
		token = cp.adminToken
	}
	c := &rest.Config{
		Host:        cp.server,
		BearerToken: token,
		UserAgent:   "amesh-test/k8s",
		// The environment's proxy must not see a test's traffic (nor could it reach a netns).
		Proxy: func(*http.Request) (*url.URL, error) { return nil, nil },
		// Tests create objects in bursts; client-side throttling would only slow them down.
		QPS:   100,
		Burst: 200,
		// Not klog's stderr: a test that provokes warnings (unknown fields under Warn
		// validation, say) reads them in the error or the logger.
		WarningHandler: warningLogger{cp.log},
	}
	if ca := cp.CAData(); ca != nil {
		c.CAData = ca
	} else {
		c.Insecure = true
	}
	if cp.netns != "" {
		c.Dial = cp.DialContext
	}
	return c
}

// warningLogger hands the API server's warnings to the control plane's logger.
type warningLogger struct{ log *slog.Logger }

func (w warningLogger) HandleWarningHeader(code int, agent, text string) {
	w.log.Debug("API server warning", "code", code, "agent", agent, "text", text)
}

// Clientset returns a typed client for the user of token (the admin for "").
func (cp *ControlPlane) Clientset(token string) (kubernetes.Interface, error) {
	cs, err := kubernetes.NewForConfig(cp.RESTConfig(token))
	if err != nil {
		return nil, fmt.Errorf("k8s: clientset: %w", err)
	}
	return cs, nil
}

// Dynamic returns a dynamic client (for custom resources such as AuthorizationPolicy) for the
// user of token (the admin for "").
func (cp *ControlPlane) Dynamic(token string) (dynamic.Interface, error) {
	dc, err := dynamic.NewForConfig(cp.RESTConfig(token))
	if err != nil {
		return nil, fmt.Errorf("k8s: dynamic client: %w", err)
	}
	return dc, nil
}

// WriteKubeconfig writes to path a kubeconfig for the user of token (the admin for ""), with the
// server's CA when it verifies, else insecure-skip-tls-verify (see CAData). A process using it
// must run in the control plane's network namespace to reach the server.
func (cp *ControlPlane) WriteKubeconfig(path, token string) error {
	if token == "" {
		token = cp.adminToken
	}
	const name = "amesh-test"
	c := clientcmdapi.NewConfig()
	cluster := clientcmdapi.NewCluster()
	cluster.Server = cp.server
	if ca := cp.CAData(); ca != nil {
		cluster.CertificateAuthorityData = ca
	} else {
		// apiserver.crt did not verify the server (see verifyCA): loopback or a test netns only.
		cluster.InsecureSkipTLSVerify = true
	}
	c.Clusters[name] = cluster
	user := clientcmdapi.NewAuthInfo()
	user.Token = token
	c.AuthInfos[name] = user
	kctx := clientcmdapi.NewContext()
	kctx.Cluster, kctx.AuthInfo, kctx.Namespace = name, name, "default"
	c.Contexts[name] = kctx
	c.CurrentContext = name
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		return fmt.Errorf("k8s: write kubeconfig: %w", err)
	}
	return nil
}

// kubeconfig returns the kubeconfig in Dir for token, writing it the first time.
func (cp *ControlPlane) kubeconfig(token string) (string, error) {
	if token == "" {
		token = cp.adminToken
	}
	cp.mu.Lock()
	path, ok := cp.kubeconfigs[token]
	cp.mu.Unlock()
	if ok {
		return path, nil
	}
	sum := sha256.Sum256([]byte(token))
	path = filepath.Join(cp.dir, "kubeconfig-"+hex.EncodeToString(sum[:6]))
	if token == cp.adminToken {
		path = filepath.Join(cp.dir, "kubeconfig")
	}
	if err := cp.WriteKubeconfig(path, token); err != nil {
		return "", err
	}
	cp.mu.Lock()
	cp.kubeconfigs[token] = path
	cp.mu.Unlock()
	return path, nil
}

// KubectlCommand returns the command that runs the cached kubectl with args against the control
// plane as the user of token (the admin for ""), inside its namespace (with nsenter) when it has
// one, for a caller that wants to set its stdin or read its output as a stream. kubectl gets a
// kubeconfig and a discovery cache of its own (in Dir: a cache of another run on the same
// address would name resources this one lacks), no proxy and no preferences file. ctx kills it.
func (cp *ControlPlane) KubectlCommand(ctx context.Context, token string, args ...string) (*exec.Cmd, error) {
	kc, err := cp.kubeconfig(token)
	if err != nil {
		return nil, err
	}
	full := append([]string{"--kubeconfig", kc, "--cache-dir", filepath.Join(cp.dir, "kubectl-cache")}, args...)
	var cmd *exec.Cmd
	if cp.netns == "" {
		cmd = exec.CommandContext(ctx, cp.bin.Kubectl, full...)
	} else {
		cmd = exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + cp.netns, "--", cp.bin.Kubectl}, full...)...)
	}
	cmd.Env = ProcessEnv()
	return cmd, nil
}

// Kubectl runs kubectl with args as the user of token (the admin for "", see KubectlCommand) and
// returns its combined output. A non-zero exit is an error that carries the output too.
func (cp *ControlPlane) Kubectl(ctx context.Context, token string, args ...string) ([]byte, error) {
	cmd, err := cp.KubectlCommand(ctx, token, args...)
	if err != nil {
		return nil, err
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("k8s: kubectl %s: %w: %s", strings.Join(args, " "), err, Tail(out, 20))
	}
	return out, nil
}
