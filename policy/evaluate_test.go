package policy

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Requests used by the table below. Destination: a workload app=httpbin in namespace foo.
const (
	sleepDefault = "spiffe://cluster.local/ns/default/sa/sleep"
	webShop      = "spiffe://cluster.local/ns/shop/sa/web"
	adminFoo     = "spiffe://cluster.local/ns/foo/sa/admin"
	otherTD      = "spiffe://other.td/ns/default/sa/sleep"
)

func req(principal string, port uint16) Request {
	return Request{
		SrcPrincipal: principal,
		DstNamespace: "foo",
		DstLabels:    map[string]string{"app": "httpbin", "version": "v1"},
		DstPort:      port,
	}
}

func allow(name string, rules ...Rule) Policy {
	return Policy{Name: name, Namespace: "foo", Action: Allow, Rules: rules}
}

func deny(name string, rules ...Rule) Policy {
	return Policy{Name: name, Namespace: "foo", Action: Deny, Rules: rules}
}

func from(s ...Source) Rule { return Rule{From: s} }

func ports(p ...uint16) []Operation { return []Operation{{Ports: p}} }

func TestEvaluate(t *testing.T) {
	tests := []struct {
		name     string
		policies []Policy
		req      Request
		allowed  bool
		policy   string // deciding policy, "" for the defaults
		reason   string // substring of Reason
	}{
		// Defaults.
		{
			name:    "no policy at all allows",
			req:     req(sleepDefault, 80),
			allowed: true, reason: "no ALLOW policy applies",
		},
		{
			name:     "only DENY policies that do not match allow",
			policies: []Policy{deny("d", from(Source{Principals: []string{webShop}}))},
			req:      req(sleepDefault, 80),
			allowed:  true, reason: "no ALLOW policy applies",
		},

		// Istio documentation: allow-all, allow-nothing, deny-all.
		{
			name:     "allow-all: ALLOW with rules [{}]",
			policies: []Policy{allow("allow-all", Rule{})},
			req:      req("", 80),
			allowed:  true, policy: "foo/allow-all", reason: "rule 0",
		},
		{
			name:     "allow-nothing: ALLOW without rules denies authenticated",
			policies: []Policy{allow("allow-nothing")},
			req:      req(sleepDefault, 80),
			allowed:  false, reason: "no ALLOW policy matched (applicable: foo/allow-nothing)",
		},
		{
			name:     "allow-nothing: ALLOW without rules denies plaintext",
			policies: []Policy{allow("allow-nothing")},
			req:      req("", 80),
			allowed:  false, reason: "no ALLOW policy matched",
		},
		{
			name:     "deny-all: DENY with rules [{}]",
			policies: []Policy{deny("deny-all", Rule{}), allow("allow-all", Rule{})},
			req:      req(sleepDefault, 80),
			allowed:  false, policy: "foo/deny-all", reason: "denied by DENY policy foo/deny-all (rule 0)",
		},
		{
			name:     "DENY without rules does nothing",
			policies: []Policy{deny("noop")},
			req:      req(sleepDefault, 80),
			allowed:  true, reason: "no ALLOW policy applies",
		},
		{
			name:     "DENY without rules does nothing beside an ALLOW",
			policies: []Policy{deny("noop"), allow("allow-all", Rule{})},
			req:      req(sleepDefault, 80),
			allowed:  true, policy: "foo/allow-all",
		},
		{
			name:     "empty action is ALLOW",
			policies: []Policy{{Name: "implicit", Namespace: "foo", Rules: []Rule{from(Source{Principals: []string{webShop}})}}},
			req:      req(sleepDefault, 80),
			allowed:  false, reason: "applicable: foo/implicit",
		},

		// Istio documentation: from principal OR namespace, to ports.
		{
			name: "allow from sleep or namespace test: sleep allowed",
			policies: []Policy{allow("httpbin", Rule{
				From: []Source{{Principals: []string{"cluster.local/ns/default/sa/sleep"}}, {Namespaces: []string{"test"}}},
				To:   ports(80),
			})},
			req:     req(sleepDefault, 80),
			allowed: true, policy: "foo/httpbin",
		},
		{
			name: "allow from sleep or namespace test: namespace test allowed",
			policies: []Policy{allow("httpbin", Rule{
				From: []Source{{Principals: []string{"cluster.local/ns/default/sa/sleep"}}, {Namespaces: []string{"test"}}},
				To:   ports(80),
			})},
			req:     req("spiffe://cluster.local/ns/test/sa/anything", 80),
			allowed: true, policy: "foo/httpbin",
		},
		{
			name: "allow from sleep or namespace test: wrong port denied",
			policies: []Policy{allow("httpbin", Rule{
				From: []Source{{Principals: []string{"cluster.local/ns/default/sa/sleep"}}, {Namespaces: []string{"test"}}},
				To:   ports(80),
			})},
			req:     req(sleepDefault, 8080),
			allowed: false, reason: "no ALLOW policy matched",
		},
		{
			name: "allow from sleep or namespace test: someone else denied",
			policies: []Policy{allow("httpbin", Rule{
				From: []Source{{Principals: []string{"cluster.local/ns/default/sa/sleep"}}, {Namespaces: []string{"test"}}},
				To:   ports(80),
			})},
			req:     req(webShop, 80),
			allowed: false,
		},
		{
			name:     "allow from namespace foo to port 80: match",
			policies: []Policy{allow("foo-80", Rule{From: []Source{{Namespaces: []string{"foo"}}}, To: ports(80)})},
			req:      req(adminFoo, 80),
			allowed:  true, policy: "foo/foo-80",
		},
		{
			name:     "allow from namespace foo to port 80: other port",
			policies: []Policy{allow("foo-80", Rule{From: []Source{{Namespaces: []string{"foo"}}}, To: ports(80)})},
			req:      req(adminFoo, 81),
			allowed:  false,
		},
		{
			name:     "allow from namespace foo to port 80: other namespace",
			policies: []Policy{allow("foo-80", Rule{From: []Source{{Namespaces: []string{"foo"}}}, To: ports(80)})},
			req:      req(sleepDefault, 80),
			allowed:  false,
		},
		{
			name:     "allow from namespace foo: plaintext has no namespace",
			policies: []Policy{allow("foo-80", Rule{From: []Source{{Namespaces: []string{"foo"}}}, To: ports(80)})},
			req:      Request{SrcNamespace: "foo", DstNamespace: "foo", DstPort: 80},
			allowed:  false,
		},
		{
			name:     "namespaces: * needs an authenticated source",
			policies: []Policy{allow("any-ns", from(Source{Namespaces: []string{"*"}}))},
			req:      req("", 80),
			allowed:  false,
		},
		{
			name:     "namespaces: * matches any authenticated namespace",
			policies: []Policy{allow("any-ns", from(Source{Namespaces: []string{"*"}}))},
			req:      req(webShop, 80),
			allowed:  true, policy: "foo/any-ns",
		},
		{
			name:     "namespace prefix wildcard",
			policies: []Policy{allow("sh", from(Source{Namespaces: []string{"sh*"}}))},
			req:      req(webShop, 80),
			allowed:  true, policy: "foo/sh",
		},
		{
			name:     "namespace suffix wildcard does not match",
			policies: []Policy{allow("op", from(Source{Namespaces: []string{"*ault"}}))},
			req:      req(webShop, 80),
			allowed:  false,
		},
		{
			name:     "namespace comes from the principal, not SrcNamespace",
			policies: []Policy{allow("ns", from(Source{Namespaces: []string{"foo"}}))},
			req:      Request{SrcPrincipal: webShop, SrcNamespace: "foo", DstNamespace: "foo", DstPort: 80},
			allowed:  false,
		},
		{
			name:     "SrcNamespace used for a principal without the workload shape",
			policies: []Policy{allow("ns", from(Source{Namespaces: []string{"foo"}}))},
			req:      Request{SrcPrincipal: "spiffe://cluster.local/gateway", SrcNamespace: "foo", DstNamespace: "foo", DstPort: 80},
			allowed:  true, policy: "foo/ns",
		},

		// Istio documentation: deny requests from outside namespace foo (notNamespaces).
		{
			name:     "deny notNamespaces foo: other namespace denied",
			policies: []Policy{deny("deny-others", from(Source{NotNamespaces: []string{"foo"}}))},
			req:      req(sleepDefault, 80),
			allowed:  false, policy: "foo/deny-others",
		},
		{
			name:     "deny notNamespaces foo: same namespace allowed",
			policies: []Policy{deny("deny-others", from(Source{NotNamespaces: []string{"foo"}}))},
			req:      req(adminFoo, 80),
			allowed:  true, reason: "no ALLOW policy applies",
		},
		{
			name:     "deny notNamespaces foo: plaintext denied (unknown namespace is not foo)",
			policies: []Policy{deny("deny-others", from(Source{NotNamespaces: []string{"foo"}}))},
			req:      req("", 80),
			allowed:  false, policy: "foo/deny-others",
		},

		// Principals.
		{
			name:     "principals: * allows any authenticated peer",
			policies: []Policy{allow("mtls-only", from(Source{Principals: []string{"*"}}))},
			req:      req(otherTD, 80),
			allowed:  true, policy: "foo/mtls-only",
		},
		{
			name:     "principals: * denies plaintext",
			policies: []Policy{allow("mtls-only", from(Source{Principals: []string{"*"}}))},
			req:      req("", 80),
			allowed:  false,
		},
		{
			name:     "DENY notPrincipals *: denies plaintext (require mTLS)",
			policies: []Policy{deny("require-mtls", from(Source{NotPrincipals: []string{"*"}}))},
			req:      req("", 80),
			allowed:  false, policy: "foo/require-mtls",
		},
		{
			name:     "DENY notPrincipals *: lets mTLS through",
			policies: []Policy{deny("require-mtls", from(Source{NotPrincipals: []string{"*"}}))},
			req:      req(sleepDefault, 80),
			allowed:  true,
		},
		{
			name:     "principal in SPIFFE form in the policy",
			policies: []Policy{allow("spiffe-form", from(Source{Principals: []string{sleepDefault}}))},
			req:      req(sleepDefault, 80),
			allowed:  true, policy: "foo/spiffe-form",
		},
		{
			name:     "principal in Istio form in the request",
			policies: []Policy{allow("istio-form", from(Source{Principals: []string{sleepDefault}}))},
			req:      req("cluster.local/ns/default/sa/sleep", 80),
			allowed:  true, policy: "foo/istio-form",
		},
		{
			name:     "principal of another trust domain does not match",
			policies: []Policy{allow("td", from(Source{Principals: []string{"cluster.local/ns/default/sa/sleep"}}))},
			req:      req(otherTD, 80),
			allowed:  false,
		},
		{
			name:     "principal prefix wildcard",
			policies: []Policy{allow("ns-default", from(Source{Principals: []string{"cluster.local/ns/default/*"}}))},
			req:      req(sleepDefault, 80),
			allowed:  true, policy: "foo/ns-default",
		},
		{
			name:     "principal prefix wildcard in SPIFFE form",
			policies: []Policy{allow("ns-default", from(Source{Principals: []string{"spiffe://cluster.local/ns/default/*"}}))},
			req:      req(sleepDefault, 80),
			allowed:  true, policy: "foo/ns-default",
		},
		{
			name:     "principal suffix wildcard, any trust domain",
			policies: []Policy{allow("sleep", from(Source{Principals: []string{"*/ns/default/sa/sleep"}}))},
			req:      req(otherTD, 80),
			allowed:  true, policy: "foo/sleep",
		},
		{
			name:     "principal suffix wildcard does not match",
			policies: []Policy{allow("sleep", from(Source{Principals: []string{"*/sa/sleep"}}))},
			req:      req(webShop, 80),
			allowed:  false,
		},
		{
			name:     "notPrincipals excludes",
			policies: []Policy{allow("not-web", from(Source{NotPrincipals: []string{webShop}}))},
			req:      req(webShop, 80),
			allowed:  false,
		},
		{
			name:     "notPrincipals lets others in",
			policies: []Policy{allow("not-web", from(Source{NotPrincipals: []string{webShop}}))},
			req:      req(sleepDefault, 80),
			allowed:  true, policy: "foo/not-web",
		},
		{
			name:     "notPrincipals matches plaintext (empty principal matches no entry)",
			policies: []Policy{allow("not-web", from(Source{NotPrincipals: []string{webShop}}))},
			req:      req("", 80),
			allowed:  true, policy: "foo/not-web",
		},
		{
			name:     "principals: plaintext never matches",
			policies: []Policy{allow("web", from(Source{Principals: []string{webShop}}))},
			req:      req("", 80),
			allowed:  false,
		},

		// Within a Source fields are ANDed.
		{
			name:     "source AND: namespace matches, notPrincipals excludes",
			policies: []Policy{allow("and", from(Source{Namespaces: []string{"shop"}, NotPrincipals: []string{webShop}}))},
			req:      req(webShop, 80),
			allowed:  false,
		},
		{
			name:     "source AND: namespace matches, principal not excluded",
			policies: []Policy{allow("and", from(Source{Namespaces: []string{"shop"}, NotPrincipals: []string{webShop}}))},
			req:      req("spiffe://cluster.local/ns/shop/sa/api", 80),
			allowed:  true, policy: "foo/and",
		},
		{
			name:     "source AND: principal matches, namespace excluded",
			policies: []Policy{allow("and", from(Source{Principals: []string{"*"}, NotNamespaces: []string{"shop"}}))},
			req:      req(webShop, 80),
			allowed:  false,
		},
		{
			name: "source AND: principals and namespaces both required",
			policies: []Policy{allow("and", from(Source{
				Principals: []string{"cluster.local/ns/shop/sa/web"}, Namespaces: []string{"default"},
			}))},
			req:     req(webShop, 80),
			allowed: false,
		},

		// Rule = From AND To; rules ORed; To ORed.
		{
			name:     "rule with only To matches every source",
			policies: []Policy{allow("port-80", Rule{To: ports(80)})},
			req:      req("", 80),
			allowed:  true, policy: "foo/port-80",
		},
		{
			name:     "rule with only To: other port",
			policies: []Policy{allow("port-80", Rule{To: ports(80)})},
			req:      req("", 443),
			allowed:  false,
		},
		{
			name:     "To ORs operations",
			policies: []Policy{allow("ops", Rule{To: []Operation{{Ports: []uint16{80}}, {Ports: []uint16{443}}}})},
			req:      req("", 443),
			allowed:  true, policy: "foo/ops",
		},
		{
			name:     "notPorts",
			policies: []Policy{allow("not-22", Rule{To: []Operation{{NotPorts: []uint16{22}}}})},
			req:      req(sleepDefault, 22),
			allowed:  false,
		},
		{
			name:     "ports AND notPorts within an operation",
			policies: []Policy{allow("op", Rule{To: []Operation{{Ports: []uint16{80, 81}, NotPorts: []uint16{81}}}})},
			req:      req(sleepDefault, 81),
			allowed:  false,
		},
		{
			name:     "From matches, To does not",
			policies: []Policy{allow("r", Rule{From: []Source{{Principals: []string{sleepDefault}}}, To: ports(443)})},
			req:      req(sleepDefault, 80),
			allowed:  false,
		},
		{
			name: "second rule matches",
			policies: []Policy{allow("two",
				Rule{From: []Source{{Principals: []string{webShop}}}},
				Rule{From: []Source{{Principals: []string{sleepDefault}}}},
			)},
			req:     req(sleepDefault, 80),
			allowed: true, policy: "foo/two", reason: "rule 1",
		},

		// DENY overrides ALLOW; several ALLOWs.
		{
			name: "DENY overrides ALLOW",
			policies: []Policy{
				allow("allow-sleep", from(Source{Principals: []string{sleepDefault}})),
				deny("deny-80", Rule{To: ports(80)}),
			},
			req:     req(sleepDefault, 80),
			allowed: false, policy: "foo/deny-80",
		},
		{
			name: "DENY on another port leaves ALLOW",
			policies: []Policy{
				allow("allow-sleep", from(Source{Principals: []string{sleepDefault}})),
				deny("deny-22", Rule{To: ports(22)}),
			},
			req:     req(sleepDefault, 80),
			allowed: true, policy: "foo/allow-sleep",
		},
		{
			name: "any ALLOW suffices",
			policies: []Policy{
				allow("allow-web", from(Source{Principals: []string{webShop}})),
				allow("allow-sleep", from(Source{Principals: []string{sleepDefault}})),
			},
			req:     req(sleepDefault, 80),
			allowed: true, policy: "foo/allow-sleep",
		},
		{
			name: "no ALLOW matches lists the applicable ones",
			policies: []Policy{
				allow("allow-web", from(Source{Principals: []string{webShop}})),
				allow("allow-admin", from(Source{Principals: []string{adminFoo}})),
			},
			req:     req(sleepDefault, 80),
			allowed: false, reason: "applicable: foo/allow-web, foo/allow-admin",
		},
		{
			name:     "unknown action fails closed as DENY",
			policies: []Policy{{Name: "weird", Namespace: "foo", Action: "AUDIT", Rules: []Rule{{}}}},
			req:      req(sleepDefault, 80),
			allowed:  false, policy: "foo/weird",
		},

		// Applicability: selector and namespace.
		{
			name: "selector not matching: policy not applicable",
			policies: []Policy{{Name: "other-app", Namespace: "foo", Action: Allow,
				Selector: map[string]string{"app": "reviews"}}},
			req:     req(sleepDefault, 80),
			allowed: true, reason: "no ALLOW policy applies",
		},
		{
			name: "selector subset of labels: applicable",
			policies: []Policy{{Name: "v1", Namespace: "foo", Action: Allow,
				Selector: map[string]string{"version": "v1"}}},
			req:     req(sleepDefault, 80),
			allowed: false, reason: "applicable: foo/v1",
		},
		{
			name: "selector with a label the workload lacks: not applicable",
			policies: []Policy{{Name: "v1-canary", Namespace: "foo", Action: Deny, Rules: []Rule{{}},
				Selector: map[string]string{"version": "v1", "track": "canary"}}},
			req:     req(sleepDefault, 80),
			allowed: true,
		},
		{
			name:     "policy of another namespace: not applicable",
			policies: []Policy{{Name: "deny-all", Namespace: "bar", Action: Deny, Rules: []Rule{{}}}},
			req:      req(sleepDefault, 80),
			allowed:  true,
		},
		{
			name:     "root-namespace DENY applies mesh-wide",
			policies: []Policy{{Name: "deny-22", Namespace: "amesh-system", Action: Deny, Rules: []Rule{{To: ports(22)}}}},
			req:      req(sleepDefault, 22),
			allowed:  false, policy: "amesh-system/deny-22",
		},
		{
			name:     "root-namespace ALLOW-nothing locks down the mesh",
			policies: []Policy{{Name: "allow-nothing", Namespace: "amesh-system", Action: Allow}},
			req:      req(sleepDefault, 80),
			allowed:  false, reason: "applicable: amesh-system/allow-nothing",
		},
		{
			name: "root-namespace policy with a selector applies only to selected workloads",
			policies: []Policy{{Name: "deny-reviews", Namespace: "amesh-system", Action: Deny, Rules: []Rule{{}},
				Selector: map[string]string{"app": "reviews"}}},
			req:     req(sleepDefault, 80),
			allowed: true,
		},
		{
			name: "root-namespace ALLOW and namespace ALLOW: either suffices",
			policies: []Policy{
				{Name: "mesh-admin", Namespace: "amesh-system", Action: Allow,
					Rules: []Rule{from(Source{Principals: []string{adminFoo}})}},
				allow("allow-sleep", from(Source{Principals: []string{sleepDefault}})),
			},
			req:     req(adminFoo, 80),
			allowed: true, policy: "amesh-system/mesh-admin",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, p := range tt.policies {
				if p.Action == "AUDIT" {
					continue
				}
				if err := Validate(p); err != nil {
					t.Fatalf("test policy %s is invalid: %v", p.Key(), err)
				}
			}
			d := Evaluate(tt.policies, tt.req, "")
			if d.Allowed != tt.allowed || d.Policy != tt.policy || !strings.Contains(d.Reason, tt.reason) {
				t.Errorf("Evaluate = %+v, want allowed=%v policy=%q reason~%q", d, tt.allowed, tt.policy, tt.reason)
			}
		})
	}
}

