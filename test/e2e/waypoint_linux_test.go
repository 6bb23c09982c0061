package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/test/lab"
)

// waypointNodes: the api pods of two versions on two nodes, callers beside them, and the
// waypoint's pod (not in the mesh itself: it speaks HBONE on its own, as Istio's do).
var waypointNodes = []lab.NodeSpec{
	{Name: "node1", Pods: []lab.PodSpec{
		{Name: "web", Namespace: "shop", ServiceAccount: "web", Labels: map[string]string{"app": "web"}},
		{Name: "api1", Namespace: "shop", ServiceAccount: "api", Labels: map[string]string{"app": "api", "version": "v1"}},
		{Name: "nosy", Namespace: "shop", ServiceAccount: "nosy", Labels: map[string]string{"app": "nosy"}},
		{Name: "wp", Namespace: "shop", ServiceAccount: "waypoint", Mode: "none", Labels: map[string]string{"app": "wp"}},
	}},
	{Name: "node2", Pods: []lab.PodSpec{
		{Name: "api2", Namespace: "shop", ServiceAccount: "api", Labels: map[string]string{"app": "api", "version": "v2"}},
		{Name: "other", Namespace: "shop", ServiceAccount: "other", Labels: map[string]string{"app": "other"}},
	}},
}

// waypointServices: api uses the waypoint wp when useWaypoint; api-v1 and api-v2 are the
// route's backends.
func waypointServices(useWaypoint bool) string {
	wp := ""
	if useWaypoint {
		wp = "\n    waypoint: wp"
	}
	return `
  - name: api
    namespace: shop
    vips: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}]
    selector: {app: api}` + wp + `
  - name: api-v1
    namespace: shop
    vips: [10.96.0.11]
    ports: [{port: 80, targetPort: 8080}]
    selector: {app: api, version: v1}
  - name: api-v2
    namespace: shop
    vips: [10.96.0.12]
    ports: [{port: 80, targetPort: 8080}]
    selector: {app: api, version: v2}
  - name: wp
    namespace: shop
    vips: [10.96.0.20]
    ports: [{port: 15008}]
    selector: {app: wp}
    waypointFor: service
`
}

// waypointPolicies: the waypoint refuses DELETE /admin*; api's own policy (enforced by the
// waypoint against the original caller) admits web only.
const waypointPolicies = `
  - name: wp-no-admin-delete
    namespace: shop
    targetRefs: [{kind: Service, name: wp}]
    action: DENY
    rules:
      - to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]
  - name: api-allow-web
    namespace: shop
    selector: {app: api}
    action: ALLOW
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
`

// waypointRoutes: api's requests split 80/20 between its versions.
const waypointRoutes = `routes:
  - name: api-split
    namespace: shop
    parentRefs: [{kind: Service, name: api, port: 80}]
    rules:
      - backendRefs:
          - {name: api-v1, port: 80, weight: 80}
          - {name: api-v2, port: 80, weight: 20}
`

func (c *cluster) writeWaypointState(useWaypoint bool) {
	c.t.Helper()
	// The routes section rides after the policies (WriteState appends what it is given).
	if err := c.lab.WriteState(c.state, waypointServices(useWaypoint), waypointPolicies+waypointRoutes); err != nil {
		c.t.Fatal(err)
	}
}

// startWaypoint runs amesh-waypoint in the wp pod and waits until it serves.
func (c *cluster) startWaypoint() *lab.Proc {
	c.t.Helper()
	log := filepath.Join(c.lab.Dir, fmt.Sprintf("waypoint-%d.log", time.Now().UnixNano()))
	p, err := c.lab.Start(context.Background(), c.lab.Pod("wp").Netns, log, waypointBin,
		"--state", c.state, "--name", "wp", "--namespace", "shop", "--service-account", "waypoint",
		"--ca-dir", filepath.Join(c.lab.Dir, "ca"))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { p.Kill(); p.Wait() })
	c.waypointLog = log
	testenv.WaitFor(c.t, "the waypoint to serve", 10*time.Second, func() bool {
		return anyLine(logLinesOf(c.t, log), map[string]string{"msg": "waypoint serving"})
	})
	return p
}

