package xds

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/waypoint"
)

// The RBAC filters of a main_internal chain, in order. A request must pass each: the DENY
// filter (identity guard, every DENY policy), then one ALLOW filter per layer that has ALLOW
// policies. Envoy's RBAC ALLOW filter with no policy denies everything, which is what an ALLOW
// layer whose every rule was dropped must do.
const (
	rbacDenyFilter          = "amesh.rbac.deny"
	rbacAllowFilter         = "amesh.rbac.allow"
	rbacAllowWorkloadFilter = "amesh.rbac.allow_workload"

	// guardPolicy denies a request whose carried caller identity is not exactly one SPIFFE ID.
	guardPolicy = "amesh/peer-identity-required"
	// unenforceablePolicy denies everything on a chain whose endpoints have different
	// workload policies (see workloadLayer).
	unenforceablePolicy = "amesh/workload-policies-differ"
)

// The Gateway API group of a Gateway targetRef.
const gatewayGroup = "gateway.networking.k8s.io"

// layer is one set of policies a request must pass, with its own ALLOW decision.
type layer struct {
	// prefix names the layer's policies in the Envoy RBAC maps.
	prefix string
	// l7 says whether HTTP fields and conditions are enforced: true for waypoint policies;
	// false for the destinations' own (L4) policies, which are decided as policy.Evaluate
	// decides them in the agent, from the source and the port only.
	l7 bool
}

var (
	waypointLayer = layer{prefix: "waypoint:", l7: true}
	workloadLayer = layer{prefix: "workload:", l7: false}
)

// chainRBAC returns the RBAC filters for a service port's chain. Two layers of policy apply,
// as in the Go waypoint:
//
//   - the waypoint's own: the policies whose targetRefs name the waypoint (its Service or
//     Gateway), with their L7 fields; their ports are the port the caller dialled (the
//     service port), as policy.EvaluateHTTP is given;
//   - the destinations': the L4 policies that apply to the endpoints the chain's routes reach.
//     The destination's agent accepts this traffic from the waypoint only and trusts it to have
//     decided them against the original caller (DESIGN §7), so leaving them out would bypass
//     them. Their ports are the endpoint's (target) port, as policy.Evaluate is given.
func (b *builder) chainRBAC(svc *waypoint.Service, port waypoint.Port, reach []backend) []*hcmv3.HttpFilter {
	deny := map[string]*rbacconfigv3.Policy{guardPolicy: guard()}
	var allowWaypoint, allowWorkload map[string]*rbacconfigv3.Policy

	for _, p := range b.cfg.Policies {
		if len(p.TargetRefs) > 0 && b.targetsWaypoint(p) {
			b.addPolicy(p, waypointLayer, port.Port, deny, &allowWaypoint)
		}
	}
	if idx, tport, ok := b.workloadPolicies(reach); ok {
		for _, i := range idx {
			b.addPolicy(b.cfg.Policies[i], workloadLayer, tport, deny, &allowWorkload)
		}
	} else {
		b.problem("service "+svc.Namespace+"/"+svc.Name, fmt.Sprintf(
			"port %d: the endpoints its routes reach have different workload policies (or target ports), which Envoy cannot enforce per endpoint after load balancing: every request to it is denied (give them the same policies, or use the Go waypoint)",
			port.Port))
		deny[unenforceablePolicy] = &rbacconfigv3.Policy{
			Permissions: []*rbacconfigv3.Permission{anyPermission()},
			Principals:  []*rbacconfigv3.Principal{anyPrincipal()},
		}
	}

	filters := []*hcmv3.HttpFilter{b.rbacFilter(rbacDenyFilter, rbacconfigv3.RBAC_DENY, deny)}
	if allowWaypoint != nil {
		filters = append(filters, b.rbacFilter(rbacAllowFilter, rbacconfigv3.RBAC_ALLOW, allowWaypoint))
	}
	if allowWorkload != nil {
		filters = append(filters, b.rbacFilter(rbacAllowWorkloadFilter, rbacconfigv3.RBAC_ALLOW, allowWorkload))
	}
	return filters
}

