package waypoint

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/amesh-dev/amesh/workload"
)

// dest is what a CONNECT's :authority names: a service's VIP and port, or a workload.
type dest struct {
	svc  *Service
	port uint16
	ep   Endpoint
}

// destination finds what authority names among what the waypoint fronts.
func (c *Config) destination(authority netip.AddrPort) (dest, error) {
	addr := authority.Addr().Unmap()
	for i := range c.Services {
		svc := &c.Services[i]
		if slices.Contains(svc.VIPs, addr) {
			if svc.targetPort(authority.Port()) == 0 {
				return dest{}, fmt.Errorf("service %s/%s has no port %d", svc.Namespace, svc.Name, authority.Port())
			}
			return dest{svc: svc, port: authority.Port()}, nil
		}
	}
	for _, w := range c.Workloads {
		if w.IP == addr {
			return dest{ep: w}, nil
		}
	}
	return dest{}, fmt.Errorf("%s is not a destination of waypoint %s/%s", authority, c.Namespace, c.Name)
}

// targetPort is the workload port of service port port, 0 if the service has none.
func (svc *Service) targetPort(port uint16) uint16 {
	for _, p := range svc.Ports {
		if p.Port == port {
			if p.TargetPort == 0 {
				return p.Port
			}
			return p.TargetPort
		}
	}
	return 0
}

// service finds a service the waypoint fronts or a backend of its routes.
func (c *Config) service(namespace, name string) *Service {
	for _, list := range [][]Service{c.Services, c.Backends} {
		for i := range list {
			if list[i].Namespace == namespace && list[i].Name == name {
				return &list[i]
			}
		}
	}
	return nil
}

// endpointByIP finds an endpoint the waypoint may send to.
func (c *Config) endpointByIP(ip netip.Addr) (Endpoint, bool) {
	ip = ip.Unmap()
	for _, list := range [][]Service{c.Services, c.Backends} {
		for _, svc := range list {
			for _, ep := range svc.Endpoints {
				if ep.IP == ip {
					return ep, true
				}
			}
		}
	}
	for _, w := range c.Workloads {
		if w.IP == ip {
			return w, true
		}
	}
	return Endpoint{}, false
}

// routesFor returns the routes attached to service namespace/name on port.
func (c *Config) routesFor(name, namespace string, port uint16) []workload.Route {
	var out []workload.Route
	for _, r := range c.Routes {
		if r.Namespace != namespace {
			continue
		}
		for _, p := range r.Parents {
			if p.Service == name && (p.Port == 0 || p.Port == port) {
				out = append(out, r)
				break
			}
		}
	}
	return out
}

// match picks the rule of routes for r as Gateway API orders matches: an Exact path over a
// prefix, a longer prefix over a shorter, a method over none, more header matches over fewer;
// then the route's order (by key) and the rule's. key names the route and rule.
func match(routes []workload.Route, r *http.Request) (rule workload.RouteRule, key string, ok bool) {
	type cand struct {
		exact                 bool
		prefix, method, heads int
		ri, rj                int
	}
	var best *cand
	better := func(a, b *cand) bool {
		if a.exact != b.exact {
			return a.exact
		}
		if a.prefix != b.prefix {
			return a.prefix > b.prefix
		}
		if a.method != b.method {
			return a.method > b.method
		}
		if a.heads != b.heads {
			return a.heads > b.heads
		}
		if a.ri != b.ri {
			return a.ri < b.ri
		}
		return a.rj < b.rj
	}
	for i, rt := range routes {
		for j, rl := range rt.Rules {
			ms := rl.Matches
			if len(ms) == 0 {
				ms = []workload.RouteMatch{{}} // every request, as prefix "/"
			}
			for _, m := range ms {
				if !matches(m, r) {
					continue
				}
				c := &cand{exact: m.PathType == workload.PathExact, heads: len(m.Headers), ri: i, rj: j}
				if !c.exact {
					c.prefix = len(strings.TrimSuffix(m.Path, "/"))
				}
				if m.Method != "" {
					c.method = 1
				}
				if best == nil || better(c, best) {
					best = c
				}
			}
		}
	}
	if best == nil {
		return workload.RouteRule{}, "", false
	}
	rt := routes[best.ri]
	return rt.Rules[best.rj], fmt.Sprintf("%s/%s#%d", rt.Namespace, rt.Name, best.rj), true
}

// matches reports whether m holds for r.
func matches(m workload.RouteMatch, r *http.Request) bool {
	path := r.URL.Path
	switch {
	case m.PathType == workload.PathExact:
		if path != m.Path {
			return false
		}
	case m.Path != "" && m.Path != "/":
		// Whole segments: /api matches /api and /api/x, not /apix.
		prefix := strings.TrimSuffix(m.Path, "/")
		if path != prefix && !strings.HasPrefix(path, prefix+"/") {
			return false
		}
	}
	if m.Method != "" && r.Method != m.Method {
		return false
	}
	for _, h := range m.Headers {
		if !slices.Contains(r.Header.Values(h.Name), h.Value) {
			return false
		}
	}
	return true
}

// weighted splits each rule's requests among its backends by weight, smoothly and exactly
// (nginx's smooth weighted round robin): over any run of total-weight requests each backend
// gets exactly its weight, so an 80/20 split is 800/200 of 1,000, not 800 ± 25 as a random
// pick would make it.
type weighted struct {
	mu      sync.Mutex
	current map[string][]int64
}

// pick returns the next backend of rule key; ok is false when every weight is 0.
func (w *weighted) pick(key string, backends []workload.RouteBackend) (workload.RouteBackend, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.current == nil {
		w.current = map[string][]int64{}
	}
	cur := w.current[key]
	if len(cur) != len(backends) {
		cur = make([]int64, len(backends))
		w.current[key] = cur
	}
	var total int64
	best := -1
	for i, b := range backends {
		if b.Weight <= 0 {
			continue
		}
		cur[i] += int64(b.Weight)
		total += int64(b.Weight)
		if best < 0 || cur[i] > cur[best] {
			best = i
		}
	}
	if best < 0 {
		return workload.RouteBackend{}, false
	}
	cur[best] -= total
	return backends[best], true
}
