package lab

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/amesh-dev/amesh/workload"
	"github.com/amesh-dev/amesh/workload/file"
)

// testConfig is the lab of the tests: two pods on node1, one on node2.
func testConfig(prefix string) Config {
	return Config{
		Prefix: prefix,
		Nodes: []NodeSpec{
			{Name: "node1", Pods: []PodSpec{
				{Name: "web-1", Namespace: "shop", ServiceAccount: "web", Labels: map[string]string{"app": "web", "tier": "8080"}},
				{Name: "api-1", Namespace: "shop", ServiceAccount: "api", InboundMode: "permissive", Labels: map[string]string{"app": "api"}},
			}},
			{Name: "node2", Pods: []PodSpec{
				{Name: "api-2", Namespace: "shop", ServiceAccount: "api", Mode: "none", Labels: map[string]string{"app": "api"}},
			}},
		},
	}
}

func TestPlanLaysOutAddressesAndNames(t *testing.T) {
	l, err := plan(testConfig("amesh-lab-test01"))
	if err != nil {
		t.Fatal(err)
	}
	if l.TrustDomain != "cluster.local" || l.SwitchNetns != "/run/netns/amesh-lab-test01-sw" {
		t.Errorf("trust domain %q, switch %q", l.TrustDomain, l.SwitchNetns)
	}
	for _, tt := range []struct {
		node, ip, netns, cidr, pins string
	}{
		{"node1", "10.250.0.1", "/run/netns/amesh-lab-test01-node1", "[10.20.1.0/24]", "/sys/fs/bpf/amesh-lab-test01-node1"},
		{"node2", "10.250.0.2", "/run/netns/amesh-lab-test01-node2", "[10.20.2.0/24]", "/sys/fs/bpf/amesh-lab-test01-node2"},
	} {
		n := l.Node(tt.node)
		if n == nil {
			t.Fatalf("no node %s", tt.node)
		}
		if n.IP.String() != tt.ip || n.Netns != tt.netns || fmt.Sprint(n.PodCIDRs) != tt.cidr || n.PinDir != tt.pins {
			t.Errorf("node %s = %s %s %s %s, want %s %s %s %s", tt.node, n.IP, n.Netns, n.PodCIDRs, n.PinDir, tt.ip, tt.netns, tt.cidr, tt.pins)
		}
	}
	for _, tt := range []struct {
		pod, node, ip, netns, veth, mode, inbound string
	}{
		{"web-1", "node1", "10.20.1.2", "/run/netns/amesh-lab-test01-node1-web-1", "vpod1", "ambient", "strict"},
		{"api-1", "node1", "10.20.1.3", "/run/netns/amesh-lab-test01-node1-api-1", "vpod2", "ambient", "permissive"},
		{"api-2", "node2", "10.20.2.2", "/run/netns/amesh-lab-test01-node2-api-2", "vpod1", "none", "strict"},
	} {
		p := l.Pod(tt.pod)
		if p == nil {
			t.Fatalf("no pod %s", tt.pod)
		}
		if p.Node.Name != tt.node || p.IP.String() != tt.ip || p.Netns != tt.netns || p.hostVeth != tt.veth ||
			p.Spec.Mode != tt.mode || p.Spec.InboundMode != tt.inbound {
			t.Errorf("pod %s = %s %s %s %s %s %s, want %s %s %s %s %s %s", tt.pod,
				p.Node.Name, p.IP, p.Netns, p.hostVeth, p.Spec.Mode, p.Spec.InboundMode,
				tt.node, tt.ip, tt.netns, tt.veth, tt.mode, tt.inbound)
		}
		if !p.Node.PodCIDRs[0].Contains(p.IP) {
			t.Errorf("pod %s: %s outside its node's %s", p.Name, p.IP, p.Node.PodCIDRs)
		}
	}
	if l.Pod("nope") != nil || l.Node("nope") != nil {
		t.Error("lookup of an unknown name is not nil")
	}
}

