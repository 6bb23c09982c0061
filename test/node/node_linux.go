package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/amesh-dev/amesh/test/k8s"
)

// SandboxImage is the pod sandbox image containerd is configured with; a test imports an image of
// that name (testapp's pause) since nothing is pulled.
const SandboxImage = "registry.k8s.io/pause:3.10"

// Config describes one node.
type Config struct {
	// Name is the node's name (kubelet's --hostname-override), one of the control plane's
	// Config.Nodes, so that it has a kubelet user.
	Name string
	// Netns is the path of the node's network namespace; IP its address there, which the
	// control plane reaches (kubelet's --node-ip: logs, exec) and the other nodes route to.
	Netns string
	IP    netip.Addr
	// PodCIDR is the range the node's bridge CNI gives its pods. The caller routes it between
	// nodes, as a flat-network CNI would.
	PodCIDR netip.Prefix
	// ControlPlane is the cluster's API server, started with Name in Config.Nodes.
	ControlPlane *k8s.ControlPlane
	// Dir is where the node's data directory is made; default os.TempDir(). Stop removes it.
	Dir string
	// CNIPlugins is the directory of the reference CNI plugins (bridge, host-local, loopback)
	// copied into the node's /opt/cni/bin.
	CNIPlugins string
	// Images are image archives (ociimage's, or any `ctr images import` reads) imported into the
	// node's containerd before kubelet starts; one of them must be SandboxImage.
	Images []string
	// Logger receives the node's lifecycle (the processes log to files in the data directory).
	Logger *slog.Logger
}

// Node is a running kubelet and containerd. Its methods are safe for concurrent use.
type Node struct {
	cfg     Config
	log     *slog.Logger
	dir     string
	cgroup  string // kubelet's cgroupRoot, /<base of dir>
	mntNS   string // the node's mount namespace, as readlink /proc/PID/ns/mnt shows it
	primary []byte // the primary CNI configuration as written

	mu                  sync.Mutex
	containerd, kubelet *proc
	stopped             bool
	stopErr             error
}

// Start prepares the node's directories, cgroups and configuration, starts containerd in a new
// mount namespace inside Netns, imports Images, and starts kubelet in the same namespaces. It
// returns once containerd answers; the Node object appears later (WaitReady). On failure
// everything is stopped and removed.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if cfg.ControlPlane == nil || cfg.ControlPlane.Binaries().Kubelet == "" {
		return nil, errors.New("node: a control plane with real nodes (k8s.Config.Nodes) is needed")
	}
	for _, tool := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("node: %s not found (make deps installs containerd and runc): %w", tool, err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("node", cfg.Name)
	dir, err := os.MkdirTemp(cfg.Dir, "amesh-node-"+cfg.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n := &Node{cfg: cfg, log: log, dir: dir, cgroup: "/" + filepath.Base(dir)}
	defer func() {
		if err != nil {
			n.Stop()
		}
	}()
	if err := n.writeFiles(); err != nil {
		return nil, err
	}
	if err := makeCgroups(n.cgroup); err != nil {
		return nil, err
	}
	if err := n.startContainerd(ctx); err != nil {
		return nil, err
	}
	for _, img := range cfg.Images {
		if out, err := n.Run(ctx, "ctr", "--address", containerdSocket, "-n", "k8s.io", "images", "import", img); err != nil {
			return nil, fmt.Errorf("node: import %s: %w\n%s", img, err, out)
		}
	}
	if err := n.startKubelet(); err != nil {
		return nil, err
	}
	log.Info("node started", "dir", dir, "ip", cfg.IP, "pods", cfg.PodCIDR)
	return n, nil
}

// containerdSocket is containerd's socket inside the node's mount namespace.
const containerdSocket = "/run/containerd/containerd.sock"

// PrimaryCNI returns the node's primary CNI configuration list as Start wrote it, before any
// plugin was chained into it, and its path (on the host).
func (n *Node) PrimaryCNI() (conf []byte, path string) {
	return n.primary, filepath.Join(n.dir, "net.d", "10-kubenet.conflist")
}

// Dir returns the node's data directory (logs: containerd.log, kubelet.log).
func (n *Node) Dir() string { return n.dir }

// Name returns the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// IP returns the node's address.
func (n *Node) IP() netip.Addr { return n.cfg.IP }

// writeFiles writes containerd's and kubelet's configuration, kubelet's kubeconfig, the CNI
// plugins and the node's primary CNI configuration.
func (n *Node) writeFiles() error {
	for _, d := range []string{"cni-bin", "net.d", "containerd", "pod-logs"} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			return fmt.Errorf("node: %w", err)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		b, err := os.ReadFile(filepath.Join(n.cfg.CNIPlugins, p))
		if err != nil {
			return fmt.Errorf("node: CNI plugin: %w", err)
		}
		if err := os.WriteFile(filepath.Join(n.dir, "cni-bin", p), b, 0o755); err != nil {
			return fmt.Errorf("node: %w", err)
		}
	}
	conf, err := json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0", "name": "kubenet",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "cni0", "isGateway": true,
				"ipMasq": false, // no iptables here, and the nodes route pod CIDRs
				"ipam": map[string]any{"type": "host-local",
					"ranges": []any{[]any{map[string]any{"subnet": n.cfg.PodCIDR.String()}}},
					"routes": []any{map[string]any{"dst": "0.0.0.0/0"}}},
			},
			map[string]any{"type": "loopback"},
		},
	}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.dir, "net.d", "10-kubenet.conflist"), conf, 0o644); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	n.primary = conf
	containerd := fmt.Sprintf(`version = 2
root = %q
state = "/run/containerd"
[grpc]
  address = %q
[ttrpc]
  address = "/run/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  stream_server_address = "127.0.0.1"
  # Pod namespaces in /var/run/netns, the node's (doc.go), where the agent's hostPath finds them.
  netns_mounts_under_state_dir = false
  # Without it runc cannot set a container's oom_score_adj on this machine and every pod fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`, filepath.Join(n.dir, "containerd"), containerdSocket, SandboxImage)
	if err := os.WriteFile(filepath.Join(n.dir, "containerd.toml"), []byte(containerd), 0o644); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
