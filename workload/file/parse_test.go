package file

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/workload"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseExample(t *testing.T) {
	data, err := os.ReadFile("testdata/state.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse("state.yaml", data)
	if err != nil {
		t.Fatalf("Parse(testdata/state.yaml) = %v", err)
	}
	if got := s.TrustDomain().Name(); got != "cluster.local" {
		t.Errorf("trust domain = %q", got)
	}
	if got := s.RootNamespace(); got != "amesh-system" {
		t.Errorf("root namespace = %q", got)
	}
	if n := len(s.Nodes()); n != 2 {
		t.Errorf("%d nodes, want 2", n)
	}
	var uids []string
	for _, w := range s.Workloads() {
		uids = append(uids, w.UID)
	}
	if got, want := strings.Join(uids, " "), "6f1c1b2e-legacy-1 shop/api-1 shop/api-2 shop/web-1"; got != want {
		t.Errorf("workloads = %s, want %s", got, want)
	}
	web := s.WorkloadByUID("shop/web-1")
	want := &workload.Workload{
		UID: "shop/web-1", Name: "web-1", Namespace: "shop", ServiceAccount: "web", Node: "node1",
		IPs: []netip.Addr{netip.MustParseAddr("10.20.1.2")}, Netns: "/run/netns/amesh-lab-web-1",
		Mode: workload.ModeAmbient, InboundMode: workload.InboundStrict, Labels: map[string]string{"app": "web"},
	}
	if web == nil || !reflect.DeepEqual(web, want) {
		t.Errorf("web-1 = %+v, want %+v", web, want)
	}
	if legacy := s.WorkloadByUID("6f1c1b2e-legacy-1"); legacy == nil || legacy.Enrolled() {
		t.Errorf("legacy-1 = %+v, want present and not enrolled", legacy)
	}
	api := s.Service("shop", "api")
	if api == nil || len(api.Ports) != 1 || api.Ports[0] != (workload.ServicePort{Port: 80, TargetPort: 8080}) {
		t.Errorf("service api = %+v", api)
	}
	pols := s.Policies()
	if len(pols) != 2 || pols[1].Key() != "shop/api-allow-web" || pols[0].Key() != "amesh-system/deny-ssh" {
		t.Fatalf("policies = %+v", pols)
	}
	wantPol := policy.Policy{
		Name: "api-allow-web", Namespace: "shop", Selector: map[string]string{"app": "api"}, Action: policy.Allow,
		Rules: []policy.Rule{{
			From: []policy.Source{{Principals: []string{"cluster.local/ns/shop/sa/web"}}},
			To:   []policy.Operation{{Ports: []uint16{8080}}},
		}},
	}
	if fmt.Sprint(pols[1]) != fmt.Sprint(wantPol) {
		t.Errorf("policy = %+v, want %+v", pols[1], wantPol)
	}
	if got := pols[0].Rules[0].To[0].Ports; len(got) != 1 || got[0] != 22 {
		t.Errorf(`ports: ["22"] decoded as %v`, got)
	}
}

// The tests below mark the line an error must point at with "# <-".
const header = `trustDomain: cluster.local
nodes:
  - {name: node1, ip: 10.10.0.1}
  - {name: node2, ip: 10.10.0.2}
`

const webWorkload = `workloads:
  - name: web-1
    namespace: shop
    serviceAccount: web
    node: node1
    ips: [10.20.1.2]
    labels: {app: web}
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		msg  string // in the error line that carries the marked line number
	}{
		// Phase 1: YAML, unknown fields, types.
		{"empty file", "# <-\n", "no YAML document"},
		{"syntax error", header + "workloads:\n  - name: a # <-\n   namespace: b\n", "did not find expected '-' indicator (in the list that starts here)"},
		{"syntax error in a flow list", header + "workloads:\n  - name: a\n    ips: [10.0.0.1 # <-\n    node: x\n", "did not find expected ',' or ']'"},
		{"syntax error, scanner", header + "workloads:\n  - name: a\n    node: b: c # <-\n", "mapping values are not allowed"},
		{"tab", header + "workloads:\n\t- name: a # <-\n", "cannot start any token"},
		{"unknown top-level field", header + "trustdomain: x # <-\n", "field trustdomain not found in type state file"},
		{"unknown workload field", header + webWorkload + "    netnss: /run/netns/x # <-\n", "field netnss not found in type workload"},
		{"unknown source field (Istio ipBlocks)", header + `policies:
  - name: p
    namespace: shop
    rules:
      - from:
          - source:
              ipBlocks: [10.0.0.0/8] # <-
`, "field ipBlocks not found in type source"},
		{"Istio selector shape", header + `policies:
  - name: p
    namespace: shop
    selector:
      matchLabels: {app: web} # <-