// TestPlanPodsPastOneRange: a node of more pods than one /24 holds (an enrolment curve of 500)
// numbers the rest in a second range, routed like the first; every IP is distinct and inside
// one of its node's ranges.
func TestPlanPodsPastOneRange(t *testing.T) {
	var pods []PodSpec
	for j := range 500 {
		pods = append(pods, PodSpec{Name: fmt.Sprintf("p%03d", j)})
	}
	l, err := plan(Config{Nodes: []NodeSpec{{Name: "a"}, {Name: "b", Pods: pods}}})
	if err != nil {
		t.Fatal(err)
	}
	b := l.Node("b")
	if got := fmt.Sprint(b.PodCIDRs); got != "[10.20.2.0/24 10.21.2.0/24]" {
		t.Errorf("node b's ranges %s", got)
	}
	if got := fmt.Sprint(l.Node("a").PodCIDRs); got != "[10.20.1.0/24]" {
		t.Errorf("node a's ranges %s", got)
	}
	seen := map[netip.Addr]string{}
	for _, p := range b.Pods {
		if other, ok := seen[p.IP]; ok {
			t.Errorf("pods %s and %s both have %s", other, p.Name, p.IP)
		}
		seen[p.IP] = p.Name
		if !slices.ContainsFunc(b.PodCIDRs, func(c netip.Prefix) bool { return c.Contains(p.IP) }) {
			t.Errorf("pod %s: %s outside %s", p.Name, p.IP, b.PodCIDRs)
		}
		if last := p.IP.As4()[3]; last < 2 || last > 254 {
			t.Errorf("pod %s: %s is a network, gateway or broadcast address", p.Name, p.IP)
		}
	}
	for name, ip := range map[string]string{"p000": "10.20.2.2", "p252": "10.20.2.254", "p253": "10.21.2.2", "p499": "10.21.2.248"} {
		if got := l.Pod(name).IP.String(); got != ip {
			t.Errorf("pod %s = %s, want %s", name, got, ip)
		}
	}
}

