package k8s

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Version is the Kubernetes version of the binaries EnsureBinaries builds; the project's
// k8s.io/client-go (v0.37.2) matches it.
const Version = "v1.37.2"

// BinDirEnv names the environment variable that overrides DefaultBinDir.
const BinDirEnv = "AMESH_K8S_BIN"

// Binaries are the paths of the control plane's executables.
type Binaries struct {
	APIServer string // kube-apiserver
	Etcd      string // etcd
	Kubectl   string // kubectl (kustomize built in)
	// The parts of a cluster with real nodes (StartControllers, test/node): empty when only the
	// API server is wanted (EnsureBinaries leaves them empty; EnsureNodeBinaries sets them).
	ControllerManager string // kube-controller-manager
	Scheduler         string // kube-scheduler
	Kubelet           string // kubelet
}

// tool is one binary of the scratch module test/k8s/tools.
type tool struct {
	name    string // file name in the cache directory
	pkg     string // package to build
	version bool   // stamp the Kubernetes version (an apiserver that says v0.0.0 refuses clients)
}

var tools = []tool{
	{"kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", true},
	{"etcd", "go.etcd.io/etcd/server/v3", false},
	{"kubectl", "k8s.io/kubernetes/cmd/kubectl", true},
}

// nodeTools are the binaries of a cluster with real nodes, built only when asked for
// (EnsureNodeBinaries): kubelet alone takes minutes.
var nodeTools = []tool{
	{"kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager", true},
	{"kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler", true},
	{"kubelet", "k8s.io/kubernetes/cmd/kubelet", true},
}

func (b Binaries) path(name string) string {
	switch name {
	case "kube-apiserver":
		return b.APIServer
	case "etcd":
		return b.Etcd
	case "kube-controller-manager":
		return b.ControllerManager
	case "kube-scheduler":
		return b.Scheduler
	case "kubelet":
		return b.Kubelet
	default:
		return b.Kubectl
	}
}

// DefaultBinDir returns the cache directory of the binaries: $AMESH_K8S_BIN when set, else
// $HOME/.cache/amesh/k8s. It is outside the repository on purpose: kube-apiserver alone is
// 119 MB and must never be committed.
func DefaultBinDir() (string, error) {
	if d := os.Getenv(BinDirEnv); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("k8s: cache dir: %w (set %s)", err, BinDirEnv)
	}
	return filepath.Join(home, ".cache", "amesh", "k8s"), nil
}

// EnsureBinaries returns the binaries in DefaultBinDir, building those that are missing from the
// scratch module test/k8s/tools of this repository (with CGO_ENABLED=0, -trimpath and the
// version stamps of Version). Each binary is built under a temporary name and renamed into place,
// under a lock file, so concurrent callers (test packages run in parallel) build it once and
// never see half a file. A cold build takes minutes and needs the Go module proxy.
func EnsureBinaries(ctx context.Context) (Binaries, error) {
	return ensureBinaries(ctx, slog.New(slog.DiscardHandler), tools)
}

// EnsureNodeBinaries is EnsureBinaries with kube-controller-manager, kube-scheduler and kubelet
// besides, for a cluster with real nodes (test/node).
func EnsureNodeBinaries(ctx context.Context) (Binaries, error) {
	return ensureBinaries(ctx, slog.New(slog.DiscardHandler), append(slices.Clone(tools), nodeTools...))
}