func (b *builder) rbacFilter(name string, action rbacconfigv3.RBAC_Action, policies map[string]*rbacconfigv3.Policy) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{
		Name: name,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: b.any(&rbachttpv3.RBAC{
			Rules: &rbacconfigv3.RBAC{Action: action, Policies: policies},
		})},
	}
}

// targetsWaypoint reports whether p, a policy with targetRefs, is this waypoint's: a targetRef
// names its Service or its Gateway, in its namespace (Istio's targetRefs; what
// policy.EvaluateHTTP is given as HTTPRequest.Waypoint).
func (b *builder) targetsWaypoint(p policy.Policy) bool {
	if p.Namespace != b.cfg.Namespace {
		return false
	}
	for _, ref := range p.TargetRefs {
		if ref.Name != b.cfg.Name {
			continue
		}
		if ref.Kind == "Gateway" && ref.Group == gatewayGroup || ref.Kind == "Service" && (ref.Group == "" || ref.Group == "core") {
			return true
		}
	}
	return false
}

// workloadPolicies returns the indexes of the L4 policies that apply to the endpoints reach
// holds and the target port they are reached on, and false when those differ between
// endpoints: the RBAC filter runs before routing and load balancing pick the endpoint, so only
// a decision common to all of them can be made there.
func (b *builder) workloadPolicies(reach []backend) ([]int, uint16, bool) {
	var first []int
	var firstPort uint16
	n := 0
	for _, be := range reach {
		tport := targetPort(be.svc, be.port)
		for _, ep := range be.svc.Endpoints {
			var set []int
			for i, p := range b.cfg.Policies {
				if len(p.TargetRefs) == 0 && p.AppliesTo(ep.Namespace, ep.Labels, b.cfg.RootNamespace) {
					set = append(set, i)
				}
			}
			if n == 0 {
				first, firstPort = set, tport
			} else if !slices.Equal(first, set) || (len(set) > 0 && tport != firstPort) {
				return nil, 0, false
			}
			n++
		}
	}
	return first, firstPort, true
}

// addPolicy adds p's rules to deny or to *allow (created on the first ALLOW policy, so that an
// ALLOW policy whose rules all fail to translate still denies). Each rule is one Envoy policy.
func (b *builder) addPolicy(p policy.Policy, l layer, port uint16, deny map[string]*rbacconfigv3.Policy, allow *map[string]*rbacconfigv3.Policy) {
	object := "policy " + p.Key()
	isDeny := false
	switch p.Action {
	case policy.Allow, "":
	case policy.Deny:
		isDeny = true
	default:
		// policy.Evaluate does the same: an action it does not know denies.
		b.problem(object, fmt.Sprintf("action %q is neither ALLOW nor DENY: enforced as DENY", p.Action))
		isDeny = true
	}
	if !isDeny && *allow == nil {
		*allow = map[string]*rbacconfigv3.Policy{}
	}
	for i, r := range p.Rules {
		name := fmt.Sprintf("%s%s/rules[%d]", l.prefix, p.Key(), i)
		ids, perms := l.rule(r, port)
		var principals []*rbacconfigv3.Principal
		var permissions []*rbacconfigv3.Permission
		dropped := false
		for _, t := range ids {
			switch {
			case t.err == nil:
				principals = append(principals, t.id)
			case isDeny:
				b.problem(object, fmt.Sprintf("rules[%d]: %v: that part is ignored, so the rule denies more requests", i, t.err))
			default:
				b.problem(object, fmt.Sprintf("rules[%d]: %v: the rule is dropped, it allows nothing", i, t.err))
				dropped = true
			}
		}
		for _, t := range perms {
			switch {
			case t.err == nil:
				permissions = append(permissions, t.perm)
			case isDeny:
				b.problem(object, fmt.Sprintf("rules[%d]: %v: that part is ignored, so the rule denies more requests", i, t.err))
			default:
				b.problem(object, fmt.Sprintf("rules[%d]: %v: the rule is dropped, it allows nothing", i, t.err))
				dropped = true
			}
		}
		if dropped {
			continue
		}
		pol := &rbacconfigv3.Policy{
			Principals:  []*rbacconfigv3.Principal{andIDs(principals)},
			Permissions: []*rbacconfigv3.Permission{andPerms(permissions)},
		}
		if isDeny {
			deny[name] = pol
		} else {
			(*allow)[name] = pol
		}
	}
}

