// Package cniplugin is amesh-cni, the CNI plugin that enrolls pods in the mesh (DESIGN.md §6), and
// install-cni, which puts it into the node's CNI configuration.
//
// amesh-cni is chained after the node's primary plugin: at ADD the primary plugin has given the
// pod its interface and IPs (prevResult), and amesh-cni asks the node's agent, over the Enrollment
// API on a unix socket (package cniv1), to enroll the pod before ADD returns, so no application
// byte leaves the pod before the mesh is in place. It passes prevResult through unchanged.
//
// When the agent cannot be reached, a pod that must be in the mesh does not start: ADD fails and
// kubelet retries (fail closed). Whether it must is the API server's word (a MeshDecider); when
// that cannot be had either, ADD fails too. DEL never fails for an unreachable agent, so pods can
// always be torn down; the agent reconciles when it comes back.
package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	cniv1 "github.com/amesh-dev/amesh/api/cni/v1"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SupportedVersions are the CNI spec versions amesh-cni speaks: every version with chaining
// (prevResult came in 0.3.0). Not only 1.0.0+, because the plugin runs in the primary plugin's
// chain at the chain's version, and common primary configurations (flannel's, Calico's) still
// say 0.3.1: a 1.0-only plugin would fail every pod of such a node.
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// CodeAgentRefused is the CNI error code of a call the agent answered with an error (the
// message is the agent's). The other errors use the spec's codes: ErrTryAgainLater when the
// agent is unreachable and the pod must be in the mesh, ErrDecodingFailure and
// ErrInvalidNetworkConfig for a bad configuration. Codes from 100 are the plugin's own.
const CodeAgentRefused uint = 100

// Plugin runs the CNI commands. The zero value is ready to use: it prints to os.Stdout and, when
// the agent is unreachable, asks the API server with NewKubeDecider(conf.Kubeconfig).
type Plugin struct {
	// Stdout receives ADD's result; nil means os.Stdout.
	Stdout io.Writer
	// NewDecider returns the MeshDecider for a call whose agent is unreachable; nil means a
	// KubeDecider from the configuration's kubeconfig. Tests put a table here.
	NewDecider func(conf *Config) (MeshDecider, error)
}

// Funcs returns the plugin's commands for skel.PluginMainFuncs. GC and STATUS (CNI 1.1) are left
// to skel, which answers them with success: the agent, not the plugin, owns enrollment state.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Check: p.Check, Del: p.Del}
}

// Add is CNI ADD: it enrolls the pod through the agent and prints prevResult unchanged. The
// error, a *types.Error, is what kubelet shows in the pod's events.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	return p.run("ADD", args, p.add)
}

// Check is CNI CHECK: it asks the agent whether the pod is still enrolled as ADD left it.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	return p.run("CHECK", args, p.check)
}

// Del is CNI DEL: it tells the agent the pod is gone. It succeeds when the agent is unreachable,
// and without prevResult or netns, as the spec wants of DEL.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	return p.run("DEL", args, p.del)
}

// call is the state of one CNI command.
type call struct {
	conf    *Config
	args    *skel.CmdArgs
	pod     Pod
	check   bool   // CHECK, not ADD
	outcome string // for the log line
}

// run parses the configuration, runs cmd within the configured timeout and logs one line.
func (p *Plugin) run(name string, args *skel.CmdArgs, cmd func(context.Context, *call) error) error {
	start := time.Now()
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "amesh-cni: "+err.Error(), "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.Timeout)
	defer cancel()
	c := &call{conf: conf, args: args}
	err = cmd(ctx, c)
	logCall(conf.LogFile, name, c, time.Since(start), err)
	return err
}

// meshPod is what ADD and CHECK start with: the previous plugin's result and the pod of the
// call. skip is set, with c.outcome saying why, when the call is for no pod (no
// K8S_POD_NAMESPACE) or for a pod of an excluded namespace: amesh has nothing to do for it.
func (c *call) meshPod(why string) (prev *types100.Result, pod Pod, skip bool, err error) {
	prev, err = c.prevResult()
	if err != nil {
		return nil, Pod{}, false, err
	}
	pod, err = parsePod(c.args.Args)
	switch {
	case errors.Is(err, errNotAPod):
		c.outcome = "not a pod (no K8S_POD_NAMESPACE): " + why
		return nil, Pod{}, true, nil
	case err != nil:
		return nil, Pod{}, false, types.NewError(types.ErrInvalidEnvironmentVariables, "amesh-cni: "+err.Error(), "")
	}
	c.pod = pod
	if c.conf.Excluded(pod.Namespace) {
		c.outcome = "excluded namespace: " + why
		return nil, Pod{}, true, nil
	}
	return prev, pod, false, nil
}

