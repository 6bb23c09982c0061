package policy

import (
	"net/http"
	"strings"
	"testing"
)

func TestEvaluateHTTP(t *testing.T) {
	wp := []TargetRef{{Kind: "Service", Name: "wp"}}
	web, nosy := "spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/nosy"
	policies := []Policy{
		{Name: "no-admin-delete", Namespace: "shop", TargetRefs: wp, Action: Deny, Rules: []Rule{{To: []Operation{{Methods: []string{"DELETE"}, Paths: []string{"/admin*"}}}}}},
		{Name: "no-debug-header", Namespace: "shop", TargetRefs: wp, Action: Deny, Rules: []Rule{{When: []Condition{{Key: "request.headers[x-debug]", Values: []string{"*"}}}}}},
		{Name: "web-reads", Namespace: "shop", TargetRefs: wp, Action: Allow, Rules: []Rule{{
			From: []Source{{Principals: []string{"cluster.local/ns/shop/sa/web"}}},
			To:   []Operation{{Methods: []string{"GET", "DELETE"}, NotPaths: []string{"*.secret"}, Hosts: []string{"*.svc.cluster.local", "10.96.0.10"}}},
		}}},
		{Name: "nosy-health", Namespace: "shop", TargetRefs: wp, Action: Allow, Rules: []Rule{{
			From: []Source{{Namespaces: []string{"shop"}}},
			To:   []Operation{{Paths: []string{"/healthz"}}},
			When: []Condition{{Key: "destination.port", Values: []string{"80"}}, {Key: "source.principal", NotValues: []string{"cluster.local/ns/shop/sa/web"}}},
		}}},
		// Not this waypoint's: another waypoint's, another namespace's, and a selector policy.
		{Name: "other-wp", Namespace: "shop", TargetRefs: []TargetRef{{Kind: "Service", Name: "wp2"}}, Action: Deny, Rules: []Rule{{}}},
		{Name: "wp-elsewhere", Namespace: "bank", TargetRefs: wp, Action: Deny, Rules: []Rule{{}}},
		{Name: "l4", Namespace: "shop", Action: Deny, Rules: []Rule{{}}},
	}
	req := func(src, method, host, path string, h http.Header) HTTPRequest {
		r := HTTPRequest{SrcPrincipal: src, DstPort: 80, Host: host, Method: method, Path: path, Headers: h}
		r.Waypoint.Namespace, r.Waypoint.Name = "shop", "wp"
		return r
	}
	for _, tc := range []struct {
		name   string
		req    HTTPRequest
		allow  bool
		policy string
	}{
		{"web GET", req(web, "GET", "api.shop.svc.cluster.local", "/", nil), true, "shop/web-reads"},
		{"web GET by VIP with port", req(web, "GET", "10.96.0.10:80", "/x", nil), true, "shop/web-reads"},
		{"host case-insensitive", req(web, "GET", "API.shop.svc.cluster.local", "/", nil), true, "shop/web-reads"},
		{"unknown host", req(web, "GET", "evil.example", "/", nil), false, ""},
		{"web DELETE /admin/x denied first", req(web, "DELETE", "10.96.0.10", "/admin/x", nil), false, "shop/no-admin-delete"},
		{"web DELETE /cart", req(web, "DELETE", "10.96.0.10", "/cart", nil), true, "shop/web-reads"},
		{"web POST", req(web, "POST", "10.96.0.10", "/", nil), false, ""},
		{"notPaths suffix", req(web, "GET", "10.96.0.10", "/keys.secret", nil), false, ""},
		{"header condition", req(web, "GET", "10.96.0.10", "/", http.Header{"X-Debug": {"1"}}), false, "shop/no-debug-header"},
		{"nosy health", req(nosy, "GET", "x", "/healthz", nil), true, "shop/nosy-health"},
		{"nosy elsewhere", req(nosy, "GET", "x", "/", nil), false, ""},
		{"plaintext caller", req("", "GET", "10.96.0.10", "/healthz", nil), false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := EvaluateHTTP(policies, tc.req, "")
			if d.Allowed != tc.allow || d.Policy != tc.policy {
				t.Errorf("EvaluateHTTP = %+v, want allowed %v by %q", d, tc.allow, tc.policy)
			}
		})
	}
	if d := EvaluateHTTP(nil, req(nosy, "PUT", "x", "/", nil), ""); !d.Allowed {
		t.Errorf("no policy targets the waypoint: %+v, want allowed", d)
	}
	// A waypoint's policies are never a workload's at L4.
	if d := Evaluate(policies[:6], Request{SrcPrincipal: nosy, DstNamespace: "shop", DstPort: 80}, ""); !d.Allowed {
		t.Errorf("Evaluate with only targetRef policies: %+v, want allowed (as with none)", d)
	}
}