// idTerm and permTerm are the ANDed parts of a rule, on the principal and permission side. A
// part that failed to translate carries its error instead: addPolicy drops the part (DENY) or
// the rule (ALLOW). Failures only ever replace a whole part, never something under a "not", so
// dropping it makes the rule match more, never less.
type idTerm struct {
	id  *rbacconfigv3.Principal
	err error
}

type permTerm struct {
	perm *rbacconfigv3.Permission
	err  error
}

// rule translates r: From and the source conditions to principals, To and the other
// conditions to permissions. Port conditions are decided here, against the chain's target port.
func (l layer) rule(r policy.Rule, port uint16) ([]idTerm, []permTerm) {
	var ids []idTerm
	var perms []permTerm
	if len(r.From) > 0 {
		var alts []*rbacconfigv3.Principal
		var err error
		for j, s := range r.From {
			id, e := source(s)
			if e != nil {
				err = errors.Join(err, fmt.Errorf("from[%d]: %w", j, e))
			}
			alts = append(alts, id)
		}
		if err != nil {
			ids = append(ids, idTerm{err: err})
		} else {
			ids = append(ids, idTerm{id: orIDs(alts)})
		}
	}
	if len(r.To) > 0 {
		var alts []*rbacconfigv3.Permission
		var err error
		for j, o := range r.To {
			perm, e := l.operation(o, port)
			if e != nil {
				err = errors.Join(err, fmt.Errorf("to[%d]: %w", j, e))
			}
			alts = append(alts, perm)
		}
		if err != nil {
			perms = append(perms, permTerm{err: err})
		} else {
			perms = append(perms, permTerm{perm: orPerms(alts)})
		}
	}
	if !l.l7 {
		// policy.Evaluate ignores conditions: so does the L4 layer.
		return ids, perms
	}
	for j, c := range r.When {
		id, perm, err := condition(c, port)
		switch {
		case err != nil:
			perms = append(perms, permTerm{err: fmt.Errorf("when[%d] (%s): %w", j, c.Key, err)})
		case id != nil:
			ids = append(ids, idTerm{id: id})
		default:
			perms = append(perms, permTerm{perm: perm})
		}
	}
	return ids, perms
}

// source ANDs the fields of s that are set.
func source(s policy.Source) (*rbacconfigv3.Principal, error) {
	var and []*rbacconfigv3.Principal
	var errs []error
	for _, f := range []struct {
		name     string
		patterns []string
		not      bool
		match    func(string) (*rbacconfigv3.Principal, error)
	}{
		{"principals", s.Principals, false, principalMatch},
		{"notPrincipals", s.NotPrincipals, true, principalMatch},
		{"namespaces", s.Namespaces, false, namespaceMatch},
		{"notNamespaces", s.NotNamespaces, true, namespaceMatch},
	} {
		if len(f.patterns) == 0 {
			continue
		}
		id, err := anyOfIDs(f.patterns, f.match)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
			continue
		}
		if f.not {
			id = notID(id)
		}
		and = append(and, id)
	}
	return andIDs(and), errors.Join(errs...)
}