func (p *Plugin) add(ctx context.Context, c *call) error {
	prev, pod, skip, err := c.meshPod("passed through")
	if err != nil {
		return err
	}
	if skip {
		return p.print(c.conf, c.conf.PrevResult)
	}
	reply, err := callAgent(ctx, c.conf.AgentSocket, agentBudget(c.conf.Timeout), func(ctx context.Context, e cniv1.EnrollmentClient) (*cniv1.AddPodReply, error) {
		return e.AddPod(ctx, &cniv1.AddPodRequest{
			Pod:         pod.ref(),
			Netns:       c.args.Netns,
			Ips:         resultIPs(prev),
			ContainerId: c.args.ContainerID,
			Ifname:      c.args.IfName,
		})
	})
	if err != nil {
		if err := p.agentError(ctx, c, err); err != nil {
			return err
		}
	} else {
		c.outcome = enrolledOutcome(reply.GetEnrolled(), reply.GetDetail())
	}
	return p.print(c.conf, c.conf.PrevResult)
}

func (p *Plugin) check(ctx context.Context, c *call) error {
	c.check = true
	prev, pod, skip, err := c.meshPod("nothing to check")
	if err != nil || skip {
		return err
	}
	reply, err := callAgent(ctx, c.conf.AgentSocket, agentBudget(c.conf.Timeout), func(ctx context.Context, e cniv1.EnrollmentClient) (*cniv1.CheckPodReply, error) {
		return e.CheckPod(ctx, &cniv1.CheckPodRequest{Pod: pod.ref(), Netns: c.args.Netns, Ips: resultIPs(prev)})
	})
	if err != nil {
		return p.agentError(ctx, c, err)
	}
	c.outcome = enrolledOutcome(reply.GetEnrolled(), reply.GetDetail())
	return nil
}

func (p *Plugin) del(ctx context.Context, c *call) error {
	pod, err := parsePod(c.args.Args)
	switch {
	case errors.Is(err, errNotAPod):
		c.outcome = "not a pod: nothing to do"
		return nil
	case err != nil:
		// DEL must not wedge a sandbox's teardown over arguments ADD would have refused.
		c.outcome = "unreadable CNI_ARGS, ignored: " + err.Error()
		return nil
	}
	c.pod = pod
	if c.conf.Excluded(pod.Namespace) {
		c.outcome = "excluded namespace: nothing to do"
		return nil
	}
	_, err = callAgent(ctx, c.conf.AgentSocket, c.conf.Timeout, func(ctx context.Context, e cniv1.EnrollmentClient) (*cniv1.DelPodReply, error) {
		return e.DelPod(ctx, &cniv1.DelPodRequest{Pod: pod.ref(), Netns: c.args.Netns, ContainerId: c.args.ContainerID})
	})
	var unreachable *unreachableError
	switch {
	case errors.As(err, &unreachable):
		c.outcome = unreachable.Error() + ": ignored, the agent reconciles when it is back"
		return nil
	case status.Code(err) == codes.Unavailable:
		// The agent going away during the call, or saying it is not ready: DEL must not wait
		// for it either.
		c.outcome = "agent unavailable (" + status.Convert(err).Message() + "): ignored, the agent reconciles when it is back"
		return nil
	case err != nil:
		c.outcome = "refused by the agent"
		return refusedError(pod, err)
	}
	c.outcome = "forgotten by the agent"
	return nil
}

// agentError turns a failed agent call of ADD or CHECK into the command's result: the agent's
// refusal as it is; for an unreachable agent, the verdict of the MeshDecider (nil: let it be).
func (p *Plugin) agentError(ctx context.Context, c *call, err error) error {
	var unreachable *unreachableError
	if !errors.As(err, &unreachable) {
		c.outcome = "refused by the agent"
		return refusedError(c.pod, err)
	}
	var (
		inMesh bool
		reason string
	)
	d, derr := p.decider(c.conf)
	if derr == nil {
		inMesh, reason, derr = d.InMesh(ctx, c.pod.Namespace, c.pod.Name)
	}
	outcome, verdict := unreachableVerdict(c.check, c.pod, unreachable, inMesh, reason, derr)
	c.outcome = outcome
	if verdict != nil {
		return verdict
	}
	return nil
}

