package cniplugin

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	podArgs    = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=uid-web-1"
	podNetns   = "/var/run/netns/cni-1234"
	prevResult = `{"cniVersion": "1.0.0",
		"interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:00"}, {"name": "eth0", "mac": "aa:bb:cc:dd:ee:01", "sandbox": "/var/run/netns/cni-1234"}],
		"ips": [{"address": "10.244.77.5/24", "gateway": "10.244.77.1", "interface": 1}, {"address": "fd00:77::5/64", "interface": 1}],
		"routes": [{"dst": "0.0.0.0/0"}], "dns": {}}`
)

// stdin is the plugin's configuration as libcni passes it, with prevResult unless it is "".
func stdin(t *testing.T, socket, extra, prev string) []byte {
	t.Helper()
	s := `{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "amesh-cni", "agentSocket": "` + socket + `"` + extra
	if prev != "" {
		s += `, "prevResult": ` + prev
	}
	return []byte(s + "}")
}

func cmdArgs(conf []byte, args string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "c0ffee", Netns: podNetns, IfName: "eth0", Args: args, Path: "/opt/cni/bin", StdinData: conf}
}

// wantCNIError checks err is a *types.Error with code and a message containing each of msgs.
func wantCNIError(t *testing.T, err error, code uint, msgs ...string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v (%T), want a *types.Error with code %d", err, err, code)
	}
	if e.Code != code {
		t.Errorf("code = %d, want %d (%s)", e.Code, code, e.Msg)
	}
	for _, m := range msgs {
		if !strings.Contains(e.Error(), m) {
			t.Errorf("error %q\n does not say %q", e.Error(), m)
		}
	}
}

// wantPrinted checks out holds prevResult, unchanged.
func wantPrinted(t *testing.T, out []byte, prev string) {
	t.Helper()
	got, err := types100.NewResult(out)
	if err != nil {
		t.Fatalf("printed %q: %v", out, err)
	}
	want, err := types100.NewResult([]byte(prev))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("printed %s\nwant prevResult %s", out, prev)
	}
}

