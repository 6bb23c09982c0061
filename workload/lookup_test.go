package workload_test

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/workload"
	"github.com/amesh-dev/amesh/workload/file"
)

// The lookups of a State, on the example state file: an external test, since parsing the file
// (package workload/file) needs package workload.

func exampleState(t *testing.T) *workload.State {
	t.Helper()
	data, err := os.ReadFile("file/testdata/state.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := file.Parse("file/testdata/state.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestLookups(t *testing.T) {
	s := exampleState(t)
	ip := netip.MustParseAddr
	for _, tt := range []struct {
		ip   string
		want string // UID, "" for none
	}{
		{"10.20.1.2", "shop/web-1"},
		{"10.20.1.3", "shop/api-1"},
		{"fd00::1:3", "shop/api-1"},
		{"::ffff:10.20.1.3", "shop/api-1"},
		{"10.20.2.9", "6f1c1b2e-legacy-1"},
		{"10.96.0.10", ""}, // a VIP is no workload
		{"10.10.0.1", ""},  // nor a node
	} {
		w := s.WorkloadByIP(ip(tt.ip))
		if got := workload.UIDOf(w); got != tt.want {
			t.Errorf("WorkloadByIP(%s) = %q, want %q", tt.ip, got, tt.want)
		}
	}
	if w := s.WorkloadByUID("shop/api-2"); w == nil || w.Node != "node2" {
		t.Errorf("WorkloadByUID(shop/api-2) = %+v", w)
	}
	if w := s.WorkloadByUID("shop/nope"); w != nil {
		t.Errorf("WorkloadByUID(shop/nope) = %+v", w)
	}
	for node, want := range map[string]string{
		"node1": "shop/api-1 shop/web-1",
		"node2": "6f1c1b2e-legacy-1 shop/api-2",
		"node9": "",
	} {
		if got := workload.UIDs(s.WorkloadsOnNode(node)); got != want {
			t.Errorf("WorkloadsOnNode(%s) = %q, want %q", node, got, want)
		}
	}
	if n, ok := s.Node("node2"); !ok || n.IP != ip("10.10.0.2") {
		t.Errorf("Node(node2) = %+v, %v", n, ok)
	}
	if _, ok := s.Node("node9"); ok {
		t.Error("Node(node9) found")
	}

	for _, tt := range []struct {
		dst     string
		svc     string
		port    workload.ServicePort
		ok      bool
		comment string
	}{
		{"10.96.0.10:80", "shop/api", workload.ServicePort{80, 8080}, true, "VIP and port"},
		{"[::ffff:10.96.0.10]:80", "shop/api", workload.ServicePort{80, 8080}, true, "v4-mapped"},
		{"10.96.0.10:8080", "shop/api", workload.ServicePort{}, false, "VIP, target port is not a service port"},
		{"10.96.0.11:80", "", workload.ServicePort{}, false, "not a VIP"},
		{"10.20.1.3:8080", "", workload.ServicePort{}, false, "a pod IP"},
	} {
		svc, port, ok := s.ServiceByVIP(netip.MustParseAddrPort(tt.dst))
		got := ""
		if svc != nil {
			got = svc.Key()
		}
		if got != tt.svc || port != tt.port || ok != tt.ok {
			t.Errorf("%s: ServiceByVIP(%s) = %q, %+v, %v; want %q, %+v, %v", tt.comment, tt.dst, got, port, ok, tt.svc, tt.port, tt.ok)
		}
	}
	api := s.Service("shop", "api")
	if got := workload.UIDs(s.Endpoints(api)); got != "shop/api-1 shop/api-2" {
		t.Errorf("Endpoints(api) = %q", got)
	}
	if got := s.Endpoints(nil); got != nil {
		t.Errorf("Endpoints(nil) = %v", got)
	}
	if s.Service("shop", "web") != nil {
		t.Error("Service(shop, web) found")
	}

	keys := func(ps []policy.Policy) string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Key())
		}
		return strings.Join(out, " ")
	}
	if got := keys(s.PoliciesFor(s.WorkloadByUID("shop/api-1"))); got != "amesh-system/deny-ssh shop/api-allow-web" {
		t.Errorf("PoliciesFor(api-1) = %q", got)
	}
	if got := keys(s.PoliciesFor(s.WorkloadByUID("shop/web-1"))); got != "amesh-system/deny-ssh" {
		t.Errorf("PoliciesFor(web-1) = %q", got)
	}

	web := s.WorkloadByUID("shop/web-1")
	id, err := web.ID(s.TrustDomain())
	if err != nil || id.String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("web-1 ID = %v, %v", id, err)
	}
	api1 := s.WorkloadByUID("shop/api-1")
	for _, tt := range []struct {
		src     string
		port    uint16
		allowed bool
	}{
		{id.String(), 8080, true},
		{id.String(), 9090, false},
		{"spiffe://cluster.local/ns/legacy/sa/default", 8080, false},
		{"", 8080, false},
	} {
		d := policy.Evaluate(s.PolicySet(), policy.Request{SrcPrincipal: tt.src, DstNamespace: api1.Namespace, DstLabels: api1.Labels, DstPort: tt.port}, s.RootNamespace())
		if d.Allowed != tt.allowed {
			t.Errorf("Evaluate(%q → api-1:%d) = %+v, want allowed=%v", tt.src, tt.port, d, tt.allowed)
		}
	}
	if d := policy.Evaluate(s.PolicySet(), policy.Request{SrcPrincipal: id.String(), DstNamespace: "shop", DstLabels: web.Labels, DstPort: 22}, s.RootNamespace()); d.Allowed || d.Policy != "amesh-system/deny-ssh" {
		t.Errorf("Evaluate(→ web-1:22) = %+v, want denied by the mesh-wide policy", d)
	}
	if !web.Enrolled() || web.AcceptsPlaintext() {
		t.Errorf("web-1 enrolled=%v plaintext=%v", web.Enrolled(), web.AcceptsPlaintext())
	}
}