func ensureBinaries(ctx context.Context, log *slog.Logger, want []tool) (Binaries, error) {
	dir, err := DefaultBinDir()
	if err != nil {
		return Binaries{}, err
	}
	b := Binaries{
		APIServer: filepath.Join(dir, "kube-apiserver"),
		Etcd:      filepath.Join(dir, "etcd"),
		Kubectl:   filepath.Join(dir, "kubectl"),
	}
	for _, t := range want {
		switch t.name {
		case "kube-controller-manager":
			b.ControllerManager = filepath.Join(dir, t.name)
		case "kube-scheduler":
			b.Scheduler = filepath.Join(dir, t.name)
		case "kubelet":
			b.Kubelet = filepath.Join(dir, t.name)
		}
	}
	if len(missing(b, want)) == 0 {
		return b, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Binaries{}, fmt.Errorf("k8s: create cache dir: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".build.lock"))
	if err != nil {
		return Binaries{}, fmt.Errorf("k8s: lock %s: %w", dir, err)
	}
	defer unlock()
	todo := missing(b, want) // another process may have built them while we waited for the lock
	if len(todo) == 0 {
		return b, nil
	}
	toolsDir, err := ToolsDir()
	if err != nil {
		return Binaries{}, err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return Binaries{}, fmt.Errorf("k8s: building %s needs the go command on PATH: %w", strings.Join(names(todo), ", "), err)
	}
	for _, t := range todo {
		log.Info("building Kubernetes binary (cold: minutes)", "binary", t.name, "version", Version, "into", dir)
		start := time.Now()
		if err := build(ctx, goBin, toolsDir, t, b.path(t.name)); err != nil {
			return Binaries{}, err
		}
		log.Info("built Kubernetes binary", "binary", t.name, "took", time.Since(start).Round(time.Second))
	}
	return b, nil
}

// missing returns the tools of want whose binary is not an executable file.
func missing(b Binaries, want []tool) []tool {
	var out []tool
	for _, t := range want {
		if fi, err := os.Stat(b.path(t.name)); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			out = append(out, t)
		}
	}
	return out
}

func names(ts []tool) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.name
	}
	return out
}

// ldflags are the recipe's: strip, and stamp the version into both packages that report it.
func ldflags() string {
	minor := strings.Split(strings.TrimPrefix(Version, "v"), ".")[1]
	ld := []string{"-s", "-w"}
	for _, p := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ld = append(ld,
			"-X", p+".gitVersion="+Version,
			"-X", p+".gitMajor=1",
			"-X", p+".gitMinor="+minor,
			"-X", p+".gitTreeState=clean",
			"-X", p+".buildDate=2026-01-01T00:00:00Z")
	}
	return strings.Join(ld, " ")
}

// build builds t into a temporary file beside dst and renames it to dst.
func build(ctx context.Context, goBin, toolsDir string, t tool, dst string) error {
	tmp := fmt.Sprintf("%s.tmp-%d", dst, os.Getpid())
	defer os.Remove(tmp) // after a successful rename there is nothing left to remove
	args := []string{"build", "-trimpath"}
	if t.version {
		args = append(args, "-ldflags", ldflags())
	}
	args = append(args, "-o", tmp, t.pkg)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = toolsDir
	// GOWORK=off: the scratch module is its own module, not part of a workspace with amesh.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("k8s: build %s (go %s in %s): %w: %s", t.name, strings.Join(args, " "), toolsDir, err, Tail(out.Bytes(), 20))
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("k8s: install %s: %w", t.name, err)
	}
	return nil
}

// ToolsDir returns the directory of the scratch module test/k8s/tools that builds the binaries:
// it looks upwards from this package's source directory, then from the working directory, for
// test/k8s/tools/go.mod.
func ToolsDir() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) { // not absolute under -trimpath
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, s := range starts {
		for d := s; ; d = filepath.Dir(d) {
			dir := filepath.Join(d, "test", "k8s", "tools")
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				return dir, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("k8s: no test/k8s/tools/go.mod above %s: run from the amesh repository, or put the binaries in the cache dir (%s)", strings.Join(starts, " or "), BinDirEnv)
}

// Tail returns the last n lines of b.
func Tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TailFile returns the last n lines of the file at path (at most its last 64 KiB).
func TailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	const max = 64 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		if _, err := f.Seek(-max, io.SeekEnd); err != nil {
			return fmt.Sprintf("(log unreadable: %v)", err)
		}
	}
	b, err := io.ReadAll(f)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return Tail(b, n)
}
