package policy

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FieldError is one problem Validate found. Field locates it with the path of the Istio YAML form
// of the policy, e.g. "rules[0].from[1].source.principals[2]", so that a caller holding the YAML can
// point at the offending line.
type FieldError struct {
	Policy string // "namespace/name"
	Field  string
	Err    error
}

// Error implements error.
func (e *FieldError) Error() string {
	return fmt.Sprintf("policy: %s: %s: %v", e.Policy, e.Field, e.Err)
}

// Unwrap returns the underlying problem.
func (e *FieldError) Unwrap() error { return e.Err }

// Kubernetes name syntax: DNS-1123 label (namespaces) and subdomain (object names), and label
// names and values.
var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	labelName    = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	// The characters a SPIFFE ID may hold after its scheme (trust domain and path together).
	principalChars = regexp.MustCompile(`^[A-Za-z0-9._/-]*$`)
	namespaceChars = regexp.MustCompile(`^[a-z0-9-]*$`)
)

// Validate checks p: its name and namespace are Kubernetes names, its selector has label syntax,
// its action is ALLOW, DENY or empty, every source and operation sets at least one field, ports are
// 1..65535, and principal and namespace patterns are well formed (at most one '*', only at the start
// or the end). It returns every problem found, each a *FieldError, joined with errors.Join.
func Validate(p Policy) error {
	v := validator{policy: p.Key()}
	if p.Name == "" {
		v.add("name", errors.New("is required"))
	} else if len(p.Name) > 253 || !dnsSubdomain.MatchString(p.Name) {
		v.add("name", fmt.Errorf("%q is not a DNS-1123 subdomain", p.Name))
	}
	if err := validateNamespace(p.Namespace); err != nil {
		v.add("namespace", err)
	}
	if err := ValidateLabels(p.Selector); err != nil {
		v.add("selector", err)
	}
	switch p.Action {
	case Allow, Deny, "":
	case "AUDIT", "CUSTOM":
		v.add("action", fmt.Errorf("%s is not supported by amesh at L4 (use ALLOW or DENY)", p.Action))
	default:
		v.add("action", fmt.Errorf("%q is not ALLOW or DENY", p.Action))
	}
	v.l7 = len(p.TargetRefs) > 0
	if v.l7 && len(p.Selector) > 0 {
		v.add("selector", errors.New("targetRefs and selector are exclusive"))
	}
	for i, ref := range p.TargetRefs {
		at := fmt.Sprintf("targetRefs[%d]", i)
		switch {
		case ref.Kind == "Service" && (ref.Group == "" || ref.Group == "core"):
		case ref.Kind == "Gateway" && ref.Group == "gateway.networking.k8s.io":
		default:
			v.add(at+".kind", fmt.Errorf("%s (group %q) is not a waypoint: want kind Service, or Gateway of group gateway.networking.k8s.io", ref.Kind, ref.Group))
		}
		if len(ref.Name) > 253 || !dnsSubdomain.MatchString(ref.Name) {
			v.add(at+".name", fmt.Errorf("%q is not a DNS-1123 subdomain", ref.Name))
		}
	}
	for i, r := range p.Rules {
		rule := fmt.Sprintf("rules[%d]", i)
		for j, s := range r.From {
			v.source(fmt.Sprintf("%s.from[%d].source", rule, j), s)
		}
		for j, o := range r.To {
			v.operation(fmt.Sprintf("%s.to[%d].operation", rule, j), o)
		}
		for j, c := range r.When {
			v.condition(fmt.Sprintf("%s.when[%d]", rule, j), c)
		}
	}
	return errors.Join(v.errs...)
}

type validator struct {
	policy string
	l7     bool // a waypoint's policy: L7 fields allowed
	errs   []error
}

func (v *validator) add(field string, err error) {
	v.errs = append(v.errs, &FieldError{Policy: v.policy, Field: field, Err: err})
}

func (v *validator) source(field string, s Source) {
	if len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces) == 0 {
		// Istio rejects it too; accepting it would silently match every source.
		v.add(field, errors.New("source sets none of principals, notPrincipals, namespaces, notNamespaces"))
		return
	}
	for _, l := range []struct {
		name     string
		patterns []string
		check    func(string) error
	}{
		{"principals", s.Principals, validatePrincipal},
		{"notPrincipals", s.NotPrincipals, validatePrincipal},
		{"namespaces", s.Namespaces, validateNamespacePattern},
		{"notNamespaces", s.NotNamespaces, validateNamespacePattern},
	} {
		for i, p := range l.patterns {
			if err := l.check(p); err != nil {
				v.add(fmt.Sprintf("%s.%s[%d]", field, l.name, i), err)
			}
		}
	}
}

func (v *validator) operation(field string, o Operation) {
	l7 := []struct {
		name  string
		items []string
		check func(string) error
	}{
		{"hosts", o.Hosts, validateHost}, {"notHosts", o.NotHosts, validateHost},
		{"methods", o.Methods, validateMethod}, {"notMethods", o.NotMethods, validateMethod},
		{"paths", o.Paths, validatePath}, {"notPaths", o.NotPaths, validatePath},
	}
	n7 := 0
	for _, l := range l7 {
		if len(l.items) == 0 {
			continue
		}
		n7 += len(l.items)
		if !v.l7 {
			// Refused, not widened or dropped as Istio does for a policy its ztunnel
			// enforces: a rule that means less than it says is a hole or an outage.
			v.add(field+"."+l.name, errors.New("is an L7 field: the node agent enforces L4 only; set targetRefs to a waypoint to enforce it there"))
			continue
		}
		for i, s := range l.items {
			if err := l.check(s); err != nil {
				v.add(fmt.Sprintf("%s.%s[%d]", field, l.name, i), err)
			}
		}
	}
	if len(o.Ports)+len(o.NotPorts)+n7 == 0 {
		v.add(field, errors.New("operation sets neither ports nor notPorts (nor, in a waypoint policy, an L7 field)"))
		return
	}
	for _, l := range []struct {
		name  string
		ports []uint16
	}{{"ports", o.Ports}, {"notPorts", o.NotPorts}} {
		for i, port := range l.ports {
			if port == 0 {
				v.add(fmt.Sprintf("%s.%s[%d]", field, l.name, i), errors.New("port 0 is out of range 1..65535"))
			}
		}
	}
}