`, "cannot unmarshal"},
		{"port not a number", header + `services:
  - name: api
    namespace: shop
    ports:
      - port: http # <-
`, "cannot unmarshal"},
		{"duplicate key", header + webWorkload + "    node: node2 # <-\n", "already defined"},
		{"second document", header + "--- # <-\ntrustDomain: x\n", "second YAML document"},

		// Phase 1: value syntax.
		{"bad trust domain", "trustDomain: Cluster Local # <-\n", "is not a SPIFFE trust domain"},
		{"bad node ip", "trustDomain: cluster.local\nnodes:\n  - {name: node1, ip: 10.10.0} # <-\n", `ip "10.10.0" is not an IP address`},
		{"bad workload ip, flow list", header + `workloads:
  - name: web-1
    namespace: shop
    serviceAccount: web
    node: node1
    ips: [10.20.1.2, 10.0.0.x] # <-
`, `workload shop/web-1: ip "10.0.0.x" is not an IP address`},
		{"bad workload ip, block list", header + `workloads:
  - name: web-1
    namespace: shop
    serviceAccount: web
    node: node1
    ips:
      - 10.20.1.2
      - 10.0.0.x # <-
`, `workload shop/web-1: ip "10.0.0.x" is not an IP address`},
		{"bad mode", header + webWorkload + "    mode: sidecar # <-\n", `mode "sidecar" is not ambient or none`},
		{"bad inbound mode", header + webWorkload + "    inboundMode: lax # <-\n", `inboundMode "lax" is not strict or permissive`},
		{"bad vip", header + "services:\n  - name: api\n    namespace: shop\n    vips: [10.96.0.300] # <-\n", `vip "10.96.0.300" is not an IP address`},
		{"service port out of range", header + `services:
  - name: api
    namespace: shop
    vips: [10.96.0.10]
    ports:
      - port: 80
        targetPort: 8080
      - port: 70000 # <-
`, "port 70000 is out of range"},
		{"policy port not a number", header + `policies:
  - name: p
    namespace: shop
    rules:
      - to:
          - operation:
              ports:
                - "8080"
                - http # <-
`, `port "http" is not a number`},

		// Phase 2: meaning.
		{"missing trust domain", "nodes: # <-\n  - {name: node1, ip: 10.10.0.1}\n", "trustDomain: is required"},
		{"bad root namespace", header + "rootNamespace: Mesh # <-\n", "rootNamespace"},
		{"duplicate node", header + "  - {name: node1, ip: 10.10.0.3} # <-\n", "duplicate node name (also at line 3)"},
		{"duplicate node ip", header + "  - {name: node3, ip: 10.10.0.2} # <-\n", "ip 10.10.0.2 is also node node2's"},
		{"missing node ip", header + "  - {name: node3} # <-\n", "ip is not set"},
		{"duplicate workload", header + webWorkload + `  - name: web-1 # <-
    namespace: shop
    uid: other
    serviceAccount: web
    node: node2
`, "duplicate workload shop/web-1 (also at line 6)"},
		{"duplicate uid", header + webWorkload + `    uid: x
  - name: web-2
    uid: x # <-
    namespace: shop
    serviceAccount: web
    node: node2
`, `duplicate uid "x" (also at line 6)`},
		{"uid of another workload's default", header + webWorkload + `  - name: web-2
    uid: shop/web-1 # <-
    namespace: shop
    serviceAccount: web
    node: node2
`, `duplicate uid "shop/web-1"`},
		{"duplicate ip across workloads", header + webWorkload + `  - name: web-2
    namespace: shop
    serviceAccount: web
    node: node2
    ips:
      - 10.20.1.2 # <-
`, "ip 10.20.1.2 is also workload shop/web-1's (at line 6)"},
		{"duplicate ip, v4-mapped", header + webWorkload + `  - name: web-2
    namespace: shop
    serviceAccount: web
    node: node2
    ips: ["::ffff:10.20.1.2"] # <-
`, "ip 10.20.1.2 is also workload shop/web-1's"},
		{"loopback ip", header + `workloads:
  - name: web-1
    namespace: shop
    serviceAccount: web
    node: node1
    ips: [127.0.0.1] # <-
`, "ip 127.0.0.1 is a loopback address"},
		{"unknown node", header + `workloads:
  - name: web-1
    namespace: shop
    serviceAccount: web
    node: node9 # <-
`, `node "node9" is not in nodes`},
		{"missing node", header + `workloads:
  - name: web-1 # <-
    namespace: shop
    serviceAccount: web
`, "node is required"},
		{"bad namespace", header + `workloads:
  - name: web-1
    namespace: Shop # <-
    serviceAccount: web
    node: node1
