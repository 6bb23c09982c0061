package k8s

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/amesh-dev/amesh/internal/testenv"
)

// TestControlPlane runs a control plane in the test's own netns, beside the shared one, plays
// the scheduler and the kubelet for a pod, and restarts the API server under it.
func TestControlPlane(t *testing.T) {
	other := sharedControlPlane(t)
	cp := startControlPlane(t, Config{})
	if cp.Server() == other.Server() {
		t.Fatalf("two control planes on one address %s", cp.Server())
	}
	ctx := testContext(t)
	cs, err := cp.Clientset("")
	if err != nil {
		t.Fatal(err)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != Version {
		t.Errorf("server is %s, want %s", v.GitVersion, Version)
	}
	if cp.CAData() == nil {
		t.Errorf("certs/apiserver.crt did not verify the server: clients fell back to insecure-skip-tls-verify")
	}
	if _, err := cp.Token("nobody"); err == nil {
		t.Errorf("Token of an unknown user: no error")
	}

	ns := uniqueName("cp")
	pod := createPod(t, cs, ns, "node1")
	const podIP = "10.20.1.2"
	patch := fmt.Sprintf(`{"status":{"phase":"Running","podIP":%q,"podIPs":[{"ip":%q}]}}`, podIP, podIP)
	if _, err := cs.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("patch pod status: %v", err)
	}

	w, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("watch pods: %v", err)
	}
	defer w.Stop()
	oldPid := cp.api.cmd.Process.Pid
	if err := cp.StopAPIServer(); err != nil {
		t.Fatalf("stop kube-apiserver: %v", err)
	}
	if _, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil {
		t.Errorf("list pods with the API server stopped: no error")
	}
	if !drained(w.ResultChan(), 10*time.Second) {
		t.Errorf("a watch outlived the API server by 10 s")
	}
	if err := cp.StartAPIServer(ctx); err != nil {
		t.Fatalf("start kube-apiserver again: %v", err)
	}
	if pid := cp.api.cmd.Process.Pid; pid == oldPid || processExists(oldPid) {
		t.Errorf("kube-apiserver pid %d before the restart, %d after; old one still there: %v", oldPid, pid, processExists(oldPid))
	}
	got, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod after the restart: %v", err)
	}
	if got.Spec.NodeName != "node1" || got.Status.PodIP != podIP || got.Status.Phase != corev1.PodRunning {
		t.Errorf("pod after the restart: node %q, IP %q, phase %q; want node1, %s, Running", got.Spec.NodeName, got.Status.PodIP, got.Status.Phase, podIP)
	}
	out, err := cp.Kubectl(ctx, "", "get", "pod", "-n", ns, pod, "-o", "jsonpath={.status.podIP}")
	if err != nil || string(out) != podIP {
		t.Errorf("kubectl get pod: %q, %v; want %q", out, err, podIP)
	}

	// A port taken while the API server was down is reported as such, with the log.
	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cp.Server())
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", u.Host)
	if err != nil {
		t.Fatalf("take the API server's port: %v", err)
	}
	err = cp.StartAPIServer(ctx)
	l.Close()
	if !errors.Is(err, ErrPortTaken) || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("start kube-apiserver on a taken port: %v; want ErrPortTaken with the log", err)
	}

	// Stop leaves nothing behind, and says so again when asked twice.
	pids := []int{cp.etcd.cmd.Process.Pid, oldPid}
	if err := cp.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for _, pid := range pids {
		if processExists(pid) {
			t.Errorf("process %d still there after Stop", pid)
		}
	}
	if _, err := os.Stat(cp.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data dir %s after Stop: %v", cp.Dir(), err)
	}
	if err := cp.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := cp.StartAPIServer(ctx); err == nil {
		t.Errorf("StartAPIServer after Stop: no error")
	}
}

