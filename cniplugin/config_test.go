package cniplugin

import (
	"slices"
	"strings"
	"testing"
	"time"

	cniv1 "github.com/amesh-dev/amesh/api/cni/v1"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

func TestParseConfig(t *testing.T) {
	const prev = `"prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/p"}],
		"ips": [{"address": "10.244.77.5/24", "interface": 0}]}`
	for _, tt := range []struct {
		name    string
		json    string
		wantErr string // "" for success
		check   func(t *testing.T, c *Config)
	}{
		{
			name: "defaults",
			json: `{"cniVersion": "1.0.0", "name": "k8s", "type": "amesh-cni"}`,
			check: func(t *testing.T, c *Config) {
				if c.AgentSocket != cniv1.DefaultSocket || c.Kubeconfig != "" || c.Timeout != DefaultTimeout || c.LogFile != "" {
					t.Errorf("defaults: %+v", c)
				}
				if !slices.Equal(c.ExcludeNamespaces, []string{"kube-system"}) || !c.Excluded("kube-system") || c.Excluded("shop") {
					t.Errorf("excludeNamespaces = %v", c.ExcludeNamespaces)
				}
				if c.PrevResult != nil {
					t.Errorf("PrevResult = %v without prevResult", c.PrevResult)
				}
			},
		},
		{
			name: "everything set",
			json: `{"cniVersion": "1.0.0", "name": "k8s", "type": "amesh-cni", "agentSocket": "/run/a.sock",
				"kubeconfig": "/etc/cni/net.d/k", "excludeNamespaces": ["kube-system", "infra"], "timeout": "1m30s",
				"logFile": "/var/log/x", "someFutureField": {"a": 1}, ` + prev + `}`,
			check: func(t *testing.T, c *Config) {
				if c.AgentSocket != "/run/a.sock" || c.Kubeconfig != "/etc/cni/net.d/k" || c.Timeout != 90*time.Second || c.LogFile != "/var/log/x" {
					t.Errorf("config: %+v", c)
				}
				if !c.Excluded("infra") || c.Excluded("shop") {
					t.Errorf("excludeNamespaces = %v", c.ExcludeNamespaces)
				}
				r, err := types100.NewResultFromResult(c.PrevResult)
				if err != nil || len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.244.77.5/24" {
					t.Errorf("prevResult = %v, %v", r, err)
				}
			},
		},
		{
			name: "empty excludeNamespaces excludes none",
			json: `{"cniVersion": "1.0.0", "name": "k8s", "type": "amesh-cni", "excludeNamespaces": []}`,
			check: func(t *testing.T, c *Config) {
				if c.Excluded("kube-system") {
					t.Errorf("excludeNamespaces = %v, want none", c.ExcludeNamespaces)
				}
			},
		},
		{
			name: "0.3.1 prevResult",
			json: `{"cniVersion": "0.3.1", "name": "k8s", "type": "amesh-cni", "prevResult": {"ips": [{"version": "4", "address": "10.1.2.3/24"}]}}`,
			check: func(t *testing.T, c *Config) {
				r, err := types100.NewResultFromResult(c.PrevResult)
				if err != nil || len(r.IPs) != 1 || r.IPs[0].Address.IP.String() != "10.1.2.3" {
					t.Errorf("prevResult = %v, %v", r, err)
				}
			},
		},
		{name: "bad JSON", json: `{"cniVersion": "1.0.0",`, wantErr: "cniplugin: parse the amesh-cni configuration: unexpected end of JSON input"},
		{name: "wrong type", json: `{"cniVersion": "1.0.0", "timeout": 10}`, wantErr: "cniplugin: parse the amesh-cni configuration: json: cannot unmarshal number"},
		{name: "bad timeout", json: `{"cniVersion": "1.0.0", "timeout": "10 seconds"}`, wantErr: `timeout "10 seconds" is not a duration like "10s"`},
		{name: "zero timeout", json: `{"cniVersion": "1.0.0", "timeout": "0s"}`, wantErr: `timeout "0s" must be positive`},
		{name: "bad prevResult", json: `{"cniVersion": "1.0.0", "prevResult": {"ips": "x"}}`, wantErr: "prevResult: could not parse prevResult"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tt.json))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseConfig = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestParsePod(t *testing.T) {
	for _, tt := range []struct {
		args    string
		want    Pod
		wantErr string
	}{
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234-5",
			Pod{"shop", "web", "1234-5"}, ""},
		{"K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web", Pod{"shop", "web", ""}, ""}, // no UID: empty
		{"K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop;", Pod{"shop", "web", ""}, ""},
		{"", Pod{}, "no K8S_POD_NAMESPACE"},
		{"IgnoreUnknown=1;FOO=bar", Pod{}, "no K8S_POD_NAMESPACE"},
		{"K8S_POD_NAMESPACE=shop", Pod{}, "K8S_POD_NAMESPACE without K8S_POD_NAME"},
		{"K8S_POD_NAMESPACE=shop;garbage", Pod{}, `"garbage" is not KEY=VALUE`},
	} {
		got, err := parsePod(tt.args)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parsePod(%q) = %v, %v; want error %q", tt.args, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parsePod(%q) = %+v, %v; want %+v", tt.args, got, err, tt.want)
		}
	}
}