func TestPlanDefaults(t *testing.T) {
	l, err := plan(Config{Nodes: []NodeSpec{{Name: "n", Pods: []PodSpec{{Name: "p"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^amesh-lab-[0-9a-f]{6}$`).MatchString(l.Prefix) {
		t.Errorf("default prefix %q", l.Prefix)
	}
	p := l.Pod("p")
	if p.Namespace != "default" || p.ServiceAccount != "default" || p.Spec.Mode != "ambient" || p.Spec.InboundMode != "strict" {
		t.Errorf("defaults: %+v", p.Spec)
	}
	if other := randomPrefix(); other == l.Prefix {
		t.Errorf("two random prefixes are both %s", other)
	}
}

func TestPlanKeepsInterfaceNamesShort(t *testing.T) {
	for _, name := range []string{switchPort(maxNodes - 1), hostVeth(maxPods - 1), bridgeName, "eth0"} {
		if len(name) > 15 {
			t.Errorf("interface name %q is longer than 15", name)
		}
	}
}

func TestPlanRejects(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no nodes", Config{}, "no nodes"},
		{"bad prefix", Config{Prefix: "Lab_1", Nodes: []NodeSpec{{Name: "n"}}}, `prefix "Lab_1"`},
		{"long prefix", Config{Prefix: strings.Repeat("a", 49), Nodes: []NodeSpec{{Name: "n"}}}, "at most 48"},
		{"bad node name", Config{Nodes: []NodeSpec{{Name: "Node/1"}}}, "not a DNS label"},
		{"empty node name", Config{Nodes: []NodeSpec{{}}}, "not a DNS label"},
		{"node twice", Config{Nodes: []NodeSpec{{Name: "n"}, {Name: "n"}}}, "used twice"},
		{"node named like the switch", Config{Nodes: []NodeSpec{{Name: "sw"}}}, "the switch and node sw"},
		{"pod twice", Config{Nodes: []NodeSpec{{Name: "a", Pods: []PodSpec{{Name: "p"}}}, {Name: "b", Pods: []PodSpec{{Name: "p"}}}}}, `pod "p": name used twice`},
		{"netns clash", Config{Nodes: []NodeSpec{{Name: "a", Pods: []PodSpec{{Name: "b-c"}}}, {Name: "a-b", Pods: []PodSpec{{Name: "c"}}}}}, "would both be netns"},
		{"bad namespace", Config{Nodes: []NodeSpec{{Name: "n", Pods: []PodSpec{{Name: "p", Namespace: "Shop"}}}}}, `namespace "Shop"`},
		{"bad mode", Config{Nodes: []NodeSpec{{Name: "n", Pods: []PodSpec{{Name: "p", Mode: "sidecar"}}}}}, `mode "sidecar"`},
		{"bad inbound mode", Config{Nodes: []NodeSpec{{Name: "n", Pods: []PodSpec{{Name: "p", InboundMode: "open"}}}}}, `inboundMode "open"`},
		{"too many pods", Config{Nodes: []NodeSpec{{Name: "n", Pods: slices.Repeat([]PodSpec{{Name: "p"}}, maxPods+1)}}}, "at most 506"},
		{"too many nodes", Config{Nodes: slices.Repeat([]NodeSpec{{}}, maxNodes+1)}, "at most 254"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := plan(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("plan: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func TestStateYAMLParses(t *testing.T) {
	l, err := plan(testConfig("amesh-lab-test02"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := file.Parse("lab.yaml", l.StateYAML())
	if err != nil {
		t.Fatalf("%v\n%s", err, l.StateYAML())
	}
	if s.TrustDomain().Name() != "cluster.local" {
		t.Errorf("trust domain %s", s.TrustDomain())
	}
	if got := s.Nodes(); len(got) != 2 || got[0] != (workload.Node{Name: "node1", IP: netip.MustParseAddr("10.250.0.1")}) ||
		got[1] != (workload.Node{Name: "node2", IP: netip.MustParseAddr("10.250.0.2")}) {
		t.Errorf("nodes %v", got)
	}
	if got := len(s.Workloads()); got != 3 {
		t.Errorf("%d workloads, want 3", got)
	}
	for _, p := range l.Pods() {
		w := s.WorkloadByIP(p.IP)
		if w == nil {
			t.Errorf("pod %s: no workload with IP %s", p.Name, p.IP)
			continue
		}
		if w.Name != p.Name || w.Namespace != p.Namespace || w.ServiceAccount != p.ServiceAccount ||
			w.Node != p.Node.Name || w.Netns != p.Netns || !slices.Equal(w.IPs, []netip.Addr{p.IP}) ||
			w.Mode.String() != p.Spec.Mode || w.InboundMode.String() != p.Spec.InboundMode ||
			!maps.Equal(w.Labels, p.Spec.Labels) {
			t.Errorf("pod %s: workload %+v", p.Name, w)
		}
	}
	if w := s.WorkloadByIP(l.Pod("api-2").IP); w.Enrolled() {
		t.Error("api-2 (mode none) is enrolled")
	}
	if w := s.WorkloadByIP(l.Pod("api-1").IP); !w.AcceptsPlaintext() {
		t.Error("api-1 (permissive) refuses plaintext")
	}
}

func TestStateYAMLWithoutPods(t *testing.T) {
	l, err := plan(Config{Nodes: []NodeSpec{{Name: "n"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := file.Parse("lab.yaml", l.StateYAML()); err != nil {
		t.Fatalf("%v\n%s", err, l.StateYAML())
	}
}

const (
	testServices = `- name: api
  namespace: shop
  vips: [10.96.0.10]
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: api}
`
	testPolicies = `policies:
  - name: api-allow-web
    namespace: shop
    selector: {app: api}
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
        to: [{operation: {ports: [8080]}}]`
)

func TestWriteState(t *testing.T) {
	l, err := plan(testConfig("amesh-lab-test03"))
	if err != nil {
		t.Fatal(err)
	}
	l.Dir = t.TempDir()
	if err := l.WriteState("state.yaml", testServices, testPolicies); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(l.Dir, "state.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := file.Parse(path, data)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if svc := s.Service("shop", "api"); svc == nil || len(s.Endpoints(svc)) != 2 {
		t.Errorf("service shop/api: %+v", svc)
	}
	if got := len(s.Policies()); got != 1 {
		t.Errorf("%d policies, want 1", got)
	}

	// Without sections: the lab's state alone.
	if err := l.WriteState(path, "", ""); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); string(data) != string(l.StateYAML()) {
		t.Errorf("state without sections:\n%s", data)
	}

	// An invalid state is refused and the file left as it was.
	err = l.WriteState(path, "", "- name: bad\n  namespace: shop\n  action: MAYBE\n")
	if err == nil || !strings.Contains(err.Error(), "MAYBE") {
		t.Errorf("invalid policy: %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != string(l.StateYAML()) {
		t.Errorf("invalid state replaced the file:\n%s", data)
	}
	if entries, _ := os.ReadDir(l.Dir); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func TestCommandRefusesPathsOutsideRunNetns(t *testing.T) {
	l := &Lab{}
	cmd := l.Command(t.Context(), "/proc/1/ns/net", "true")
	if err := cmd.Run(); err == nil || !strings.Contains(err.Error(), "/run/netns") {
		t.Errorf("run in /proc/1/ns/net: %v", err)
	}
}
