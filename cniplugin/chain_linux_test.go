package cniplugin

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/netns"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// The integration tests run the real chain — the reference bridge and host-local plugins, then
// the built amesh-cni binary — through libcni, as a runtime does, in network namespaces of their
// own: a "node" one, where the plugins run and the bridge is made, and a "pod" one. Everything
// is named amcni-<random> and removed at the end, failed or not.

// testSubnet is only ever used on the bridge these tests make in their node namespace.
var testSubnet = netip.MustParsePrefix("10.244.77.0/24")

// referencePlugins returns the directory of the reference CNI plugins (`make deps` builds
// them), stopping the test if they are not there: a failure under CI, a loud skip elsewhere.
func referencePlugins(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("AMESH_CNI_BIN")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "amesh", "cni", "bin")
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			if testenv.InCI() {
				t.Fatalf("reference CNI plugin %s missing (%v) and CI=true: `make deps` builds them", p, err)
			}
			t.Skipf("SKIPPED LOUDLY: reference CNI plugin %s missing (%v); `make deps` builds them (or set AMESH_CNI_BIN)", p, err)
		}
	}
	return dir
}

// buildPlugin builds cmd/amesh-cni into a temporary directory and returns that directory.
func buildPlugin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, PluginType), "../cmd/amesh-cni").CombinedOutput()
	if err != nil {
		t.Fatalf("build amesh-cni: %v\n%s", err, out)
	}
	return dir
}

func randomID(t *testing.T) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// addNetns makes a named network namespace, deleted when the test ends, and returns its path.
func addNetns(t *testing.T, name string) string {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return "/run/netns/" + name
}

// chainLab is a node namespace with a CNI chain and a pod namespace to run it for.
type chainLab struct {
	id, node, pod, bridge string
	ipamDir, logFile      string
	api                   *fakeAPI
	cni                   *libcni.CNIConfig
	list                  *libcni.NetworkConfigList
	rt                    *libcni.RuntimeConf
}

// newChainLab builds the lab; with socket != "" the chain ends with amesh-cni, told to use that
// agent socket and the lab's fake API server (which has namespace shop labelled ambient).
func newChainLab(t *testing.T, cniBin, pluginDir, socket string) *chainLab {
	t.Helper()
	id := randomID(t)
	l := &chainLab{
		id:      id,
		bridge:  "amcni" + id,
		ipamDir: filepath.Join(t.TempDir(), "ipam"),
		logFile: filepath.Join(t.TempDir(), "amesh-cni.log"),
		api:     &fakeAPI{nsLabels: map[string]map[string]string{"shop": {DataplaneModeLabel: ModeAmbient}}, podLabels: map[string]map[string]string{"shop/web": {"app": "web"}}},
	}
	l.node = addNetns(t, "amcni-"+id+"-node")
	l.pod = addNetns(t, "amcni-"+id+"-pod")
	if out, err := exec.Command("ip", "-n", filepath.Base(l.node), "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	// The API server, where amesh-cni runs: in the node namespace.
	var ln net.Listener
	if err := netns.Do(l.node, func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: l.api}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	plugins := []any{map[string]any{
		"type": "bridge", "bridge": l.bridge, "isGateway": true, "ipMasq": false,
		"ipam": map[string]any{
			"type": "host-local", "dataDir": l.ipamDir,
			"ranges": [][]map[string]string{{{"subnet": testSubnet.String(), "gateway": "10.244.77.1"}}},
			"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
		},
	}}
	if socket != "" {
		plugins = append(plugins, map[string]any{
			"type": PluginType, "agentSocket": socket, "timeout": "5s", "logFile": l.logFile,
			"kubeconfig": writeTestKubeconfig(t, "http://"+ln.Addr().String()),
		})
	}
	b, err := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "amcni-" + id, "plugins": plugins})
	if err != nil {
		t.Fatal(err)
	}
	if l.list, err = libcni.NetworkConfFromBytes(b); err != nil {
		t.Fatal(err)
	}
	l.cni = libcni.NewCNIConfigWithCacheDir([]string{cniBin, pluginDir}, filepath.Join(t.TempDir(), "cache"), nil)
	l.rt = &libcni.RuntimeConf{
		ContainerID: "amcni" + id,
		NetNS:       l.pod,
		IfName:      "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", "web"},
			{"K8S_POD_INFRA_CONTAINER_ID", "amcni" + id}, {"K8S_POD_UID", "uid-" + id}},
	}
	// Runs before the namespaces go (cleanups run last first): DEL whatever ADD left.
	t.Cleanup(func() { l.del() })
	return l
}

