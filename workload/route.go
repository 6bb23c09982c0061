package workload

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Route is an HTTP route, the subset of Gateway API's HTTPRoute (GAMMA form) that amesh's
// waypoints implement: attached to services, it routes their requests through a waypoint to
// weighted backend services. The feeders convert HTTPRoute objects (sigs.k8s.io/gateway-api)
// and the state file's routes into it, refusing fields outside the subset, so that the model
// holds no Kubernetes types and no route means more than amesh does.
type Route struct {
	Name, Namespace string
	// Parents are the services of Namespace the route attaches to (parentRefs of kind Service).
	Parents []RouteParent
	// Rules are tried as Gateway API orders matches (see waypoint), not in this order only.
	Rules []RouteRule
}

// Key returns "namespace/name".
func (r *Route) Key() string { return r.Namespace + "/" + r.Name }

// RouteParent is a service a route attaches to; Port 0 attaches to every port of it.
type RouteParent struct {
	Service string
	Port    uint16
}

// RouteRule sends the requests that match any of Matches (every request when empty) to
// Backends, split by weight.
type RouteRule struct {
	Matches  []RouteMatch
	Backends []RouteBackend
	// Timeout bounds a request through this rule, response included (timeouts.request); zero
	// is none.
	Timeout time.Duration
}

// PathMatch is how a route matches the request path.
type PathMatch uint8

// Path match types: Gateway API's PathPrefix (its default, with "/") and Exact.
const (
	PathPrefix PathMatch = iota
	PathExact
)

// RouteMatch matches a request: every set field must hold.
type RouteMatch struct {
	PathType PathMatch
	// Path is the path or prefix; "" means the prefix "/" (everything). A prefix matches whole
	// segments: "/api" matches "/api" and "/api/x", not "/apix".
	Path string
	// Headers must all be present with exactly these values (names case-insensitive).
	Headers []HeaderMatch
	// Method, when set, is the request method exactly.
	Method string
}

// HeaderMatch is an exact header match.
type HeaderMatch struct {
	Name, Value string
}

// RouteBackend is a service of the route's namespace and a port of it; Weight is its share of
// the rule's requests (Gateway API's default 1; 0 sends it none).
type RouteBackend struct {
	Service string
	Port    uint16
	Weight  int32
}

func (r Route) clone() Route {
	c := r
	c.Parents = slices.Clone(r.Parents)
	c.Rules = make([]RouteRule, len(r.Rules))
	for i, rule := range r.Rules {
		c.Rules[i] = RouteRule{Backends: slices.Clone(rule.Backends), Timeout: rule.Timeout}
		for _, m := range rule.Matches {
			m.Headers = slices.Clone(m.Headers)
			c.Rules[i].Matches = append(c.Rules[i].Matches, m)
		}
	}
	return c
}

// Routes returns the routes, sorted by key.
func (s *State) Routes() []*Route { return slices.Clone(s.routes) }

// RoutesFor returns the routes attached to svc on port (a service port), sorted by key.
func (s *State) RoutesFor(svc *Service, port uint16) []*Route {
	var out []*Route
	for _, r := range s.routesOf[svc.Key()] {
		for _, p := range r.Parents {
			if p.Service == svc.Name && (p.Port == 0 || p.Port == port) {
				out = append(out, r)
				break
			}
		}
	}
	return out
}

// httpToken is the syntax of an HTTP method and of a header name (RFC 9110 token).
var httpToken = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// checkRoutes checks what a route says on its own; what it refers to (its parents and
// backends) is looked up when a request is routed, as Gateway API does: a backend that is not
// there fails its share of requests (500), the others carry on.
func checkRoutes(spec *Spec, p *Problems) {
	keys := make(map[string]int)
	for i, r := range spec.Routes {
		what := "route " + r.Key()
		if err := checkName(dnsSubdomain, 253, "name", r.Name); err != nil {
			p.Add(SectionRoutes, i, "name", what, err)
		}
		if err := checkName(dnsLabel, 63, "namespace", r.Namespace); err != nil {
			p.Add(SectionRoutes, i, "namespace", what, err)
		}
		if j, dup := keys[r.Key()]; dup {
			p.Addf(SectionRoutes, i, "name", what, "duplicate of %s", p.where(SectionRoutes, j, "name"))
		}
		keys[r.Key()] = i
		if len(r.Parents) == 0 {
			p.Add(SectionRoutes, i, "parentRefs", what, errors.New("attaches to no service (parentRefs of kind Service)"))
		}
		for k, par := range r.Parents {
			if err := checkName(dnsLabel, 63, "service", par.Service); err != nil {
				p.Add(SectionRoutes, i, fmt.Sprintf("parentRefs[%d].name", k), what, err)
			}
		}
		for k, rule := range r.Rules {
			at := fmt.Sprintf("rules[%d]", k)
			if rule.Timeout < 0 {
				p.Addf(SectionRoutes, i, at+".timeouts.request", what, "timeout %v is negative", rule.Timeout)
			}
			for m, match := range rule.Matches {
				mat := fmt.Sprintf("%s.matches[%d]", at, m)
				if match.PathType > PathExact {
					p.Addf(SectionRoutes, i, mat+".path.type", what, "path match type %d is not PathPrefix or Exact", match.PathType)
				}
				if match.Path != "" && !strings.HasPrefix(match.Path, "/") {
					p.Addf(SectionRoutes, i, mat+".path.value", what, "path %q does not start with /", match.Path)
				}
				if match.Method != "" && !httpToken.MatchString(match.Method) {
					p.Addf(SectionRoutes, i, mat+".method", what, "method %q is not an HTTP method", match.Method)
				}
				for h, hm := range match.Headers {
					if !httpToken.MatchString(hm.Name) {
						p.Addf(SectionRoutes, i, fmt.Sprintf("%s.headers[%d].name", mat, h), what, "header name %q is not an HTTP token", hm.Name)
					}
				}
			}
			if len(rule.Backends) == 0 {
				p.Addf(SectionRoutes, i, at+".backendRefs", what, "sends nowhere (no backendRefs)")
			}
			for b, be := range rule.Backends {
				bat := fmt.Sprintf("%s.backendRefs[%d]", at, b)
				if err := checkName(dnsLabel, 63, "service", be.Service); err != nil {
					p.Add(SectionRoutes, i, bat+".name", what, err)
				}
				if be.Port == 0 {
					p.Add(SectionRoutes, i, bat+".port", what, errors.New("port is required"))
				}
				if be.Weight < 0 || be.Weight > 1000000 {
					p.Addf(SectionRoutes, i, bat+".weight", what, "weight %d is out of range 0..1000000", be.Weight)
				}
			}
		}
	}
}

// ValidateRoute checks one route as a state would (names, paths, methods, headers, backends,
// weights), for a feeder that leaves a bad route out rather than reject the state.
func ValidateRoute(r Route) error {
	var p Problems
	checkRoutes(&Spec{Routes: []Route{r}}, &p)
	return p.Err("route " + r.Key())
}