// operation ANDs the fields of o that are set (on the L4 layer, its ports only). Ports are
// decided statically: the chain's target port is known.
func (l layer) operation(o policy.Operation, port uint16) (*rbacconfigv3.Permission, error) {
	var and []*rbacconfigv3.Permission
	if len(o.Ports) > 0 && !slices.Contains(o.Ports, port) {
		and = append(and, neverPermission())
	}
	if len(o.NotPorts) > 0 && slices.Contains(o.NotPorts, port) {
		and = append(and, neverPermission())
	}
	if !l.l7 {
		return andPerms(and), nil
	}
	var errs []error
	for _, f := range []struct {
		name     string
		patterns []string
		not      bool
		match    func(string) (*rbacconfigv3.Permission, error)
	}{
		{"hosts", o.Hosts, false, hostMatch},
		{"notHosts", o.NotHosts, true, hostMatch},
		{"methods", o.Methods, false, methodMatch},
		{"notMethods", o.NotMethods, true, methodMatch},
		{"paths", o.Paths, false, pathMatch},
		{"notPaths", o.NotPaths, true, pathMatch},
	} {
		if len(f.patterns) == 0 {
			continue
		}
		perm, err := anyOfPerms(f.patterns, f.match)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
			continue
		}
		if f.not {
			perm = notPerm(perm)
		}
		and = append(and, perm)
	}
	return andPerms(and), errors.Join(errs...)
}

var headerKey = regexp.MustCompile(`^request\.headers\[([^\]]+)\]$`)

// headerName is an HTTP field name (RFC 9110 token).
var headerName = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// condition translates one "when" condition: to a principal (source.*), to a permission, or to
// an error when its key is not one amesh supports.
func condition(c policy.Condition, port uint16) (*rbacconfigv3.Principal, *rbacconfigv3.Permission, error) {
	if len(c.Values)+len(c.NotValues) == 0 {
		return nil, nil, errors.New("sets neither values nor notValues")
	}
	switch {
	case c.Key == "source.principal" || c.Key == "source.namespace":
		match := principalMatch
		if c.Key == "source.namespace" {
			match = namespaceMatch
		}
		var and []*rbacconfigv3.Principal
		if len(c.Values) > 0 {
			id, err := anyOfIDs(c.Values, match)
			if err != nil {
				return nil, nil, fmt.Errorf("values: %w", err)
			}
			and = append(and, id)
		}
		if len(c.NotValues) > 0 {
			id, err := anyOfIDs(c.NotValues, match)
			if err != nil {
				return nil, nil, fmt.Errorf("notValues: %w", err)
			}
			and = append(and, notID(id))
		}
		return andIDs(and), nil, nil
	case c.Key == "destination.port":
		in := func(values []string) (bool, error) {
			for _, v := range values {
				n, err := strconv.ParseUint(v, 10, 16)
				if err != nil || n == 0 {
					return false, fmt.Errorf("%q is not a port", v)
				}
				if uint16(n) == port {
					return true, nil
				}
			}
			return false, nil
		}
		ok := true
		if len(c.Values) > 0 {
			hit, err := in(c.Values)
			if err != nil {
				return nil, nil, err
			}
			ok = hit
		}
		if len(c.NotValues) > 0 {
			hit, err := in(c.NotValues)
			if err != nil {
				return nil, nil, err
			}
			ok = ok && !hit
		}
		if ok {
			return nil, anyPermission(), nil
		}
		return nil, neverPermission(), nil
	case headerKey.MatchString(c.Key):
		name := headerKey.FindStringSubmatch(c.Key)[1]
		if !headerName.MatchString(name) {
			return nil, nil, fmt.Errorf("%q is not a header name", name)
		}
		match := func(p string) (*rbacconfigv3.Permission, error) { return headerMatch(strings.ToLower(name), p, false) }
		var and []*rbacconfigv3.Permission
		if len(c.Values) > 0 {
			perm, err := anyOfPerms(c.Values, match)
			if err != nil {
				return nil, nil, fmt.Errorf("values: %w", err)
			}
			and = append(and, perm)
		}
		if len(c.NotValues) > 0 {
			perm, err := anyOfPerms(c.NotValues, match)
			if err != nil {
				return nil, nil, fmt.Errorf("notValues: %w", err)
			}
			and = append(and, notPerm(perm))
		}
		return nil, andPerms(and), nil
	default:
		return nil, nil, errors.New("unsupported condition key (amesh supports request.headers[<name>], source.principal, source.namespace, destination.port)")
	}
}