containerRuntimeEndpoint: unix://%s
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
failSwapOn: false
podLogsDir: %s
resolvConf: /etc/resolv.conf
registerNode: true
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
oomScoreAdj: 0
serializeImagePulls: false
syncFrequency: 10s
nodeStatusUpdateFrequency: 4s
`, n.cgroup, containerdSocket, n.cfg.IP, filepath.Join(n.dir, "pod-logs"))
	if err := os.WriteFile(filepath.Join(n.dir, "kubelet.yaml"), []byte(kubelet), 0o644); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	token, err := n.cfg.ControlPlane.Token(k8s.NodeUser(n.cfg.Name).Name)
	if err != nil {
		return fmt.Errorf("node: %w (start the control plane with this node in Config.Nodes)", err)
	}
	return n.cfg.ControlPlane.WriteKubeconfig(filepath.Join(n.dir, "kubelet.kubeconfig"), token)
}

// mountScript makes the node's mount namespace (see doc.go) and execs containerd in it.
const mountScript = `set -e
mount --make-rshared /
for d in /run /var/lib /opt; do mount -t tmpfs -o mode=0755 tmpfs "$d"; done
mkdir -p /run/containerd /run/netns /run/amesh /var/lib/kubelet /var/lib/cni /opt/cni/bin
mount --bind "$1/cni-bin" /opt/cni/bin
# /etc stays the host's, read through an overlay whose upper layer is the node's: /etc/cni/net.d
# is made there, never on the host (a host directory that another node or another test run
# removed would take this node's mount with it).
mkdir -p "$1/etc-upper" "$1/etc-work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/etc-upper,workdir=$1/etc-work" /etc
mkdir -p /etc/cni/net.d
mount --bind "$1/net.d" /etc/cni/net.d
mount -t bpf bpf /sys/fs/bpf
exec containerd --config "$1/containerd.toml"
`

func (n *Node) startContainerd(ctx context.Context) error {
	// nsenter and unshare without --fork exec in place, and so does sh: the pid is containerd's.
	p, err := n.startProc("containerd", "nsenter", "--net="+n.cfg.Netns, "--", "unshare", "--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", mountScript, "node-mounts", n.dir)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.containerd = p
	n.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n.mntNS == "" {
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p.cmd.Process.Pid)); err == nil {
				if self, _ := os.Readlink("/proc/self/ns/mnt"); ns != self {
					n.mntNS = ns
				}
			}
		}
		if n.mntNS != "" {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = n.Run(cctx, "ctr", "--address", containerdSocket, "version")
			cancel()
			if err == nil {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("node %s: containerd exited (%v); tail of %s:\n%s", n.cfg.Name, p.err, p.logPath, k8s.TailFile(p.logPath, 30))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: containerd not answering after 30s (%v); tail of %s:\n%s", n.cfg.Name, err, p.logPath, k8s.TailFile(p.logPath, 30))
		}
	}
}

func (n *Node) startKubelet() error {
	n.mu.Lock()
	pid := n.containerd.cmd.Process.Pid
	n.mu.Unlock()
	p, err := n.startProc("kubelet", "nsenter", "--target", strconv.Itoa(pid), "--mount", "--net", "--",
		n.cfg.ControlPlane.Binaries().Kubelet,
		"--config", filepath.Join(n.dir, "kubelet.yaml"),
		"--kubeconfig", filepath.Join(n.dir, "kubelet.kubeconfig"),
		"--hostname-override", n.cfg.Name,
		"--node-ip", n.cfg.IP.String(),
		"--v", "2")
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.kubelet = p
	n.mu.Unlock()
	return nil
}

// Command returns a command that runs name with args inside the node's network and mount
// namespaces (as a process of the node would see the machine: its /run, /opt/cni/bin, bpffs).
func (n *Node) Command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	n.mu.Lock()
	c := n.containerd
	n.mu.Unlock()
	if c == nil {
		return nil, errors.New("node: not started")
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--target", strconv.Itoa(c.cmd.Process.Pid), "--mount", "--net", "--", name}, args...)...)
	cmd.Env = k8s.ProcessEnv()
	return cmd, nil
}

// Run runs a command in the node (Command) and returns its combined output.
func (n *Node) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd, err := n.Command(ctx, name, args...)
	if err != nil {
		return nil, err
	}
	return cmd.CombinedOutput()
}

// Alive reports whether containerd and kubelet both still run.
func (n *Node) Alive() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range []*proc{n.containerd, n.kubelet} {
		if p == nil {
			return errors.New("node: not started")
		}
		select {
		case <-p.done:
			return fmt.Errorf("node %s: %s exited (%v); tail of %s:\n%s", n.cfg.Name, p.name, p.err, p.logPath, k8s.TailFile(p.logPath, 20))
		default:
		}
	}
	return nil
}

// Stop kills kubelet, every container, containerd and its shims, removes the node's cgroups
// and its data directory. It is idempotent.
func (n *Node) Stop() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return n.stopErr
	}
	n.stopped = true
	var errs []error
	if n.kubelet != nil {
		errs = append(errs, n.kubelet.stop())
	}
	// The containers first (they are in the node's cgroups, not its mount namespace), then
	// whatever is left in the mount namespace: containerd and the shims, which outlive it.
	errs = append(errs, killCgroups(n.cgroup))
	if n.mntNS != "" {
		errs = append(errs, killMountNS(n.mntNS))
	}
	if n.containerd != nil {
		errs = append(errs, n.containerd.stop())
	}
	errs = append(errs, removeCgroups(n.cgroup))
	if err := os.RemoveAll(n.dir); err != nil {
		errs = append(errs, fmt.Errorf("node: remove %s: %w", n.dir, err))
	}
	n.stopErr = errors.Join(errs...)
	n.log.Info("node stopped", "err", n.stopErr)
	return n.stopErr
}

// proc is one process of the node.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when it has exited
	err     error         // Wait's, set before done is closed
}

func (n *Node) startProc(name, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(n.dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = n.dir
	cmd.Env = k8s.ProcessEnv()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("node: start %s: %w", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// stop kills p's process group and waits for it.
func (p *proc) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("node: kill %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("node: %s (pid %d) did not exit 10s after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// Processes returns the pids of the node's containers' processes (those in its cgroups) whose
// command line match accepts, for a test that signals one as a crash would.
func (n *Node) Processes(match func(argv []string) bool) []int {
	var pids []int
	for _, pid := range cgroupPids(n.cgroup) {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && match(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}