// condition checks a waypoint policy's when condition.
func (v *validator) condition(field string, c Condition) {
	if !v.l7 {
		v.add(field, errors.New("when is L7: the node agent enforces L4 only; set targetRefs to a waypoint to enforce it there"))
		return
	}
	if len(c.Values)+len(c.NotValues) == 0 {
		v.add(field, errors.New("condition sets neither values nor notValues"))
	}
	var check func(string) error
	switch key := c.Key; {
	case strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]"):
		if name := key[len("request.headers[") : len(key)-1]; !httpToken.MatchString(name) {
			v.add(field+".key", fmt.Errorf("header name %q is not an HTTP token", name))
		}
		check = func(p string) error { _, err := checkPattern(p); return err }
	case key == "source.principal":
		check = validatePrincipal
	case key == "source.namespace":
		check = validateNamespacePattern
	case key == "destination.port":
		check = func(p string) error {
			if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
				return fmt.Errorf("port %q is not a number in 1..65535", p)
			}
			return nil
		}
	default:
		v.add(field+".key", fmt.Errorf("%q is not supported (request.headers[<name>], source.principal, source.namespace, destination.port)", key))
		return
	}
	for _, l := range []struct {
		name string
		vals []string
	}{{"values", c.Values}, {"notValues", c.NotValues}} {
		for i, s := range l.vals {
			if err := check(s); err != nil {
				v.add(fmt.Sprintf("%s.%s[%d]", field, l.name, i), err)
			}
		}
	}
}

// httpToken is an HTTP method or header name (RFC 9110 token).
var httpToken = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

func validateMethod(m string) error {
	if m == "" || strings.ToUpper(m) != m || !httpToken.MatchString(m) {
		return fmt.Errorf("method %q is not an upper-case HTTP method", m)
	}
	return nil
}

func validatePath(p string) error {
	rest, err := checkPattern(p)
	if err != nil {
		return err
	}
	if rest == p && !strings.HasPrefix(p, "/") {
		return fmt.Errorf("path %q does not start with /", p)
	}
	if strings.HasSuffix(p, "*") && !strings.HasPrefix(p, "/") {
		return fmt.Errorf("path prefix %q does not start with /", p)
	}
	return nil
}

func validateHost(h string) error {
	_, err := checkPattern(h)
	return err
}

// checkPattern checks the wildcard shape of a pattern and returns it without its '*'.
func checkPattern(p string) (string, error) {
	if p == "" {
		return "", errors.New("empty pattern")
	}
	if p == "*" {
		return "", nil
	}
	n := strings.Count(p, "*")
	if n > 1 || (n == 1 && !strings.HasPrefix(p, "*") && !strings.HasSuffix(p, "*")) {
		return "", fmt.Errorf("pattern %q: '*' may appear once, only at the start or the end", p)
	}
	return strings.Trim(p, "*"), nil
}

func validatePrincipal(p string) error {
	norm := normalizePrincipal(p)
	rest, err := checkPattern(norm)
	if err != nil {
		return err
	}
	if rest == norm {
		// Exact: must be a SPIFFE ID.
		if _, err := spiffeid.FromString(spiffeScheme + norm); err != nil {
			return fmt.Errorf("principal %q is not a SPIFFE ID (want td/ns/<namespace>/sa/<service-account>): %w", p, err)
		}
		return nil
	}
	if !principalChars.MatchString(rest) {
		return fmt.Errorf("principal pattern %q has characters a SPIFFE ID cannot hold", p)
	}
	return nil
}

func validateNamespacePattern(p string) error {
	rest, err := checkPattern(p)
	if err != nil {
		return err
	}
	if rest == p {
		return validateNamespace(p)
	}
	if !namespaceChars.MatchString(rest) {
		return fmt.Errorf("namespace pattern %q has characters a namespace cannot hold", p)
	}
	return nil
}

func validateNamespace(ns string) error {
	if ns == "" {
		return errors.New("namespace is required")
	}
	if len(ns) > 63 || !dnsLabel.MatchString(ns) {
		return fmt.Errorf("namespace %q is not a DNS-1123 label", ns)
	}
	return nil
}

// ValidateLabels checks that labels (a workload's labels or a selector) has Kubernetes label syntax:
// keys are [prefix/]name with a DNS-1123 subdomain prefix and a name of at most 63 characters,
// values at most 63 characters of the same alphabet, or empty. It reports every bad key, in key
// order, in one line.
func ValidateLabels(labels map[string]string) error {
	var errs []string
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		name := k
		if i := strings.LastIndexByte(k, '/'); i >= 0 {
			prefix := k[:i]
			name = k[i+1:]
			if len(prefix) > 253 || !dnsSubdomain.MatchString(prefix) {
				errs = append(errs, fmt.Sprintf("label key %q: prefix is not a DNS-1123 subdomain", k))
				continue
			}
		}
		if len(name) > 63 || !labelName.MatchString(name) {
			errs = append(errs, fmt.Sprintf("label key %q is not a valid label name", k))
			continue
		}
		if v := labels[k]; v != "" && (len(v) > 63 || !labelName.MatchString(v)) {
			errs = append(errs, fmt.Sprintf("label %s: value %q is not a valid label value", k, v))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}
