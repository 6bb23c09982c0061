package cniplugin

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeconfigFile is the name of the plugin's kubeconfig in the CNI configuration directory.
const KubeconfigFile = "amesh-cni.kubeconfig"

// The files Kubernetes mounts into every pod with its service account's credentials.
const (
	ServiceAccountCAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	ServiceAccountTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
)

// ServiceAccount is where the plugin's kubeconfig takes its credentials from: the installer's
// (the agent pod's) service account.
type ServiceAccount struct {
	Server    string // the API server's URL, e.g. https://10.96.0.1:443
	CAFile    string // PEM bundle of the API server's CA
	TokenFile string // the bearer token
}

// InClusterServiceAccount is the service account of the pod this runs in: the server from
// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, the mounted CA and token files.
func InClusterServiceAccount() (ServiceAccount, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return ServiceAccount{}, errors.New("cniplugin: KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set: not running in a pod?")
	}
	return ServiceAccount{
		Server:    "https://" + net.JoinHostPort(host, port),
		CAFile:    ServiceAccountCAFile,
		TokenFile: ServiceAccountTokenFile,
	}, nil
}

// WriteKubeconfig writes the plugin's kubeconfig, KubeconfigFile in confDir, with mode 0600 (it
// holds a token), atomically, and returns its path. The CA and the token are copied into it,
// not referred to: the plugin runs on the host, where the pod's files are not.
//
// The copied token is valid as long as the service account's token is: a projected token that
// kubelet rotates must be written again before it expires, so the long-running agent should call
// WriteKubeconfig again when the token file changes.
func WriteKubeconfig(confDir string, sa ServiceAccount) (string, error) {
	ca, err := os.ReadFile(sa.CAFile)
	if err != nil {
		return "", fmt.Errorf("cniplugin: kubeconfig: CA: %w", err)
	}
	token, err := os.ReadFile(sa.TokenFile)
	if err != nil {
		return "", fmt.Errorf("cniplugin: kubeconfig: token: %w", err)
	}
	if sa.Server == "" {
		return "", errors.New("cniplugin: kubeconfig: no API server URL")
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: sa.Server, CertificateAuthorityData: ca}
	cfg.AuthInfos[PluginType] = &clientcmdapi.AuthInfo{Token: string(token)}
	cfg.Contexts[PluginType] = &clientcmdapi.Context{Cluster: "local", AuthInfo: PluginType}
	cfg.CurrentContext = PluginType
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return "", fmt.Errorf("cniplugin: kubeconfig: %w", err)
	}
	path := filepath.Join(confDir, KubeconfigFile)
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, b) {
		return path, nil // unchanged (Keep calls this periodically)
	}
	if err := writeFileAtomic(path, b, 0o600); err != nil {
		return "", err
	}
	return path, nil
}