func (l *chainLab) add() (*types100.Result, error) {
	var res types.Result
	err := netns.Do(l.node, func() (err error) {
		res, err = l.cni.AddNetworkList(context.Background(), l.list, l.rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	return types100.NewResultFromResult(res)
}

func (l *chainLab) check() error {
	return netns.Do(l.node, func() error { return l.cni.CheckNetworkList(context.Background(), l.list, l.rt) })
}

func (l *chainLab) del() error {
	return netns.Do(l.node, func() error { return l.cni.DelNetworkList(context.Background(), l.list, l.rt) })
}

// podIP is the pod's address from an ADD result, checked to be on its eth0 and in testSubnet.
func (l *chainLab) podIP(t *testing.T, res *types100.Result) string {
	t.Helper()
	if len(res.IPs) != 1 || !testSubnet.Contains(netip.MustParseAddr(res.IPs[0].Address.IP.String())) {
		t.Fatalf("ADD gave IPs %v, want one in %v", res.IPs, testSubnet)
	}
	ip := res.IPs[0].Address.IP.String()
	out, err := exec.Command("ip", "-n", filepath.Base(l.pod), "-o", "-4", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), " "+ip+"/24 ") {
		t.Fatalf("pod eth0 has %q (%v), want %s", out, err, ip)
	}
	return ip
}

// allocated lists the addresses host-local holds for the lab's network.
func (l *chainLab) allocated() []string {
	entries, _ := os.ReadDir(filepath.Join(l.ipamDir, l.list.Name))
	var ips []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			ips = append(ips, e.Name())
		}
	}
	return ips
}

// TestChainEnrollsPod runs ADD, CHECK and DEL of a mesh pod through the real chain with an agent
// answering: the agent is told the pod's netns, identity and the IP bridge/host-local gave it.
func TestChainEnrollsPod(t *testing.T) {
	testenv.RequireRoot(t)
	cniBin := referencePlugins(t)
	agent := startAgent(t, agentEnrolls)
	l := newChainLab(t, cniBin, buildPlugin(t), agent.socket)

	res, err := l.add()
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ip := l.podIP(t, res)
	r := agent.lastAdd()
	if r == nil {
		t.Fatal("the agent got no AddPod")
	}
	if r.GetNetns() != l.pod {
		t.Errorf("AddPod netns %q, want %q", r.GetNetns(), l.pod)
	}
	if p := r.GetPod(); p.GetNamespace() != "shop" || p.GetName() != "web" || p.GetUid() != "uid-"+l.id {
		t.Errorf("AddPod pod %v, want shop/web uid-%s", p, l.id)
	}
	if !slices.Equal(r.GetIps(), []string{ip}) || r.GetContainerId() != l.rt.ContainerID || r.GetIfname() != "eth0" {
		t.Errorf("AddPod ips %v container %q ifname %q, want [%s] %q eth0", r.GetIps(), r.GetContainerId(), r.GetIfname(), ip, l.rt.ContainerID)
	}
	// prevResult went through unchanged: bridge's three interfaces, the IP, the route.
	if len(res.Interfaces) != 3 || res.Interfaces[0].Name != l.bridge || len(res.Routes) != 1 {
		t.Errorf("ADD result %v: not bridge's", res)
	}
	if l.api.requests != 0 {
		t.Errorf("the API server was asked %d times with the agent answering", l.api.requests)
	}
	if out, err := exec.Command("ip", "link", "show", l.bridge).CombinedOutput(); err == nil {
		t.Errorf("bridge %s is in the host's namespace: %s", l.bridge, out)
	}

	if err := l.check(); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if _, _, checks := agent.calls(); checks != 1 {
		t.Errorf("CHECK made %d CheckPod calls", checks)
	}

	if err := l.del(); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	d := agent.lastDel()
	if d == nil || d.GetNetns() != l.pod || d.GetContainerId() != l.rt.ContainerID || d.GetPod().GetName() != "web" {
		t.Errorf("DelPod %v", d)
	}
	if ips := l.allocated(); len(ips) != 0 {
		t.Errorf("host-local still holds %v after DEL", ips)
	}
	if lines := logLines(t, l.logFile); !slices.Equal(lines, []string{"ADD enrolled: fake", "CHECK enrolled", "DEL forgotten by the agent"}) {
		t.Errorf("log lines %q", lines)
	}
}

