package xds

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/waypoint"
	"github.com/amesh-dev/amesh/workload"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	td         = spiffeid.RequireTrustDomainFromString("cluster.local")
	waypointID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/waypoint")
)

// svidSource is an x509svid.Source holding one SVID.
type svidSource struct{ svid *x509svid.SVID }

func (s svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

// testOptions returns credentials for the fixture's waypoint from a fresh CA.
func testOptions(t *testing.T) (Options, *identity.CA) {
	t.Helper()
	ca, err := identity.NewCA(td, identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := ca.Issue(ctx, waypointID)
	if err != nil {
		t.Fatal(err)
	}
	return Options{SVID: svidSource{svid}, Bundles: ca}, ca
}

func ep(name, ip string, labels map[string]string) waypoint.Endpoint {
	return waypoint.Endpoint{
		UID: "uid-" + name, Name: name, Namespace: "shop", IP: netip.MustParseAddr(ip),
		Identity: spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/" + name), Labels: labels,
	}
}

func svc(name string, vips []string, ports []waypoint.Port, eps ...waypoint.Endpoint) waypoint.Service {
	s := waypoint.Service{Name: name, Namespace: "shop", Hostname: name + ".shop.svc.cluster.local", Ports: ports, Endpoints: eps}
	for _, v := range vips {
		s.VIPs = append(s.VIPs, netip.MustParseAddr(v))
	}
	return s
}

// Principals of the fixture.
const (
	frontend = "spiffe://cluster.local/ns/shop/sa/frontend"
	other    = "spiffe://cluster.local/ns/shop/sa/other"
	outsider = "spiffe://cluster.local/ns/elsewhere/sa/curl"
)

func waypointRef() []policy.TargetRef { return []policy.TargetRef{{Kind: "Service", Name: "waypoint"}} }

// fixture is the golden config: two services, reviews with a route splitting 80/20 between
// reviews-v1 and reviews-v2 (backends it does not front), ratings without a route; a DENY
// policy (DELETE /admin*), an ALLOW policy (principal frontend), both the waypoint's, and an
// L4 policy of ratings' pods (namespace shop, port 8080).
func fixture() waypoint.Config {
	return waypoint.Config{
		Name: "waypoint", Namespace: "shop", Identity: waypointID, RootNamespace: "amesh-system",
		Services: []waypoint.Service{
			svc("ratings", []string{"10.96.0.20", "fd00::20"}, []waypoint.Port{{Port: 8080, TargetPort: 8080}, {Port: 9090}},
				ep("ratings-1", "10.0.2.1", map[string]string{"app": "ratings"}),
				ep("ratings-2", "10.0.2.2", map[string]string{"app": "ratings"})),
			svc("reviews", []string{"10.96.0.10"}, []waypoint.Port{{Port: 80, TargetPort: 9080}}),
		},
		Backends: []waypoint.Service{
			svc("reviews-v1", []string{"10.96.0.11"}, []waypoint.Port{{Port: 80, TargetPort: 9080}},
				ep("reviews-v1-a", "10.0.1.1", map[string]string{"app": "reviews", "version": "v1"})),
			svc("reviews-v2", []string{"10.96.0.12"}, []waypoint.Port{{Port: 80, TargetPort: 9080}},
				ep("reviews-v2-a", "10.0.1.2", map[string]string{"app": "reviews", "version": "v2"})),
		},
		Routes: []workload.Route{{
			Name: "reviews-split", Namespace: "shop",
			Parents: []workload.RouteParent{{Service: "reviews"}},
			Rules: []workload.RouteRule{
				{
					Backends: []workload.RouteBackend{{Service: "reviews-v1", Port: 80, Weight: 80}, {Service: "reviews-v2", Port: 80, Weight: 20}},
					Timeout:  5 * time.Second,
				},
				{
					Matches:  []workload.RouteMatch{{PathType: workload.PathExact, Path: "/healthz", Method: "GET"}},
					Backends: []workload.RouteBackend{{Service: "reviews-v1", Port: 80, Weight: 1}},
				},
			},
		}},
		Policies: []policy.Policy{
			{
				Name: "deny-admin-delete", Namespace: "shop", Action: policy.Deny, TargetRefs: waypointRef(),
				Rules: []policy.Rule{{To: []policy.Operation{{Methods: []string{"DELETE"}, Paths: []string{"/admin*"}}}}},
			},
			{
				Name: "allow-frontend", Namespace: "shop", Action: policy.Allow,
				TargetRefs: []policy.TargetRef{{Group: gatewayGroup, Kind: "Gateway", Name: "waypoint"}},
				Rules:      []policy.Rule{{From: []policy.Source{{Principals: []string{"cluster.local/ns/shop/sa/frontend"}}}}},
			},
			{
				Name: "ratings-from-shop", Namespace: "shop", Action: policy.Allow, Selector: map[string]string{"app": "ratings"},
				Rules: []policy.Rule{{From: []policy.Source{{Namespaces: []string{"shop"}}}, To: []policy.Operation{{Ports: []uint16{8080}}}}},
			},
		},
	}
}

// golden compares got with testdata/name, or writes it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what the translation gives; if the change is intended, run go test ./waypoint/xds -update and review the diff.\ngot:\n%s", path, firstDiff(got, want))
	}
}

// firstDiff shows the lines around where got and want first differ.
func firstDiff(got, want []byte) string {
	g, w := bytes.Split(got, []byte("\n")), bytes.Split(want, []byte("\n"))
	for i := 0; i < len(g) || i < len(w); i++ {
		if i >= len(g) || i >= len(w) || !bytes.Equal(g[i], w[i]) {
			var b bytes.Buffer
			for j := max(0, i-3); j < min(len(g), i+4); j++ {
				b.Write(g[j])
				b.WriteByte('\n')
			}
			b.WriteString("--- want, from the same line:\n")
			for j := max(0, i-3); j < min(len(w), i+4); j++ {
				b.Write(w[j])
				b.WriteByte('\n')
			}
			return b.String()
		}
	}
	return ""
}

// indentJSON re-indents a JSON document built from MarshalJSON pieces.
func indentJSON(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