func TestEvaluateRootNamespaceParameter(t *testing.T) {
	p := []Policy{{Name: "deny-all", Namespace: "mesh-root", Action: Deny, Rules: []Rule{{}}}}
	r := req(sleepDefault, 80)
	if d := Evaluate(p, r, ""); !d.Allowed {
		t.Errorf("with the default root namespace, mesh-root is an ordinary namespace: %+v", d)
	}
	if d := Evaluate(p, r, "mesh-root"); d.Allowed || d.Policy != "mesh-root/deny-all" {
		t.Errorf("with root namespace mesh-root: %+v", d)
	}
}

func TestApplicable(t *testing.T) {
	ps := []Policy{
		{Name: "all", Namespace: "foo"},
		{Name: "web", Namespace: "foo", Selector: map[string]string{"app": "web"}},
		{Name: "api", Namespace: "foo", Selector: map[string]string{"app": "api"}},
		{Name: "mesh", Namespace: "amesh-system"},
		{Name: "bar", Namespace: "bar"},
	}
	tests := []struct {
		ns     string
		labels map[string]string
		want   []string
	}{
		{"foo", map[string]string{"app": "web"}, []string{"foo/all", "foo/web", "amesh-system/mesh"}},
		{"foo", nil, []string{"foo/all", "amesh-system/mesh"}},
		{"bar", map[string]string{"app": "web"}, []string{"amesh-system/mesh", "bar/bar"}},
		{"amesh-system", nil, []string{"amesh-system/mesh"}},
	}
	for _, tt := range tests {
		var got []string
		for _, p := range Applicable(ps, tt.ns, tt.labels, "") {
			got = append(got, p.Key())
		}
		if strings.Join(got, " ") != strings.Join(tt.want, " ") {
			t.Errorf("Applicable(%s, %v) = %v, want %v", tt.ns, tt.labels, got, tt.want)
		}
	}
}

func TestClone(t *testing.T) {
	p := Policy{Name: "p", Namespace: "foo", Selector: map[string]string{"app": "web"},
		Rules: []Rule{{From: []Source{{Principals: []string{"a"}}}, To: []Operation{{Ports: []uint16{80}}}}}}
	c := p.Clone()
	c.Selector["app"] = "x"
	c.Rules[0].From[0].Principals[0] = "b"
	c.Rules[0].To[0].Ports[0] = 81
	if p.Selector["app"] != "web" || p.Rules[0].From[0].Principals[0] != "a" || p.Rules[0].To[0].Ports[0] != 80 {
		t.Errorf("Clone shares memory with the original: %+v", p)
	}
}