`, `namespace "Shop" is not a DNS-1123 label`},
		{"bad service account", header + `workloads:
  - name: web-1
    namespace: shop
    serviceAccount: Web_1 # <-
    node: node1
`, `service account "Web_1" is not a DNS-1123 subdomain`},
		{"missing service account", header + `workloads:
  - name: web-1 # <-
    namespace: shop
    node: node1
`, `service account "" is not a DNS-1123 subdomain`},
		{"missing name", header + `workloads:
  - namespace: shop # <-
    serviceAccount: web
    node: node1
`, "name is required"},
		{"relative netns", header + webWorkload + "    netns: amesh-lab-web-1 # <-\n", `netns "amesh-lab-web-1" is not an absolute path`},
		{"bad label", header + webWorkload[:len(webWorkload)-len("    labels: {app: web}\n")] + "    labels: {-app: web} # <-\n", `label key "-app"`},
		{"bad service name", header + "services:\n  - name: 1api # <-\n    namespace: shop\n", `name "1api" is not a valid Kubernetes name`},
		{"duplicate vip", header + `services:
  - name: api
    namespace: shop
    vips: [10.96.0.10]
  - name: db
    namespace: shop
    vips:
      - 10.96.0.11
      - 10.96.0.10 # <-
`, "vip 10.96.0.10 is also service shop/api's (at line 6)"},
		{"vip is a workload ip", header + webWorkload + `services:
  - name: api
    namespace: shop
    vips: [10.20.1.2] # <-
`, "vip 10.20.1.2 is workload shop/web-1's ip"},
		{"service port 0", header + "services:\n  - name: api\n    namespace: shop\n    ports:\n      - {port: 0, targetPort: 80} # <-\n", "port 0 is out of range"},
		{"duplicate service port", header + "services:\n  - name: api\n    namespace: shop\n    ports:\n      - {port: 80}\n      - {port: 80} # <-\n", "port 80 is listed twice"},
		{"duplicate service", header + "services:\n  - {name: api, namespace: shop}\n  - {name: api, namespace: shop} # <-\n", "duplicate service"},
		{"policy bad action", header + "policies:\n  - name: p\n    namespace: shop\n    action: allow # <-\n", `policy shop/p: action: "allow" is not ALLOW or DENY`},
		{"policy bad namespace", header + "policies:\n  - name: p\n    namespace: Shop # <-\n", "namespace: namespace \"Shop\""},
		{"policy bad principal", header + `policies:
  - name: p
    namespace: shop
    rules:
      - from:
          - source:
              principals: ["cluster.local/ns/shop/sa/web"]
          - source:
              principals:
                - "*/ns/shop/sa/web"
                - "cluster.local/ns/*/sa/web" # <-
`, "rules[0].from[1].source.principals[1]: pattern \"cluster.local/ns/*/sa/web\""},
		{"policy port 0", header + `policies:
  - name: p
    namespace: shop
    rules:
      - to: [{operation: {ports: [80]}}]
      - to: [{operation: {notPorts: [0]}}] # <-
`, "rules[1].to[0].operation.notPorts[0]: port 0 is out of range"},
		{"policy empty source", header + `policies:
  - name: p
    namespace: shop
    rules:
      - from:
          - {} # <-
`, "rules[0].from[0].source: source sets none"},
		{"unknown waypoint", header + webWorkload + "    waypoint: wq # <-\n", "waypoint shop/wq: no such service"},
		{"waypoint that is not one", header + webWorkload + `services:
  - name: wp
    namespace: shop
    vips: [10.96.0.20]
    ports: [{port: 15008}]
  - name: api
    namespace: shop
    vips: [10.96.0.10]
    ports: [{port: 80}]
    waypoint: wp # <-
`, "the service is not a waypoint"},
		{"bad waypointFor", header + `services:
  - name: wp
    namespace: shop
    vips: [10.96.0.20]
    ports: [{port: 15008}]
    waypointFor: everything # <-
`, `waypointFor "everything" is not service, workload, all or none`},
		{"L7 field on an L4 policy", header + `policies:
  - name: p
    namespace: shop
    rules:
      - to:
          - operation:
              methods: [GET] # <-
`, "the node agent enforces L4 only; set targetRefs"},
		{"route to a Gateway", header + `routes:
  - name: r
    namespace: shop
    parentRefs:
      - {kind: Gateway, name: gw} # <-
    rules: [{backendRefs: [{name: api, port: 80}]}]
`, "only kind Service"},
		{"route path without slash", header + `routes:
  - name: r
    namespace: shop
    parentRefs: [{kind: Service, name: api}]
    rules:
      - matches:
          - path: {type: PathPrefix, value: api} # <-
        backendRefs: [{name: api, port: 80}]
