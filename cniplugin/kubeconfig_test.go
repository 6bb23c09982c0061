package cniplugin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

func TestInClusterServiceAccount(t *testing.T) {
	for _, tt := range []struct {
		host, port, want, wantErr string
	}{
		{"10.96.0.1", "443", "https://10.96.0.1:443", ""},
		{"fd00:10:96::1", "443", "https://[fd00:10:96::1]:443", ""},
		{"", "443", "", "KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set"},
	} {
		t.Setenv("KUBERNETES_SERVICE_HOST", tt.host)
		t.Setenv("KUBERNETES_SERVICE_PORT", tt.port)
		sa, err := InClusterServiceAccount()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: %v, want error %q", tt.host, err, tt.wantErr)
			}
			continue
		}
		if err != nil || sa.Server != tt.want || sa.CAFile != ServiceAccountCAFile || sa.TokenFile != ServiceAccountTokenFile {
			t.Errorf("%s: %+v, %v; want server %s", tt.host, sa, err, tt.want)
		}
	}
}

// TestWriteKubeconfig checks the kubeconfig holds the CA and token themselves (the plugin runs on
// the host, where the pod's files are not), is private, and loads into a client configuration.
func TestWriteKubeconfig(t *testing.T) {
	sa := t.TempDir()
	ca := "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
	writeFiles(t, sa, map[string]string{"ca.crt": ca, "token": "eyJhbGciOi.fake.token"}, 0o644)
	confDir := t.TempDir()
	path, err := WriteKubeconfig(confDir, ServiceAccount{Server: "https://10.96.0.1:443",
		CAFile: filepath.Join(sa, "ca.crt"), TokenFile: filepath.Join(sa, "token")})
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(confDir, KubeconfigFile) {
		t.Errorf("path %s", path)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kubeconfig mode %v, %v; want 0600", fi.Mode(), err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://10.96.0.1:443" || cfg.BearerToken != "eyJhbGciOi.fake.token" || string(cfg.CAData) != ca || cfg.BearerTokenFile != "" || cfg.CAFile != "" {
		t.Errorf("loaded %+v", cfg)
	}
	// The directory holds no temporary file, and no configuration a runtime would read.
	if entries, _ := os.ReadDir(confDir); len(entries) != 1 || isConfFile(entries[0].Name()) {
		t.Errorf("conf dir holds %v", entries)
	}

	if _, err := WriteKubeconfig(confDir, ServiceAccount{Server: "https://x", CAFile: filepath.Join(sa, "none"), TokenFile: filepath.Join(sa, "token")}); err == nil ||
		!strings.HasPrefix(err.Error(), "cniplugin: kubeconfig: CA: ") {
		t.Errorf("WriteKubeconfig without CA = %v", err)
	}
}
