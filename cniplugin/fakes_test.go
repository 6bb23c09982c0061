package cniplugin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	cniv1 "github.com/amesh-dev/amesh/api/cni/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// agentBehaviour is how a fakeAgent answers.
type agentBehaviour int

const (
	agentEnrolls     agentBehaviour = iota // OK, enrolled=true
	agentNotMesh                           // OK, enrolled=false
	agentRefuses                           // FailedPrecondition
	agentHangs                             // no answer until the caller gives up
	agentUnavailable                       // Unavailable, as an agent shutting down answers
)

const refusal = "pod shop/web must be in the mesh but its service account shop/web has no SVID yet"

// fakeAgent is a real gRPC Enrollment server on a unix socket that records what it was asked.
type fakeAgent struct {
	cniv1.UnimplementedEnrollmentServer
	socket string
	behave agentBehaviour

	mu     sync.Mutex
	adds   []*cniv1.AddPodRequest
	dels   []*cniv1.DelPodRequest
	checks []*cniv1.CheckPodRequest
}

// startAgent serves a fakeAgent on a socket in a fresh temporary directory until the test ends.
func startAgent(t testing.TB, behave agentBehaviour) *fakeAgent {
	t.Helper()
	a := &fakeAgent{socket: filepath.Join(t.TempDir(), "cni.sock"), behave: behave}
	l, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	cniv1.RegisterEnrollmentServer(srv, a)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return a
}

func (a *fakeAgent) answer(ctx context.Context) (bool, error) {
	switch a.behave {
	case agentNotMesh:
		return false, nil
	case agentRefuses:
		return false, status.Error(codes.FailedPrecondition, refusal)
	case agentHangs:
		<-ctx.Done()
		return false, ctx.Err()
	case agentUnavailable:
		return false, status.Error(codes.Unavailable, "agent is shutting down")
	}
	return true, nil
}

func (a *fakeAgent) AddPod(ctx context.Context, r *cniv1.AddPodRequest) (*cniv1.AddPodReply, error) {
	a.mu.Lock()
	a.adds = append(a.adds, proto.Clone(r).(*cniv1.AddPodRequest))
	a.mu.Unlock()
	enrolled, err := a.answer(ctx)
	if err != nil {
		return nil, err
	}
	return &cniv1.AddPodReply{Enrolled: enrolled, Detail: "fake"}, nil
}

func (a *fakeAgent) DelPod(ctx context.Context, r *cniv1.DelPodRequest) (*cniv1.DelPodReply, error) {
	a.mu.Lock()
	a.dels = append(a.dels, proto.Clone(r).(*cniv1.DelPodRequest))
	a.mu.Unlock()
	if _, err := a.answer(ctx); err != nil {
		return nil, err
	}
	return &cniv1.DelPodReply{}, nil
}

func (a *fakeAgent) CheckPod(ctx context.Context, r *cniv1.CheckPodRequest) (*cniv1.CheckPodReply, error) {
	a.mu.Lock()
	a.checks = append(a.checks, proto.Clone(r).(*cniv1.CheckPodRequest))
	a.mu.Unlock()
	enrolled, err := a.answer(ctx)
	if err != nil {
		return nil, err
	}
	return &cniv1.CheckPodReply{Enrolled: enrolled}, nil
}

// calls returns how many calls of each kind the agent had.
func (a *fakeAgent) calls() (adds, dels, checks int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.adds), len(a.dels), len(a.checks)
}

func (a *fakeAgent) lastAdd() *cniv1.AddPodRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.adds) == 0 {
		return nil
	}
	return a.adds[len(a.adds)-1]
}

func (a *fakeAgent) lastDel() *cniv1.DelPodRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.dels) == 0 {
		return nil
	}
	return a.dels[len(a.dels)-1]
}

// tableDecider is a MeshDecider that answers from a table of "ns/name" (or "ns/*") entries; a
// pod in neither is an error, as an unreachable API server is.
type tableDecider struct {
	mu    sync.Mutex
	pods  map[string]bool
	asked int
}

func (d *tableDecider) InMesh(_ context.Context, ns, name string) (bool, string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked++
	for _, k := range []string{ns + "/" + name, ns + "/*"} {
		if in, ok := d.pods[k]; ok {
			if in {
				return true, "namespace " + ns + " has amesh.io/dataplane-mode=ambient", nil
			}
			return false, "namespace " + ns + " is not labelled amesh.io/dataplane-mode=ambient", nil
		}
	}
	return false, "", errors.New("get namespace " + ns + ": dial tcp 10.96.0.1:443: connect: connection refused")
}

// fakeAPI serves the two GETs KubeDecider makes, namespace and pod metadata, from labels; a
// namespace or pod not in the maps is a 404, and failing makes every request a 500.
type fakeAPI struct {
	mu        sync.Mutex
	nsLabels  map[string]map[string]string // namespace -> labels
	podLabels map[string]map[string]string // ns/name -> labels
	failing   bool
	requests  int
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	if f.failing {
		http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcd is down","code":500}`, http.StatusInternalServerError)
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/") // api v1 namespaces NS [pods NAME]
	var (
		labels map[string]string
		ok     bool
		name   string
	)
	switch {
	case len(parts) == 4 && parts[0] == "api" && parts[2] == "namespaces":
		name = parts[3]
		labels, ok = f.nsLabels[name]
	case len(parts) == 6 && parts[0] == "api" && parts[2] == "namespaces" && parts[4] == "pods":
		name = parts[5]
		labels, ok = f.podLabels[parts[3]+"/"+parts[5]]
	}
	w.Header().Set("Content-Type", "application/json")
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure",
			"reason": "NotFound", "code": 404, "message": r.URL.Path + " not found"})
		return
	}
	json.NewEncoder(w).Encode(map[string]any{
		"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
		"metadata": map[string]any{"name": name, "uid": "u-" + name, "labels": labels},
	})
}

// writeTestKubeconfig writes a kubeconfig for a plain-HTTP server at url and returns its path.
func writeTestKubeconfig(t testing.TB, url string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	text := "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: " + url +
		"\nusers:\n- name: u\n  user:\n    token: t0ken\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
	if err := writeFileAtomic(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