// get makes one request from pod from with method to url, over a fresh connection.
func (c *cluster) get(from, method, url string) (int, string, error) {
	cl := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return c.lab.Pod(from).Dial(ctx, addr) },
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestWaypoint: a service that names a waypoint gets its traffic through it: allowed requests
// reach the service with the caller's identity in the waypoint's log, an L7 rule answers
// DELETE /admin with 403, the destination's own policy is applied by the waypoint to the
// original caller, a weighted route splits 80/20; a client that dials the pods directly is
// refused on every path (HBONE to another node, splice, and a kernel-path verdict cached
// before the waypoint existed is withdrawn); the waypoint killed fails closed and comes back;
// the label removed sends traffic direct again, and put back, through the waypoint again.
func TestWaypoint(t *testing.T) {
	c := newClusterOf(t, waypointNodes, "--state-poll", "50ms")
	api1 := "http://" + c.lab.Pod("api1").IP.String() + ":8080/"
	api2 := "http://" + c.lab.Pod("api2").IP.String() + ":8080/"
	const vip = "http://10.96.0.10/"

	// Before any waypoint: web reaches api1 on this node, and its next connections take the
	// kernel path (a verdict cached for the pair).
	c.writeWaypointState(false)
	for i := range 3 {
		if code, body, err := c.get("web", "GET", api1); err != nil || code != 200 {
			t.Fatalf("before the waypoint, web -> api1 #%d: %d %q %v", i, code, body, err)
		}
	}

	wp := c.startWaypoint()
	c.writeWaypointState(true)
	testenv.WaitFor(t, "web -> api through the waypoint", 5*time.Second, func() bool {
		c.get("web", "GET", vip)
		return anyLine(logLinesOf(t, c.waypointLog), map[string]string{"msg": "request", "src_id": "spiffe://cluster.local/ns/shop/sa/web", "status": "200"})
	})

	t.Run("allowed and denied requests", func(t *testing.T) {
		for _, tc := range []struct {
			from, method, url string
			code              int
			body              string
		}{
			{"web", "GET", vip, 200, "hello from api"},
			{"web", "GET", vip + "admin", 200, "hello from api"},
			{"web", "DELETE", vip + "admin/users", 403, "RBAC: access denied"},
			{"web", "DELETE", vip + "cart", 200, "hello from api"},
			{"nosy", "GET", vip, 403, "RBAC: access denied"}, // api-allow-web, applied by the waypoint
		} {
			code, body, err := c.get(tc.from, tc.method, tc.url)
			if err != nil || code != tc.code || !strings.Contains(body, tc.body) {
				t.Errorf("%s %s %s: %d %q %v; want %d %q", tc.from, tc.method, tc.url, code, body, err, tc.code, tc.body)
			}
		}
		if !anyLine(logLinesOf(t, c.waypointLog), map[string]string{"msg": "request", "method": "DELETE", "path": "/admin/users", "status": "403", "src_id": "spiffe://cluster.local/ns/shop/sa/web"}) {
			t.Errorf("the waypoint logged no 403 for DELETE /admin/users from web")
		}
	})

	t.Run("weighted route", func(t *testing.T) {
		// One keep-alive connection: one HBONE stream to the waypoint, routed per request.
		cl := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return c.lab.Pod("web").Dial(ctx, addr) },
		}}
		defer cl.CloseIdleConnections()
		counts := map[string]int{}
		const n = 1000
		for i := range n {
			resp, err := cl.Get(vip)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case strings.HasPrefix(string(b), "hello from api1;"):
				counts["v1"]++
			case strings.HasPrefix(string(b), "hello from api2;"):
				counts["v2"]++
			default:
				t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
			}
		}
		t.Logf("%d requests through the 80/20 route: %v", n, counts)
		if v1 := counts["v1"]; v1 < 750 || v1 > 850 {
			t.Errorf("api-v1 got %d of %d requests, want 800 ± 50", v1, n)
		}
	})

	t.Run("bypass refused", func(t *testing.T) {
		for _, tc := range []struct{ what, url string }{
			{"hbone (api2 on another node)", api2},
			{"same node (api1: the kernel-path verdict withdrawn, then splice)", api1},
			{"same node again", api1},
		} {
			if code, body, err := c.get("web", "GET", tc.url); err == nil {
				t.Errorf("%s: web dialled the pod directly and got %d %q, want refused", tc.what, code, body)
			}
		}
		if !c.hasAccess("node2", map[string]string{"direction": "inbound", "result": "refused"}) {
			t.Errorf("node2 logged no refusal of the HBONE bypass")
		}
		found := false
		for _, m := range c.accessLines("node1") {
			if r, _ := m["reason"].(string); strings.Contains(r, "waypoint bypassed") {
				found = true
			}
		}
		if !found {
			t.Errorf("node1 logged no refusal naming the bypassed waypoint")
		}
	})

	t.Run("waypoint down fails closed", func(t *testing.T) {
		wp.Kill()
		wp.Wait()
		if code, body, err := c.get("web", "GET", vip); err == nil && strings.Contains(body, "hello from") {
			t.Errorf("with the waypoint down, web reached api: %d %q", code, body)
		}
		start := time.Now()
		c.startWaypoint()
		testenv.WaitFor(t, "traffic through the restarted waypoint", 5*time.Second, func() bool {
			code, _, err := c.get("web", "GET", vip)
			return err == nil && code == 200
		})
		t.Logf("back through the waypoint %v after its restart began", time.Since(start).Round(time.Millisecond))
	})

	t.Run("the same waypoint as Envoy configuration over ADS", func(t *testing.T) {
		out, err := exec.Command(waypointBin, "--envoy-bootstrap", "--xds-addr", "127.0.0.1:15010", "--name", "wp", "--namespace", "shop").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "envoy.bootstrap.internal_listener") || !strings.Contains(string(out), "15010") {
			t.Errorf("--envoy-bootstrap: %v\n%s", err, out)
		}
		log := filepath.Join(c.lab.Dir, "waypoint-xds.log")
		p, err := c.lab.Start(context.Background(), c.lab.Pod("wp").Netns, log, waypointBin,
			"--state", c.state, "--name", "wp", "--namespace", "shop", "--service-account", "waypoint",
			"--ca-dir", filepath.Join(c.lab.Dir, "ca"), "--xds-addr", "127.0.0.1:15010", "--xds-only")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { p.Kill(); p.Wait() }()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := grpc.NewClient("passthrough:///127.0.0.1:15010", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return c.lab.Pod("wp").Dial(ctx, addr) }))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var names []string
		testenv.WaitFor(t, "the listeners over ADS", 5*time.Second, func() bool {
			stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
			if err != nil {
				return false
			}
			defer stream.CloseSend()
			if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, Node: &corev3.Node{Id: "shop/wp", Cluster: "wp"}}); err != nil {
				return false
			}
			resp, err := stream.Recv()
			if err != nil {
				return false
			}
			names = names[:0]
			for _, a := range resp.Resources {
				var l listenerv3.Listener
				if a.UnmarshalTo(&l) == nil {
					names = append(names, l.Name)
				}
			}
			return slices.Contains(names, "connect_terminate") && slices.Contains(names, "main_internal") && slices.Contains(names, "connect_originate")
		})
		t.Logf("listeners served: %v", names)
	})

	t.Run("label removed and back", func(t *testing.T) {
		c.writeWaypointState(false)
		start := time.Now()
		testenv.WaitFor(t, "web -> api1 directly again", 3*time.Second, func() bool {
			code, body, err := c.get("web", "GET", api1)
			return err == nil && code == 200 && strings.Contains(body, "hello from api1")
		})
		t.Logf("direct again %v after the label went", time.Since(start).Round(time.Millisecond))
		c.writeWaypointState(true)
		start = time.Now()
		testenv.WaitFor(t, "DELETE /admin refused again (through the waypoint)", time.Second+500*time.Millisecond, func() bool {
			code, _, _ := c.get("web", "DELETE", vip+"admin")
			return code == 403
		})
		t.Logf("through the waypoint again %v after the label came back", time.Since(start).Round(time.Millisecond))
	})
}