// unreachableVerdict decides an ADD (check false) or CHECK (check true) of a pod whose agent is
// unreachable, from what the MeshDecider said: a mesh pod fails (fail closed), so does a pod
// nobody can say anything about; any other pod goes on without the agent. It returns the log's
// outcome and the error kubelet shows, nil to go on.
func unreachableVerdict(check bool, pod Pod, agentErr *unreachableError, inMesh bool, reason string, decideErr error) (string, *types.Error) {
	switch {
	case decideErr != nil:
		tail := "refusing to start it unmeshed; kubelet will retry once the agent or the API server is reachable"
		if check {
			tail = "its enrollment cannot be checked"
		}
		msg := fmt.Sprintf("amesh-cni: %v, and whether pod %s must be in the mesh cannot be told either (%v): %s",
			agentErr, pod, decideErr, tail)
		return "failed closed: agent and API server unreachable", types.NewError(types.ErrTryAgainLater, msg, "")
	case inMesh:
		tail := "refusing to start it unmeshed; kubelet will retry once the agent is up"
		if check {
			tail = "its enrollment cannot be checked"
		}
		msg := fmt.Sprintf("amesh-cni: pod %s is in the mesh (%s) but %v: %s", pod, reason, agentErr, tail)
		return "failed closed: mesh pod, agent unreachable", types.NewError(types.ErrTryAgainLater, msg, "")
	}
	return fmt.Sprintf("%v; not a mesh pod (%s): passed through", agentErr, reason), nil
}

// refusedError is the CNI error for an agent's answer err.
func refusedError(pod Pod, err error) *types.Error {
	s := status.Convert(err)
	return types.NewError(CodeAgentRefused,
		fmt.Sprintf("amesh-cni: the amesh agent refused pod %s: %s", pod, s.Message()),
		"gRPC code "+s.Code().String())
}

func enrolledOutcome(enrolled bool, detail string) string {
	o := "not in the mesh (agent)"
	if enrolled {
		o = "enrolled"
	}
	if detail != "" {
		o += ": " + detail
	}
	return o
}

// decider returns the MeshDecider of a call.
func (p *Plugin) decider(conf *Config) (MeshDecider, error) {
	if p.NewDecider != nil {
		return p.NewDecider(conf)
	}
	return NewKubeDecider(conf.Kubeconfig, conf.Timeout-agentBudget(conf.Timeout))
}

// prevResult is the primary plugin's result, which ADD and CHECK require.
func (c *call) prevResult() (*types100.Result, error) {
	if c.conf.PrevResult == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			"amesh-cni: no prevResult: amesh-cni must be chained after the primary plugin (the last entry of its conflist's plugins), not run alone", "")
	}
	r, err := types100.NewResultFromResult(c.conf.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("amesh-cni: prevResult: %v", err), "")
	}
	return r, nil
}

// resultIPs are the addresses of a result, without prefix length.
func resultIPs(r *types100.Result) []string {
	ips := make([]string, 0, len(r.IPs))
	for _, ip := range r.IPs {
		ips = append(ips, ip.Address.IP.String())
	}
	return ips
}

// print writes r at the configuration's version, as types.PrintResult would, to p.Stdout.
func (p *Plugin) print(conf *Config, r types.Result) error {
	out, err := r.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("amesh-cni: prevResult as version %s: %v", conf.CNIVersion, err), "")
	}
	w := p.Stdout
	if w == nil {
		w = os.Stdout
	}
	if err := out.PrintTo(w); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("amesh-cni: print result: %v", err), "")
	}
	return nil
}

// logCall appends the call's line to the log file, if one is configured. Logging never fails a
// call: a log file that cannot be opened is skipped. Each line is one write on an O_APPEND file,
// so the lines of concurrent calls do not interleave.
func logCall(path, cmd string, c *call, d time.Duration, err error) {
	if path == "" {
		return
	}
	f, ferr := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if ferr != nil {
		return
	}
	defer f.Close()
	attrs := []slog.Attr{
		slog.String("cmd", cmd),
		slog.String("container_id", c.args.ContainerID),
		slog.String("netns", c.args.Netns),
		slog.String("outcome", c.outcome),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
	}
	if c.pod.Namespace != "" {
		attrs = append(attrs, slog.String("pod", c.pod.String()))
	}
	level, msg := slog.LevelInfo, "cni "+cmd
	if err != nil {
		level = slog.LevelError
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	slog.New(slog.NewJSONHandler(f, nil)).LogAttrs(context.Background(), level, msg, attrs...)
}
