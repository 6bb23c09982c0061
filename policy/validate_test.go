package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	ok := func(mod func(*Policy)) Policy {
		p := Policy{Name: "p", Namespace: "foo", Action: Allow, Rules: []Rule{{
			From: []Source{{Principals: []string{"cluster.local/ns/shop/sa/web"}}},
			To:   []Operation{{Ports: []uint16{80}}},
		}}}
		if mod != nil {
			mod(&p)
		}
		return p
	}
	src := func(s Source) func(*Policy) { return func(p *Policy) { p.Rules[0].From[0] = s } }
	tests := []struct {
		name  string
		p     Policy
		field string // "" = valid
		msg   string
	}{
		{name: "valid", p: ok(nil)},
		{name: "valid DENY", p: ok(func(p *Policy) { p.Action = Deny })},
		{name: "valid empty action", p: ok(func(p *Policy) { p.Action = "" })},
		{name: "valid no rules", p: ok(func(p *Policy) { p.Rules = nil })},
		{name: "valid empty rule", p: ok(func(p *Policy) { p.Rules = []Rule{{}} })},
		{name: "valid selector", p: ok(func(p *Policy) { p.Selector = map[string]string{"app.kubernetes.io/name": "web", "tier": ""} })},
		{name: "valid spiffe principal", p: ok(src(Source{Principals: []string{"spiffe://cluster.local/ns/shop/sa/web"}}))},
		{name: "valid wildcards", p: ok(src(Source{
			Principals: []string{"*", "cluster.local/ns/shop/*", "*/sa/web", "spiffe://cluster.local/*"},
			Namespaces: []string{"*", "shop-*", "*-prod"}, NotNamespaces: []string{"kube-system"},
		}))},

		{name: "missing name", p: ok(func(p *Policy) { p.Name = "" }), field: "name", msg: "is required"},
		{name: "bad name", p: ok(func(p *Policy) { p.Name = "Bad_Name" }), field: "name", msg: "DNS-1123"},
		{name: "missing namespace", p: ok(func(p *Policy) { p.Namespace = "" }), field: "namespace", msg: "required"},
		{name: "bad namespace", p: ok(func(p *Policy) { p.Namespace = "a.b" }), field: "namespace", msg: "DNS-1123 label"},
		{name: "bad action", p: ok(func(p *Policy) { p.Action = "allow" }), field: "action", msg: `"allow" is not ALLOW or DENY`},
		{name: "custom action", p: ok(func(p *Policy) { p.Action = "CUSTOM" }), field: "action", msg: "not supported"},
		{name: "bad selector key", p: ok(func(p *Policy) { p.Selector = map[string]string{"-app": "web"} }), field: "selector", msg: "label key"},
		{name: "bad selector value", p: ok(func(p *Policy) { p.Selector = map[string]string{"app": "a b"} }), field: "selector", msg: "value"},
		{name: "port 0", p: ok(func(p *Policy) { p.Rules[0].To[0].Ports = []uint16{80, 0} }),
			field: "rules[0].to[0].operation.ports[1]", msg: "out of range 1..65535"},
		{name: "notPort 0", p: ok(func(p *Policy) { p.Rules[0].To[0] = Operation{NotPorts: []uint16{0}} }),
			field: "rules[0].to[0].operation.notPorts[0]", msg: "out of range"},
		{name: "empty operation", p: ok(func(p *Policy) { p.Rules[0].To[0] = Operation{} }),
			field: "rules[0].to[0].operation", msg: "neither ports nor notPorts"},
		{name: "empty source", p: ok(src(Source{})), field: "rules[0].from[0].source", msg: "sets none"},
		{name: "two stars", p: ok(src(Source{Principals: []string{"*cluster.local*"}})),
			field: "rules[0].from[0].source.principals[0]", msg: "'*' may appear once"},
		{name: "star in the middle", p: ok(src(Source{NotPrincipals: []string{"cluster.local/ns/*/sa/web"}})),
			field: "rules[0].from[0].source.notPrincipals[0]", msg: "only at the start or the end"},
		{name: "empty principal", p: ok(src(Source{Principals: []string{""}})),
			field: "rules[0].from[0].source.principals[0]", msg: "empty pattern"},
		{name: "principal not a SPIFFE ID", p: ok(src(Source{Principals: []string{"Cluster.Local/ns/a/sa/b"}})),
			field: "rules[0].from[0].source.principals[0]", msg: "not a SPIFFE ID"},
		{name: "principal pattern with a space", p: ok(src(Source{Principals: []string{"cluster.local/ns/a b/*"}})),
			field: "rules[0].from[0].source.principals[0]", msg: "characters"},
		{name: "bad namespace", p: ok(src(Source{Namespaces: []string{"Shop"}})),
			field: "rules[0].from[0].source.namespaces[0]", msg: "DNS-1123 label"},
		{name: "bad namespace pattern", p: ok(src(Source{NotNamespaces: []string{"a*b"}})),
			field: "rules[0].from[0].source.notNamespaces[0]", msg: "'*'"},
		{name: "namespace pattern with a dot", p: ok(src(Source{Namespaces: []string{"a.*"}})),
			field: "rules[0].from[0].source.namespaces[0]", msg: "characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.p)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Validate = %v, want a *FieldError", err)
			}
			if fe.Field != tt.field || !strings.Contains(err.Error(), tt.msg) || fe.Policy != tt.p.Key() {
				t.Errorf("Validate = %v (field %q), want field %q and %q", err, fe.Field, tt.field, tt.msg)
			}
			if !strings.HasPrefix(err.Error(), "policy: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	p := Policy{Name: "", Namespace: "", Action: "X", Rules: []Rule{
		{From: []Source{{Principals: []string{"a*b"}}}, To: []Operation{{Ports: []uint16{0}}}},
	}}
	err := Validate(p)
	var fields []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		if errors.As(e, &fe) {
			fields = append(fields, fe.Field)
		}
	}
	want := "name namespace action rules[0].from[0].source.principals[0] rules[0].to[0].operation.ports[0]"
	if got := strings.Join(fields, " "); got != want {
		t.Errorf("fields = %q, want %q", got, want)
	}
}

func TestValidateLabels(t *testing.T) {
	tests := []struct {
		labels map[string]string
		ok     bool
	}{
		{nil, true},
		{map[string]string{"app": "web", "a.b/c_d": "V1.0-x", "k": ""}, true},
		{map[string]string{"": "x"}, false},
		{map[string]string{"/app": "x"}, false},
		{map[string]string{"Bad.Prefix/app": "x"}, false},
		{map[string]string{"app": "-x"}, false},
		{map[string]string{strings.Repeat("a", 64): "x"}, false},
		{map[string]string{"app": strings.Repeat("a", 64)}, false},
	}
	for _, tt := range tests {
		if err := ValidateLabels(tt.labels); (err == nil) != tt.ok {
			t.Errorf("ValidateLabels(%v) = %v, want ok=%v", tt.labels, err, tt.ok)
		}
	}
}
