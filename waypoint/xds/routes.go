package xds

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/amesh-dev/amesh/waypoint"
	"github.com/amesh-dev/amesh/workload"
)

// backend is a service port a chain's routes may send to: what the destinations' L4 policies
// are decided against.
type backend struct {
	svc  *waypoint.Service
	port uint16 // the service port
}

// routeConfig is a service port's route configuration (served over RDS): the rules of the
// routes attached to it, ordered as Gateway API orders matches (as the Go waypoint does), or,
// with none, one route sending everything to the service's own cluster. It also returns the
// backends those routes can reach.
func (b *builder) routeConfig(svc *waypoint.Service, port waypoint.Port) (*routev3.RouteConfiguration, []backend) {
	var entries []routeEntry
	var reach []backend
	attached := false
	for i, r := range b.cfg.Routes {
		if !attaches(r, svc, port.Port) {
			continue
		}
		attached = true
		e, bs := b.route(i, r)
		entries = append(entries, e...)
		for _, be := range bs {
			if !slices.Contains(reach, be) {
				reach = append(reach, be)
			}
		}
	}
	var routes []*routev3.Route
	if !attached {
		reach = []backend{{svc: svc, port: port.Port}}
		routes = []*routev3.Route{{
			Name:  "default",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterName(svc.Hostname, port.Port)},
				// No timeout: Envoy's default is 15s, the Go waypoint has none, istiod sets none.
				Timeout: durationpb.New(0),
			}},
		}}
	} else {
		// Gateway API: a request no rule matches gets 404, which is what Envoy answers when no
		// route matches.
		slices.SortStableFunc(entries, routeEntry.compare)
		for _, e := range entries {
			routes = append(routes, e.route)
		}
	}
	return &routev3.RouteConfiguration{
		Name: ChainName(svc.Hostname, port.Port),
		VirtualHosts: []*routev3.VirtualHost{{
			// The chain already chose the service: the Host header plays no part.
			Name:    fmt.Sprintf("inbound|http|%d", port.Port),
			Domains: []string{"*"},
			Routes:  routes,
		}},
		ValidateClusters: wrapperspb.Bool(false),
	}, reach
}

// attaches reports whether r is attached to svc on port: a parent names it (Port 0 meaning
// every port) and, as the Go waypoint requires, r is in svc's namespace.
func attaches(r workload.Route, svc *waypoint.Service, port uint16) bool {
	if r.Namespace != svc.Namespace {
		return false
	}
	for _, p := range r.Parents {
		if p.Service == svc.Name && (p.Port == 0 || p.Port == port) {
			return true
		}
	}
	return false
}

// routeEntry is one Envoy route (one match of one rule) with what Gateway API orders it by:
// an Exact path over a prefix, a longer prefix over a shorter, a method over none, more header
// matches over fewer; then the route's order in Config.Routes (sorted by key) and the rule's.
type routeEntry struct {
	route            *routev3.Route
	exact            bool
	prefixLen        int
	method           bool
	headers          int
	routeIdx, ruleIx int
}

func (a routeEntry) compare(b routeEntry) int {
	if a.exact != b.exact {
		if a.exact {
			return -1
		}
		return 1
	}
	if c := cmp.Compare(b.prefixLen, a.prefixLen); c != 0 {
		return c
	}
	if a.method != b.method {
		if a.method {
			return -1
		}
		return 1
	}
	return cmp.Or(
		cmp.Compare(b.headers, a.headers),
		cmp.Compare(a.routeIdx, b.routeIdx),
		cmp.Compare(a.ruleIx, b.ruleIx),
	)
}

// route translates the rules of r (Config.Routes[idx]), one entry per match, and returns the
// backends it can send to.
func (b *builder) route(idx int, r workload.Route) ([]routeEntry, []backend) {
	var out []routeEntry
	var reach []backend
	for i, rule := range r.Rules {
		at := fmt.Sprintf("rules[%d]", i)
		action, bs := b.ruleAction(r, at, rule)
		reach = append(reach, bs...)
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []workload.RouteMatch{{}} // every request, as prefix "/"
		}
		for j, m := range matches {
			e, err := translateMatch(m)
			if err != nil {
				b.problem("route "+r.Key(), fmt.Sprintf("%s.matches[%d]: %v: the match is left out", at, j, err))
				continue
			}
			e.routeIdx, e.ruleIx = idx, i
			e.route.Name = fmt.Sprintf("%s/%s.matches[%d]", r.Key(), at, j)
			e.route.Action = action
			out = append(out, e)
		}
	}
	return out, reach
}