// TestChainAgentUnreachable runs ADD through the real chain with no agent: a mesh pod must not
// start, with the message kubelet shows; a pod outside the mesh starts; and DEL always succeeds.
func TestChainAgentUnreachable(t *testing.T) {
	testenv.RequireRoot(t)
	cniBin := referencePlugins(t)
	pluginDir := buildPlugin(t)
	for _, tt := range []struct {
		name    string
		setup   func(*fakeAPI)
		wantErr []string // nil: ADD succeeds
	}{
		{name: "mesh pod", wantErr: []string{
			"amesh-cni: pod shop/web is in the mesh (namespace shop has amesh.io/dataplane-mode=ambient) but the amesh agent on this node is not reachable at ",
			"/cni.sock (connect: no such file or directory): refusing to start it unmeshed; kubelet will retry once the agent is up"}},
		{name: "pod opted out", setup: func(a *fakeAPI) { a.podLabels["shop/web"] = map[string]string{DataplaneModeLabel: ModeNone} }},
		{name: "namespace not in the mesh", setup: func(a *fakeAPI) { a.nsLabels["shop"] = map[string]string{} }},
		{name: "API server failing too", setup: func(a *fakeAPI) { a.failing = true }, wantErr: []string{
			"the amesh agent on this node is not reachable at ", "whether pod shop/web must be in the mesh cannot be told either (cniplugin: get namespace shop: ",
			"kubelet will retry once the agent or the API server is reachable"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := newChainLab(t, cniBin, pluginDir, filepath.Join(t.TempDir(), "cni.sock"))
			if tt.setup != nil {
				tt.setup(l.api)
			}
			res, err := l.add()
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ADD: %v", err)
				}
				l.podIP(t, res)
			} else {
				var e *types.Error
				if !errors.As(err, &e) || e.Code != types.ErrTryAgainLater {
					t.Fatalf("ADD = %v (%T), want a CNI error with code 11", err, err)
				}
				for _, m := range tt.wantErr {
					if !strings.Contains(e.Msg, m) {
						t.Errorf("ADD error %q\n does not say %q", e.Msg, m)
					}
				}
			}
			if l.api.requests == 0 {
				t.Error("amesh-cni did not ask the API server")
			}
			// The runtime tears the sandbox down after a failed ADD: DEL must succeed without agent.
			if err := l.del(); err != nil {
				t.Fatalf("DEL without agent: %v", err)
			}
			if ips := l.allocated(); len(ips) != 0 {
				t.Errorf("host-local still holds %v after DEL", ips)
			}
		})
	}
}

// TestChainAddLatency measures ADD through the real chain, without amesh-cni and with it (agent
// answering at once), over ADD/DEL cycles. It reports; it asserts nothing about time.
func TestChainAddLatency(t *testing.T) {
	testenv.RequireRoot(t)
	cniBin := referencePlugins(t)
	cycles := 50
	if testing.Short() {
		cycles = 10
	}
	agent := startAgent(t, agentEnrolls)
	pluginDir := buildPlugin(t)
	for _, withAmesh := range []bool{false, true} {
		socket, name := "", "bridge+host-local"
		if withAmesh {
			socket, name = agent.socket, "bridge+host-local+amesh-cni"
		}
		l := newChainLab(t, cniBin, pluginDir, socket)
		var adds []time.Duration
		for i := range cycles {
			start := time.Now()
			if _, err := l.add(); err != nil {
				t.Fatalf("%s ADD %d: %v", name, i, err)
			}
			adds = append(adds, time.Since(start))
			if err := l.del(); err != nil {
				t.Fatalf("%s DEL %d: %v", name, i, err)
			}
		}
		t.Logf("%-28s ADD over %d cycles: p50 %v, p99 %v", name, cycles, percentile(adds, 50), percentile(adds, 99))
		if withAmesh {
			if adds, _, _ := agent.calls(); adds != cycles {
				t.Errorf("agent had %d AddPod calls, want %d", adds, cycles)
			}
			inPlugin := logDurations(t, l.logFile, "ADD")
			t.Logf("%-28s inside amesh-cni (its log): p50 %v, p99 %v", "", percentile(inPlugin, 50), percentile(inPlugin, 99))
		}
	}
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	i := (len(s)*p+99)/100 - 1
	return s[max(i, 0)].Round(10 * time.Microsecond)
}

// logLines returns "CMD outcome" for each line of amesh-cni's log.
func logLines(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	for _, m := range readLog(t, path) {
		out = append(out, fmt.Sprintf("%v %v", m["cmd"], m["outcome"]))
	}
	return out
}

func logDurations(t *testing.T, path, cmd string) []time.Duration {
	t.Helper()
	var out []time.Duration
	for _, m := range readLog(t, path) {
		if ms, ok := m["duration_ms"].(float64); ok && m["cmd"] == cmd {
			out = append(out, time.Duration(ms*float64(time.Millisecond)))
		}
	}
	return out
}

func readLog(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	for s := bufio.NewScanner(f); s.Scan(); {
		var m map[string]any
		if err := json.Unmarshal(s.Bytes(), &m); err != nil {
			t.Fatalf("log line %q: %v", s.Text(), err)
		}
		out = append(out, m)
	}
	return out
}