// TestStartFailsClearly starts a control plane whose API server cannot start: Start says why with
// the tail of its log, and leaves no process and no directory behind.
func TestStartFailsClearly(t *testing.T) {
	parent := t.TempDir()
	_, err := Start(testContext(t), Config{Dir: parent, APIServerArgs: []string{"--no-such-flag"}})
	if err == nil {
		t.Fatal("Start with a bad flag: no error")
	}
	for _, want := range []string{"kube-apiserver exited while starting", "unknown flag: --no-such-flag"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if entries, err := os.ReadDir(parent); err != nil || len(entries) > 0 {
		t.Errorf("left in %s: %v %v", parent, entries, err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cwd")
	for _, p := range procs {
		if cwd, err := os.Readlink(p); err == nil && strings.HasPrefix(cwd, parent) {
			t.Errorf("process %s still runs in %s", filepath.Dir(p), cwd)
		}
	}
}

// TestControlPlaneInNetns runs a control plane inside a network namespace the test makes, which
// the test process's own sockets cannot reach, and reaches it through the ControlPlane's dialer
// and kubectl under nsenter.
func TestControlPlaneInNetns(t *testing.T) {
	testenv.RequireRoot(t)
	name := uniqueName("amk8s")
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	path := "/run/netns/" + name

	tester := User{Name: "tester", Groups: []string{"testers", "qa"}}
	cp := startControlPlane(t, Config{Netns: path, Authorization: AuthorizationAlwaysAllow, Users: []User{tester}})
	ctx := testContext(t)

	// Both processes are in the namespace.
	want, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*proc{cp.etcd, cp.api} {
		got, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", p.cmd.Process.Pid))
		if err != nil || !os.SameFile(got, want) {
			t.Errorf("%s (pid %d) is not in netns %s: %v", p.name, p.cmd.Process.Pid, path, err)
		}
	}

	// The test's own netns has nothing at that address.
	u, err := url.Parse(cp.Server())
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	if hostListens(t, port) {
		t.Logf("something of the test's own netns listens on port %d too: skipping the unreachability check", port)
	} else if c, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
		c.Close()
		t.Errorf("reached %s from the test's own netns", u.Host)
	}
	if _, err := cp.DialContext(ctx, "tcp", net.JoinHostPort("localhost", u.Port())); err == nil {
		t.Errorf("DialContext by name in a netns: no error")
	}

	tok, err := cp.Token(tester.Name)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := cp.Clientset(tok)
	if err != nil {
		t.Fatal(err)
	}
	review, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err == nil {
		ui := review.Status.UserInfo
		if ui.Username != tester.Name || !containsAll(ui.Groups, tester.Groups...) {
			t.Errorf("the tester's token authenticates as %q %q, want %q with %q", ui.Username, ui.Groups, tester.Name, tester.Groups)
		}
	} else {
		t.Errorf("self subject review: %v", err)
	}
	ns := uniqueName("netns")
	pod := createPod(t, cs, ns, "node-a")
	out, err := cp.Kubectl(ctx, tok, "get", "pod", "-n", ns, pod, "-o", "jsonpath={.spec.nodeName}")
	if err != nil || string(out) != "node-a" {
		t.Errorf("kubectl in the netns: %q, %v; want node-a", out, err)
	}
	if err := cp.RestartAPIServer(ctx); err != nil {
		t.Fatalf("restart kube-apiserver in the netns: %v", err)
	}
	if _, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{}); err != nil {
		t.Errorf("get pod after the restart, with the clientset of before: %v", err)
	}

	if err := cp.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("processes left in netns %s after Stop: %q (%v)", name, out, err)
	}
}

// createPod creates namespace ns and a pod "web" in it already bound to node, as the scheduler
// would have left it, and returns the pod's name.
func createPod(t *testing.T, cs kubernetes.Interface, ns, node string) string {
	t.Helper()
	ctx := testContext(t)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/web:1"}},
		},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	got, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod: %v", err)
	}
	if got.Spec.NodeName != node {
		t.Fatalf("pod's node is %q, want %q", got.Spec.NodeName, node)
	}
	return pod.Name
}

// drained reports whether c is closed within d (events before the close are skipped).
func drained[T any](c <-chan T, d time.Duration) bool {
	timeout := time.After(d)
	for {
		select {
		case _, ok := <-c:
			if !ok {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

// processExists reports whether a process pid exists (a zombie counts: it was not waited for).
func processExists(pid int) bool {
	return syscall.Kill(pid, 0) == nil
}

// hostListens reports whether a TCP socket of the test's own netns listens on port. It reads the
// table of its own locked thread: /proc/net is the main thread's, which a DialContext into the
// netns may have borrowed at that moment.
func hostListens(t *testing.T, port int) bool {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	suffix := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		s := bufio.NewScanner(fh)
		for s.Scan() {
			// sl local_address rem_address st ...; st 0A is LISTEN.
			fields := strings.Fields(s.Text())
			if len(fields) > 3 && strings.HasSuffix(fields[1], suffix) && fields[3] == "0A" {
				t.Logf("%s: %s", f, s.Text())
				fh.Close()
				return true
			}
		}
		fh.Close()
	}
	return false
}

func containsAll(have []string, want ...string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