`, `path "api" does not start with /`},
		{"route regex path", header + `routes:
  - name: r
    namespace: shop
    parentRefs: [{kind: Service, name: api}]
    rules:
      - matches:
          - path: {type: RegularExpression, value: /a.*} # <-
        backendRefs: [{name: api, port: 80}]
`, `"RegularExpression" is not supported`},
		{"route timeout", header + `routes:
  - name: r
    namespace: shop
    parentRefs: [{kind: Service, name: api}]
    rules:
      - backendRefs: [{name: api, port: 80}]
        timeouts: {request: soon} # <-
`, "is not a duration"},
		{"duplicate policy", header + `policies:
  - name: p
    namespace: shop
  - name: p # <-
    namespace: shop
`, "duplicate policy (also at line 6)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := markedLine(t, tt.yaml)
			s, err := Parse("state.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse accepted:\n%s\nstate: %+v", tt.yaml, s)
			}
			if s != nil {
				t.Errorf("Parse returned a state with an error")
			}
			if !strings.HasPrefix(err.Error(), "workload: parse state.yaml: ") {
				t.Errorf("error %q lacks the heading", err)
			}
			prefix := fmt.Sprintf("state.yaml:%d: ", line)
			for l := range strings.SplitSeq(err.Error(), "\n") {
				if strings.Contains(l, prefix) && strings.Contains(l, tt.msg) {
					return
				}
			}
			t.Errorf("error:\n%v\nwant a line with %q and %q", err, prefix, tt.msg)
		})
	}
}

func markedLine(t *testing.T, doc string) int {
	t.Helper()
	for i, l := range strings.Split(doc, "\n") {
		if strings.Contains(l, "# <-") {
			return i + 1
		}
	}
	t.Fatalf("no # <- marker in\n%s", doc)
	return 0
}

func TestParseReportsEveryError(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		lines []int
	}{
		{"phase 1", header + `workloads:
  - name: web-1
    namespace: shop
    serviceAccount: web
    node: node1
    ips: [10.0.0.x]
    mode: sidecar
    netnss: x
  - name: web-2
    nmespace: shop
`, []int{10, 11, 12, 14}},
		{"phase 1 values", header + `workloads:
  - name: web-1
    namespace: shop
    serviceAccount: web
    node: node1
    ips: [10.0.0.x]
    mode: sidecar
  - name: web-2
    ips: [10.0.0.y]
`, []int{10, 11, 13}},
		{"phase 2", header + `workloads:
  - name: web-1
    namespace: Shop
    serviceAccount: web
    node: node9
    ips: [10.20.1.2]
services:
  - name: api
    namespace: shop
    vips: [10.20.1.2]
policies:
  - name: p
    namespace: shop
    action: MAYBE
`, []int{7, 9, 14, 18}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("state.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatal("Parse accepted the file")
			}
			var got []int
			for _, e := range unjoin(errors.Unwrap(err)) {
				var l int
				if _, serr := fmt.Sscanf(e.Error(), "state.yaml:%d:", &l); serr != nil {
					t.Errorf("error %q does not start with state.yaml:<line>:", e)
				}
				got = append(got, l)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.lines) {
				t.Errorf("error lines = %v, want %v; error:\n%v", got, tt.lines, err)
			}
			if want := fmt.Sprintf("%d errors:\n", len(tt.lines)); !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		})
	}
}

// unjoin returns the errors errors.Join joined, or err alone.
func unjoin(err error) []error {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		return u.Unwrap()
	}
	return []error{err}
}

// FuzzParse checks that no input makes Parse panic, and that what it accepts is a consistent State.
func FuzzParse(f *testing.F) {
	data, err := os.ReadFile("testdata/state.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(header + webWorkload))
	f.Add([]byte("---\n"))
	f.Add([]byte("~\n"))
	f.Add([]byte("a: &x [1]\nb: *x\n"))
	f.Add([]byte(header + "workloads:\n  - &w {name: a, namespace: b, serviceAccount: c, node: node1}\n  - *w\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.yaml", data)
		if err != nil {
			if s != nil {
				t.Fatal("state and error")
			}
			if !strings.Contains(err.Error(), "fuzz.yaml:") {
				t.Fatalf("error without a position: %v", err)
			}
			return
		}
		for _, w := range s.Workloads() {
			if s.WorkloadByUID(w.UID) != w {
				t.Fatalf("workload %s not indexed", w.UID)
			}
			for _, ip := range w.IPs {
				if s.WorkloadByIP(ip) != w {
					t.Fatalf("ip %s not indexed", ip)
				}
			}
		}
	})
}