func TestValidateL7(t *testing.T) {
	wp := []TargetRef{{Kind: "Service", Name: "wp"}}
	for _, tc := range []struct {
		name string
		p    Policy
		want string // "" for valid
	}{
		{"L7 on an L4 policy", Policy{Name: "p", Namespace: "ns", Rules: []Rule{{To: []Operation{{Methods: []string{"GET"}}}}}}, "rules[0].to[0].operation.methods"},
		{"when on an L4 policy", Policy{Name: "p", Namespace: "ns", Rules: []Rule{{When: []Condition{{Key: "source.namespace", Values: []string{"a"}}}}}}, "rules[0].when[0]"},
		{"waypoint policy", Policy{Name: "p", Namespace: "ns", TargetRefs: wp, Rules: []Rule{{To: []Operation{{Methods: []string{"GET"}, Paths: []string{"/a*", "*.js", "/x"}, Hosts: []string{"*.local"}}}, When: []Condition{{Key: "request.headers[x-a]", Values: []string{"b"}}}}}}, ""},
		{"gateway target", Policy{Name: "p", Namespace: "ns", TargetRefs: []TargetRef{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "wp"}}}, ""},
		{"selector and targetRefs", Policy{Name: "p", Namespace: "ns", TargetRefs: wp, Selector: map[string]string{"a": "b"}}, "selector"},
		{"bad target kind", Policy{Name: "p", Namespace: "ns", TargetRefs: []TargetRef{{Kind: "Pod", Name: "wp"}}}, "targetRefs[0].kind"},
		{"lower-case method", Policy{Name: "p", Namespace: "ns", TargetRefs: wp, Rules: []Rule{{To: []Operation{{Methods: []string{"get"}}}}}}, "methods[0]"},
		{"path without slash", Policy{Name: "p", Namespace: "ns", TargetRefs: wp, Rules: []Rule{{To: []Operation{{Paths: []string{"admin"}}}}}}, "paths[0]"},
		{"two stars", Policy{Name: "p", Namespace: "ns", TargetRefs: wp, Rules: []Rule{{To: []Operation{{Paths: []string{"*a*"}}}}}}, "paths[0]"},
		{"unknown when key", Policy{Name: "p", Namespace: "ns", TargetRefs: wp, Rules: []Rule{{When: []Condition{{Key: "request.auth.claims[iss]", Values: []string{"x"}}}}}}, "when[0].key"},
		{"when without values", Policy{Name: "p", Namespace: "ns", TargetRefs: wp, Rules: []Rule{{When: []Condition{{Key: "source.namespace"}}}}}, "when[0]"},
		{"bad port value", Policy{Name: "p", Namespace: "ns", TargetRefs: wp, Rules: []Rule{{When: []Condition{{Key: "destination.port", Values: []string{"http"}}}}}}, "when[0].values[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.p)
			if tc.want == "" {
				if err != nil {
					t.Errorf("Validate = %v, want valid", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want a problem at %s", err, tc.want)
			}
		})
	}
}

func TestCloneL7(t *testing.T) {
	p := Policy{Name: "p", Namespace: "ns", TargetRefs: []TargetRef{{Kind: "Service", Name: "wp"}},
		Rules: []Rule{{To: []Operation{{Methods: []string{"GET"}, Paths: []string{"/a"}}}, When: []Condition{{Key: "source.namespace", Values: []string{"a"}}}}}}
	c := p.Clone()
	c.TargetRefs[0].Name, c.Rules[0].To[0].Methods[0], c.Rules[0].To[0].Paths[0], c.Rules[0].When[0].Values[0] = "x", "PUT", "/b", "b"
	if p.TargetRefs[0].Name != "wp" || p.Rules[0].To[0].Methods[0] != "GET" || p.Rules[0].To[0].Paths[0] != "/a" || p.Rules[0].When[0].Values[0] != "a" {
		t.Errorf("Clone shares L7 fields with the original: %+v", p)
	}
}