// translateMatch is one route match as an Envoy RouteMatch.
func translateMatch(m workload.RouteMatch) (routeEntry, error) {
	rm := &routev3.RouteMatch{}
	e := routeEntry{route: &routev3.Route{Match: rm}}
	path := m.Path
	if path == "" {
		path = "/"
	}
	if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, "?#") {
		return e, fmt.Errorf("path %q must start with / and hold no query or fragment", m.Path)
	}
	switch m.PathType {
	case workload.PathExact:
		e.exact = true
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: path}
	case workload.PathPrefix:
		// Gateway API prefixes match whole segments ("/api" matches "/api" and "/api/x", not
		// "/apix") and ignore a trailing slash: Envoy's path_separated_prefix, which wants none.
		prefix := strings.TrimSuffix(path, "/")
		e.prefixLen = len(prefix)
		if prefix == "" {
			rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		} else if strings.HasSuffix(prefix, "/") {
			return e, fmt.Errorf("path prefix %q ends with more than one /", m.Path)
		} else {
			rm.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: prefix}
		}
	default:
		return e, fmt.Errorf("path match type %d is not supported (Exact and PathPrefix are)", m.PathType)
	}
	for k, h := range m.Headers {
		if !headerName.MatchString(h.Name) {
			return e, fmt.Errorf("headers[%d]: %q is not a header name", k, h.Name)
		}
		rm.Headers = append(rm.Headers, exactHeader(strings.ToLower(h.Name), h.Value))
	}
	e.headers = len(m.Headers)
	if m.Method != "" {
		if !methodToken.MatchString(m.Method) {
			return e, fmt.Errorf("%q is not an HTTP method", m.Method)
		}
		rm.Headers = append(rm.Headers, exactHeader(":method", m.Method))
		e.method = true
	}
	return e, nil
}

func exactHeader(name, value string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{
		Name: name,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value},
		}},
	}
}

// ruleAction is the action of a rule's routes: its backends split by weight, or 500 when it
// sends nowhere, and the backends it can reach.
func (b *builder) ruleAction(r workload.Route, at string, rule workload.RouteRule) (*routev3.Route_Route, []backend) {
	action := &routev3.RouteAction{
		// Gateway API: the share of requests sent to an invalid backend gets 500.
		ClusterNotFoundResponseCode: routev3.RouteAction_INTERNAL_SERVER_ERROR,
		Timeout:                     durationpb.New(max(rule.Timeout, 0)),
	}
	var weighted []*routev3.WeightedCluster_ClusterWeight
	var reach []backend
	for k, be := range rule.Backends {
		if be.Weight <= 0 {
			continue
		}
		cluster := invalidBackendCluster
		if svc, ok := b.backend(r.Namespace, be); ok {
			cluster = ClusterName(svc.Hostname, be.Port)
			reach = append(reach, backend{svc: svc, port: be.Port})
		} else {
			b.problem("route "+r.Key(), fmt.Sprintf("%s.backendRefs[%d]: service %s/%s port %d is unknown to the waypoint: its share of the requests gets 500",
				at, k, r.Namespace, be.Service, be.Port))
		}
		weighted = append(weighted, &routev3.WeightedCluster_ClusterWeight{Name: cluster, Weight: wrapperspb.UInt32(uint32(be.Weight))})
	}
	switch len(weighted) {
	case 0:
		b.problem("route "+r.Key(), at+": sends nowhere (no backendRefs with a weight above 0): the rule answers 500")
		// No cluster of that name: every request gets ClusterNotFoundResponseCode.
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: invalidBackendCluster}
	case 1:
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: weighted[0].Name}
	default:
		action.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: weighted}}
	}
	return &routev3.Route_Route{Route: action}, reach
}

// backend finds the service port a route backend names: among the services the waypoint fronts
// and the other backends of its routes (Config.Backends), in the route's namespace.
func (b *builder) backend(namespace string, be workload.RouteBackend) (*waypoint.Service, bool) {
	for _, list := range [][]waypoint.Service{b.cfg.Services, b.cfg.Backends} {
		for i := range list {
			svc := &list[i]
			if svc.Namespace != namespace || svc.Name != be.Service {
				continue
			}
			for _, p := range svc.Ports {
				if p.Port == be.Port {
					return svc, true
				}
			}
			return nil, false
		}
	}
	return nil, false
}