// TestAddCheckDecisions runs ADD and CHECK against a real gRPC server on a unix socket (or none)
// for each way the agent can answer, times each thing the MeshDecider can say.
func TestAddCheckDecisions(t *testing.T) {
	mesh := &tableDecider{pods: map[string]bool{"shop/*": true}}
	notMesh := &tableDecider{pods: map[string]bool{"shop/*": false}}
	apiDown := &tableDecider{} // every answer an error
	const (
		willRetry = "refusing to start it unmeshed; kubelet will retry once the agent is up"
		checkTail = "its enrollment cannot be checked"
	)
	for _, tt := range []struct {
		name    string
		agent   *agentBehaviour // nil: no agent, the socket does not exist
		stale   bool            // the socket exists, nobody listens
		decider *tableDecider   // nil: the default KubeDecider, without a kubeconfig
		extra   string          // more configuration
		args    string          // CNI_ARGS; "" means podArgs
		wantErr uint            // 0: success, prevResult printed
		msgs    []string        // what the error says
		asked   bool            // the decider must be asked
	}{
		{name: "enrolled", agent: ptr(agentEnrolls), decider: apiDown},
		{name: "agent says not in the mesh", agent: ptr(agentNotMesh), decider: apiDown},
		{name: "agent refuses", agent: ptr(agentRefuses), decider: mesh, wantErr: CodeAgentRefused,
			msgs: []string{"amesh-cni: the amesh agent refused pod shop/web: " + refusal, "gRPC code FailedPrecondition"}},
		{name: "no agent, mesh pod", decider: mesh, wantErr: types.ErrTryAgainLater, asked: true,
			msgs: []string{"amesh-cni: pod shop/web is in the mesh (namespace shop has amesh.io/dataplane-mode=ambient) but the amesh agent on this node is not reachable at ",
				"/cni.sock (connect: no such file or directory): " + willRetry}},
		{name: "no agent, not a mesh pod", decider: notMesh, asked: true},
		{name: "no agent, API server down", decider: apiDown, wantErr: types.ErrTryAgainLater, asked: true,
			msgs: []string{"the amesh agent on this node is not reachable at ", "(connect: no such file or directory)",
				"whether pod shop/web must be in the mesh cannot be told either (get namespace shop: dial tcp 10.96.0.1:443: connect: connection refused)",
				"kubelet will retry once the agent or the API server is reachable"}},
		{name: "no agent, no kubeconfig", wantErr: types.ErrTryAgainLater,
			msgs: []string{"not reachable", "no kubeconfig configured", "refusing to start it unmeshed"}},
		{name: "stale socket, mesh pod", stale: true, decider: mesh, wantErr: types.ErrTryAgainLater, asked: true,
			msgs: []string{"(connect: connection refused): " + willRetry}},
		{name: "agent hangs, mesh pod", agent: ptr(agentHangs), decider: mesh, extra: `, "timeout": "400ms"`,
			wantErr: types.ErrTryAgainLater, asked: true, msgs: []string{
				"pod shop/web is in the mesh (namespace shop has amesh.io/dataplane-mode=ambient) but the amesh agent on this node did not answer at ",
				"/cni.sock within 300ms: " + willRetry}},
		{name: "agent hangs, not a mesh pod", agent: ptr(agentHangs), decider: notMesh, extra: `, "timeout": "400ms"`, asked: true},
		// An agent that answers Unavailable has been reached: its word, not the API server's.
		{name: "agent answers unavailable", agent: ptr(agentUnavailable), decider: notMesh, wantErr: CodeAgentRefused,
			msgs: []string{"amesh-cni: the amesh agent refused pod shop/web: agent is shutting down", "gRPC code Unavailable"}},
		{name: "excluded namespace", args: "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns", decider: apiDown},
		{name: "excluded by configuration", args: "K8S_POD_NAMESPACE=infra;K8S_POD_NAME=x", decider: apiDown,
			extra: `, "excludeNamespaces": ["infra"]`},
		{name: "not a pod", args: "IgnoreUnknown=1", decider: apiDown},
		{name: "bad CNI_ARGS", args: "K8S_POD_NAMESPACE=shop", decider: apiDown, wantErr: types.ErrInvalidEnvironmentVariables,
			msgs: []string{"K8S_POD_NAMESPACE without K8S_POD_NAME"}},
	} {
		for _, cmd := range []string{"ADD", "CHECK"} {
			t.Run(cmd+"/"+tt.name, func(t *testing.T) {
				socket := filepath.Join(t.TempDir(), "cni.sock")
				var agent *fakeAgent
				switch {
				case tt.agent != nil:
					agent = startAgent(t, *tt.agent)
					socket = agent.socket
				case tt.stale:
					l, err := net.Listen("unix", socket)
					if err != nil {
						t.Fatal(err)
					}
					l.(*net.UnixListener).SetUnlinkOnClose(false)
					l.Close()
				}
				var out bytes.Buffer
				p := &Plugin{Stdout: &out}
				var d *tableDecider
				if tt.decider != nil {
					d = &tableDecider{pods: tt.decider.pods}
					p.NewDecider = func(*Config) (MeshDecider, error) { return d, nil }
				}
				args := tt.args
				if args == "" {
					args = podArgs
				}
				a := cmdArgs(stdin(t, socket, tt.extra, prevResult), args)
				var err error
				if cmd == "ADD" {
					err = p.Add(a)
				} else {
					err = p.Check(a)
				}
				if tt.wantErr != 0 {
					msgs := tt.msgs
					if cmd == "CHECK" {
						msgs = nil
						for _, m := range tt.msgs {
							m = strings.ReplaceAll(m, willRetry, checkTail)
							m = strings.ReplaceAll(m, "refusing to start it unmeshed", checkTail)
							m = strings.ReplaceAll(m, "kubelet will retry once the agent or the API server is reachable", checkTail)
							msgs = append(msgs, m)
						}
					}
					wantCNIError(t, err, tt.wantErr, msgs...)
					if out.Len() != 0 {
						t.Errorf("%s failed but printed %q", cmd, out.Bytes())
					}
				} else {
					if err != nil {
						t.Fatalf("%s = %v, want success", cmd, err)
					}
					if cmd == "ADD" {
						wantPrinted(t, out.Bytes(), prevResult)
					} else if out.Len() != 0 {
						t.Errorf("CHECK printed %q", out.Bytes())
					}
				}
				if d != nil && (d.asked > 0) != tt.asked {
					t.Errorf("decider asked %d times, want asked=%v", d.asked, tt.asked)
				}
				if agent == nil {
					return
				}
				adds, dels, checks := agent.calls()
				wantCalls := 1
				if tt.args != "" { // excluded, not a pod, bad CNI_ARGS: the agent is not called
					wantCalls = 0
				}
				if cmd == "ADD" && (adds != wantCalls || checks != 0) || cmd == "CHECK" && (checks != wantCalls || adds != 0) || dels != 0 {
					t.Errorf("agent had %d AddPod, %d CheckPod, %d DelPod calls; want %d %s", adds, checks, dels, wantCalls, cmd)
				}
			})
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestAddRequest checks what the agent is told at ADD: the pod from CNI_ARGS, the netns, every
// IP of prevResult, the container ID and interface.
func TestAddRequest(t *testing.T) {
	agent := startAgent(t, agentEnrolls)
	var out bytes.Buffer
	p := &Plugin{Stdout: &out}
	if err := p.Add(cmdArgs(stdin(t, agent.socket, "", prevResult), podArgs)); err != nil {
		t.Fatal(err)
	}
	r := agent.lastAdd()
	if r == nil {
		t.Fatal("no AddPod")
	}
	if got := r.GetPod(); got.GetNamespace() != "shop" || got.GetName() != "web" || got.GetUid() != "uid-web-1" {
		t.Errorf("pod = %v", got)
	}
	if r.GetNetns() != podNetns || r.GetContainerId() != "c0ffee" || r.GetIfname() != "eth0" {
		t.Errorf("netns, container, ifname = %q %q %q", r.GetNetns(), r.GetContainerId(), r.GetIfname())
	}
	if want := []string{"10.244.77.5", "fd00:77::5"}; !slices.Equal(r.GetIps(), want) {
		t.Errorf("ips = %v, want %v", r.GetIps(), want)
	}

	// Without K8S_POD_UID the UID is empty, the rest the same.
	if err := p.Add(cmdArgs(stdin(t, agent.socket, "", prevResult), "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web")); err != nil {
		t.Fatal(err)
	}
	if got := agent.lastAdd().GetPod(); got.GetUid() != "" || got.GetName() != "web" {
		t.Errorf("pod without K8S_POD_UID = %v", got)
	}
}

// TestChainedOnly checks ADD and CHECK refuse to run without prevResult, saying why.
func TestChainedOnly(t *testing.T) {
	agent := startAgent(t, agentEnrolls)
	p := &Plugin{Stdout: new(bytes.Buffer)}
	for name, f := range map[string]func(*skel.CmdArgs) error{"ADD": p.Add, "CHECK": p.Check} {
		err := f(cmdArgs(stdin(t, agent.socket, "", ""), podArgs))
		wantCNIError(t, err, types.ErrInvalidNetworkConfig, "amesh-cni must be chained after the primary plugin")
		if adds, _, checks := agent.calls(); adds+checks != 0 {
			t.Errorf("%s without prevResult called the agent", name)
		}
	}
}

// TestAddOldVersion checks a 0.3.1 chain (flannel's, Calico's) gets its result at 0.3.1.
func TestAddOldVersion(t *testing.T) {
	agent := startAgent(t, agentEnrolls)
	var out bytes.Buffer
	p := &Plugin{Stdout: &out}
	conf := `{"cniVersion": "0.3.1", "name": "cbr0", "type": "amesh-cni", "agentSocket": "` + agent.socket + `",
		"prevResult": {"cniVersion": "0.3.1", "interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": [{"version": "4", "address": "10.244.77.9/24", "interface": 0}]}}`
	if err := p.Add(cmdArgs([]byte(conf), podArgs)); err != nil {
		t.Fatal(err)
	}
	var got struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Version string `json:"version"`
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.CNIVersion != "0.3.1" || len(got.IPs) != 1 || got.IPs[0].Version != "4" {
		t.Errorf("printed %s (%v): want a 0.3.1 result", out.Bytes(), err)
	}
	if ips := agent.lastAdd().GetIps(); !slices.Equal(ips, []string{"10.244.77.9"}) {
		t.Errorf("ips = %v", ips)
	}
}

// TestDel checks DEL tells the agent, and succeeds whenever the agent cannot be asked.
func TestDel(t *testing.T) {
	for _, tt := range []struct {
		name     string
		agent    *agentBehaviour
		args     string
		netns    string
		prev     string
		wantErr  uint
		msgs     []string
		wantCall bool
	}{
		{name: "agent forgets", agent: ptr(agentEnrolls), args: podArgs, netns: podNetns, prev: prevResult, wantCall: true},
		{name: "no prevResult, no netns", agent: ptr(agentEnrolls), args: podArgs, wantCall: true},
		{name: "no agent", args: podArgs, netns: podNetns},
		{name: "agent hangs", agent: ptr(agentHangs), args: podArgs, netns: podNetns, wantCall: true},
		{name: "agent unavailable", agent: ptr(agentUnavailable), args: podArgs, wantCall: true},
		{name: "agent refuses", agent: ptr(agentRefuses), args: podArgs, wantCall: true, wantErr: CodeAgentRefused,
			msgs: []string{"the amesh agent refused pod shop/web: " + refusal}},
		{name: "excluded namespace", agent: ptr(agentEnrolls), args: "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns"},
		{name: "not a pod", agent: ptr(agentEnrolls), args: ""},
		{name: "bad CNI_ARGS", agent: ptr(agentEnrolls), args: "K8S_POD_NAMESPACE=shop;junk"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			socket := filepath.Join(t.TempDir(), "cni.sock")
			var agent *fakeAgent
			if tt.agent != nil {
				agent = startAgent(t, *tt.agent)
				socket = agent.socket
			}
			var out bytes.Buffer
			p := &Plugin{Stdout: &out, NewDecider: func(*Config) (MeshDecider, error) {
				t.Error("DEL asked the MeshDecider")
				return &tableDecider{}, nil
			}}
			a := cmdArgs(stdin(t, socket, `, "timeout": "300ms"`, tt.prev), tt.args)
			a.Netns = tt.netns
			err := p.Del(a)
			if tt.wantErr != 0 {
				wantCNIError(t, err, tt.wantErr, tt.msgs...)
			} else if err != nil {
				t.Fatalf("DEL = %v, want success", err)
			}
			if out.Len() != 0 {
				t.Errorf("DEL printed %q", out.Bytes())
			}
			if agent == nil {
				return
			}
			r := agent.lastDel()
			if (r != nil) != tt.wantCall {
				t.Fatalf("DelPod = %v, want called=%v", r, tt.wantCall)
			}
			if r != nil && (r.GetPod().GetName() != "web" || r.GetPod().GetUid() != "uid-web-1" || r.GetNetns() != tt.netns || r.GetContainerId() != "c0ffee") {
				t.Errorf("DelPod = %v", r)
			}
		})
	}
}

// TestBadConfig checks each command fails with a decoding error on a configuration it cannot read.
func TestBadConfig(t *testing.T) {
	p := &Plugin{Stdout: new(bytes.Buffer)}
	for name, f := range map[string]func(*skel.CmdArgs) error{"ADD": p.Add, "CHECK": p.Check, "DEL": p.Del} {
		err := f(cmdArgs([]byte(`{"cniVersion": "1.0.0", "name": "n", "type": "amesh-cni", "timeout": "soon"}`), podArgs))
		t.Run(name, func(t *testing.T) {
			wantCNIError(t, err, types.ErrDecodingFailure, `amesh-cni: cniplugin: amesh-cni configuration: timeout "soon" is not a duration`)
		})
	}
}

// TestLogFile checks each call appends one JSON line with its command, pod, outcome and duration.
func TestLogFile(t *testing.T) {
	agent := startAgent(t, agentEnrolls)
	logFile := filepath.Join(t.TempDir(), "amesh-cni.log")
	extra := `, "logFile": "` + logFile + `"`
	p := &Plugin{Stdout: new(bytes.Buffer), NewDecider: func(*Config) (MeshDecider, error) {
		return &tableDecider{pods: map[string]bool{"shop/*": true}}, nil
	}}
	if err := p.Add(cmdArgs(stdin(t, agent.socket, extra, prevResult), podArgs)); err != nil {
		t.Fatal(err)
	}
	if err := p.Del(cmdArgs(stdin(t, agent.socket, extra, ""), podArgs)); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "none.sock")
	if err := p.Add(cmdArgs(stdin(t, missing, extra, prevResult), podArgs)); err == nil {
		t.Fatal("ADD of a mesh pod without agent succeeded")
	}
	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []map[string]any
	for s := bufio.NewScanner(f); s.Scan(); {
		var m map[string]any
		if err := json.Unmarshal(s.Bytes(), &m); err != nil {
			t.Fatalf("log line %q: %v", s.Text(), err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 3 {
		t.Fatalf("%d log lines, want 3: %v", len(lines), lines)
	}
	for i, want := range []struct{ cmd, level, outcome string }{
		{"ADD", "INFO", "enrolled: fake"},
		{"DEL", "INFO", "forgotten by the agent"},
		{"ADD", "ERROR", "failed closed: mesh pod, agent unreachable"},
	} {
		l := lines[i]
		if l["cmd"] != want.cmd || l["level"] != want.level || l["outcome"] != want.outcome || l["pod"] != "shop/web" ||
			l["container_id"] != "c0ffee" || l["netns"] != podNetns {
			t.Errorf("line %d = %v, want %+v", i, l, want)
		}
		if _, ok := l["duration_ms"].(float64); !ok {
			t.Errorf("line %d has no duration_ms: %v", i, l)
		}
	}
	if e, _ := lines[2]["error"].(string); !strings.Contains(e, "is in the mesh") {
		t.Errorf("line 2 error = %q", e)
	}
	if fi, err := os.Stat(logFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("log file mode = %v, %v; want 0600", fi.Mode(), err)
	}
}

// TestUnreachableVerdict is the decision alone, for each thing the MeshDecider can say.
func TestUnreachableVerdict(t *testing.T) {
	pod := Pod{"shop", "web", ""}
	agentErr := &unreachableError{socket: "/var/run/amesh/cni.sock", err: &net.OpError{Op: "dial", Net: "unix",
		Err: os.NewSyscallError("connect", os.ErrNotExist)}}
	for _, tt := range []struct {
		name      string
		inMesh    bool
		reason    string
		decideErr error
		wantErr   string // "" lets the pod start
	}{
		{"mesh", true, "namespace shop has amesh.io/dataplane-mode=ambient", nil,
			"amesh-cni: pod shop/web is in the mesh (namespace shop has amesh.io/dataplane-mode=ambient) but the amesh agent on this node " +
				"is not reachable at /var/run/amesh/cni.sock (connect: file does not exist): refusing to start it unmeshed; kubelet will retry once the agent is up"},
		{"opted out", false, "pod shop/web has amesh.io/dataplane-mode=none", nil, ""},
		{"namespace not in the mesh", false, "namespace shop is not labelled amesh.io/dataplane-mode=ambient", nil, ""},
		{"cannot tell", false, "", errors.New("get namespace shop: Unauthorized"),
			"amesh-cni: the amesh agent on this node is not reachable at /var/run/amesh/cni.sock (connect: file does not exist), and whether " +
				"pod shop/web must be in the mesh cannot be told either (get namespace shop: Unauthorized): refusing to start it unmeshed; " +
				"kubelet will retry once the agent or the API server is reachable"},
		{"error wins over an answer", true, "x", errors.New("boom"), "cannot be told either (boom)"},
	} {
		outcome, err := unreachableVerdict(false, pod, agentErr, tt.inMesh, tt.reason, tt.decideErr)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s: %v, want the pod to start", tt.name, err)
		case tt.wantErr == "" && !strings.Contains(outcome, tt.reason):
			t.Errorf("%s: outcome %q does not give the reason %q", tt.name, outcome, tt.reason)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Msg, tt.wantErr) || err.Code != types.ErrTryAgainLater):
			t.Errorf("%s: %v, want code 11 and %q", tt.name, err, tt.wantErr)
		}
	}
}
