package k8s

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/workload"
	"github.com/amesh-dev/amesh/workload/kube"
)

// gatewayAPICRD is Gateway API's own HTTPRoute CRD (standard channel), from the module go.mod
// pins: what a user installs from the project's release.
func gatewayAPICRD(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	if err != nil {
		t.Fatalf("go list -m sigs.k8s.io/gateway-api: %v", err)
	}
	p := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "standard", "gateway.networking.k8s.io_httproutes.yaml")
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHTTPRouteSource: with Gateway API's CRD on a real API server, the Kubernetes feeder of a
// waypoint (WatchRoutes) puts a GAMMA HTTPRoute into the state, leaves out and reports one
// that uses what amesh does not implement, and follows an edit; the node agent's feeder
// (without WatchRoutes) reads no route.
func TestHTTPRouteSource(t *testing.T) {
	cp := deploy(t)
	ctx := testContext(t)
	if out, err := cp.Kubectl(ctx, "", "apply", "--server-side", "-f", gatewayAPICRD(t)); err != nil {
		t.Fatalf("apply the HTTPRoute CRD: %v\n%s", err, out)
	}
	if out, err := cp.Kubectl(ctx, "", "wait", "--for=condition=Established", "--timeout=30s", "customresourcedefinition/httproutes.gateway.networking.k8s.io"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	const ns = "routes-test"
	objects := `apiVersion: v1
kind: Namespace
metadata: {name: ` + ns + `}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: ` + ns + `}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: ` + ns + `}
spec:
  parentRefs: [{group: "", kind: Service, name: api, port: 80}]
  rules:
  - backendRefs: [{name: api-v1, port: 80, weight: 80}, {name: api-v2, port: 80, weight: 20}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirror, namespace: ` + ns + `}
spec:
  parentRefs: [{group: "", kind: Service, name: api}]
  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: api-v2, port: 80}}}]
    backendRefs: [{name: api-v1, port: 80}]
`
	apply := func(doc string) {
		t.Helper()
		f := filepath.Join(t.TempDir(), "objects.yaml")
		if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := cp.Kubectl(ctx, "", "apply", "-f", f); err != nil {
			t.Fatalf("apply: %v\n%s", err, out)
		}
	}
	apply(objects)
	t.Cleanup(func() { cp.Kubectl(testContext(t), "", "delete", "namespace", ns, "--wait=false") })

	dyn, err := cp.Dynamic("")
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	src := &kube.Source{Dynamic: dyn, TrustDomain: td, WatchRoutes: true}
	st, err := src.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	routes := func(st *workload.State) map[string]workload.Route {
		m := map[string]workload.Route{}
		for _, r := range st.Routes() {
			if r.Namespace == ns {
				m[r.Name] = *r
			}
		}
		return m
	}
	got := routes(st)
	if r, ok := got["split"]; !ok || len(r.Rules) != 1 || len(r.Rules[0].Backends) != 2 || r.Rules[0].Backends[0].Weight != 80 || r.Parents[0] != (workload.RouteParent{Service: "api", Port: 80}) {
		t.Errorf("route split in the state: %+v (all: %v)", r, got)
	}
	if _, ok := got["mirror"]; ok {
		t.Errorf("route mirror (a filter amesh does not implement) is in the state")
	}
	if src.Problems() == 0 {
		t.Errorf("the left-out route was not reported")
	}

	// An edit is followed.
	store := workload.NewStore(st)
	go src.Run(ctx, store)
	apply(strings.Replace(objects, "weight: 80}", "weight: 50}", 1))
	deadline := time.Now().Add(10 * time.Second)
	for routes(store.Load())["split"].Rules[0].Backends[0].Weight != 50 {
		if time.Now().After(deadline) {
			t.Fatalf("the edited weight did not reach the state: %+v", routes(store.Load())["split"])
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The node agent's feeder reads no route (its role may not).
	agentSrc := &kube.Source{Dynamic: dyn, TrustDomain: td}
	ast, err := agentSrc.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ast.Routes()); n != 0 {
		t.Errorf("the agent's feeder read %d routes", n)
	}
}
