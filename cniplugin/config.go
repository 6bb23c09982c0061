package cniplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	cniv1 "github.com/amesh-dev/amesh/api/cni/v1"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginType is the plugin's "type" in a CNI configuration, and so the name of its binary in the
// CNI bin directory.
const PluginType = "amesh-cni"

// DefaultTimeout bounds a whole CNI call unless the configuration says "timeout".
const DefaultTimeout = 10 * time.Second

// DefaultExcludeNamespaces are the namespaces whose pods amesh-cni lets through without asking the
// agent when the configuration has no "excludeNamespaces": kube-system's pods (the CNI's own, DNS,
// the API server's helpers) must start even when the agent cannot.
var DefaultExcludeNamespaces = []string{"kube-system"}

// Config is the plugin's entry of the CNI configuration list, as the runtime passes it on stdin,
// for example
//
//	{"type": "amesh-cni", "agentSocket": "/var/run/amesh/cni.sock",
//	 "kubeconfig": "/etc/cni/net.d/amesh-cni.kubeconfig", "excludeNamespaces": ["kube-system"],
//	 "timeout": "10s", "logFile": "/var/log/amesh-cni.log"}
//
// plus what the runtime adds (cniVersion, name, prevResult, runtimeConfig). The fields:
//   - agentSocket: the agent's Enrollment socket; default cniv1.DefaultSocket.
//   - kubeconfig: credentials to ask the API server whether a pod is in the mesh, used only when
//     the agent is unreachable; without one, such an ADD fails (amesh-cni cannot tell).
//   - excludeNamespaces: namespaces whose pods pass without asking anyone; default
//     ["kube-system"], [] excludes none.
//   - timeout: bounds the whole call, Go duration syntax; default "10s". The agent gets three
//     quarters of it, the API server the rest.
//   - logFile: if set, one JSON line per call (command, pod, outcome, duration), mode 0600.
//
// Unknown fields are ignored, so a newer install-cni can add some without breaking an older
// plugin.
type Config struct {
	types.PluginConf // cniVersion, name, type; PrevResult parsed (nil without one)

	AgentSocket       string
	Kubeconfig        string
	ExcludeNamespaces []string
	Timeout           time.Duration
	LogFile           string
}

// ParseConfig decodes the configuration the runtime passes on stdin and fills in the defaults.
// It does not require a prevResult (DEL may come without one): ADD and CHECK check for it.
func ParseConfig(stdin []byte) (*Config, error) {
	var raw struct {
		types.PluginConf
		AgentSocket       string    `json:"agentSocket"`
		Kubeconfig        string    `json:"kubeconfig"`
		ExcludeNamespaces *[]string `json:"excludeNamespaces"`
		Timeout           string    `json:"timeout"`
		LogFile           string    `json:"logFile"`
	}
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, fmt.Errorf("cniplugin: parse the amesh-cni configuration: %w", err)
	}
	c := &Config{
		PluginConf:        raw.PluginConf,
		AgentSocket:       raw.AgentSocket,
		Kubeconfig:        raw.Kubeconfig,
		ExcludeNamespaces: slices.Clone(DefaultExcludeNamespaces),
		Timeout:           DefaultTimeout,
		LogFile:           raw.LogFile,
	}
	if c.AgentSocket == "" {
		c.AgentSocket = cniv1.DefaultSocket
	}
	if raw.ExcludeNamespaces != nil {
		c.ExcludeNamespaces = *raw.ExcludeNamespaces
	}
	if raw.Timeout != "" {
		d, err := time.ParseDuration(raw.Timeout)
		if err != nil {
			return nil, fmt.Errorf("cniplugin: amesh-cni configuration: timeout %q is not a duration like \"10s\": %w", raw.Timeout, err)
		}
		if d <= 0 {
			return nil, fmt.Errorf("cniplugin: amesh-cni configuration: timeout %q must be positive", raw.Timeout)
		}
		c.Timeout = d
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, fmt.Errorf("cniplugin: amesh-cni configuration: prevResult: %w", err)
	}
	return c, nil
}

// Excluded reports whether pods of namespace ns are let through without asking the agent.
func (c *Config) Excluded(ns string) bool { return slices.Contains(c.ExcludeNamespaces, ns) }

// Pod names the pod of a CNI call, from the K8S_POD_* keys of CNI_ARGS.
type Pod struct {
	Namespace, Name string
	UID             string // empty when the runtime does not pass K8S_POD_UID
}

// String returns namespace/name.
func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// ref is the pod as the enrollment API names it.
func (p Pod) ref() *cniv1.PodRef {
	return &cniv1.PodRef{Namespace: p.Namespace, Name: p.Name, Uid: p.UID}
}

// errNotAPod says CNI_ARGS name no pod: a container the runtime sets up outside Kubernetes.
var errNotAPod = errors.New("no K8S_POD_NAMESPACE in CNI_ARGS")

// parsePod reads the pod from CNI_ARGS ("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;
// ..."), ignoring keys it does not know whatever IgnoreUnknown says: the runtime passes many.
// It returns errNotAPod when there is no K8S_POD_NAMESPACE.
func parsePod(cniArgs string) (Pod, error) {
	var p Pod
	for kv := range strings.SplitSeq(cniArgs, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return Pod{}, fmt.Errorf("cniplugin: CNI_ARGS %q: %q is not KEY=VALUE", cniArgs, kv)
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		}
	}
	if p.Namespace == "" {
		return Pod{}, errNotAPod
	}
	if p.Name == "" {
		return Pod{}, fmt.Errorf("cniplugin: CNI_ARGS %q: K8S_POD_NAMESPACE without K8S_POD_NAME", cniArgs)
	}
	return p, nil
}
