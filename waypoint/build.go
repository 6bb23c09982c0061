package waypoint

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/workload"
)

// Build derives what the waypoint namespace/name, whose pods present id, serves in st: the
// services and workloads that send their traffic through it, the routes attached to those
// services and the backends they name, and the policies. It is an error for namespace/name
// not to be a waypoint in st.
func Build(st *workload.State, namespace, name string, id spiffeid.ID) (Config, error) {
	wp := st.Service(namespace, name)
	if wp == nil {
		return Config{}, fmt.Errorf("waypoint: %s/%s: no such service in the state", namespace, name)
	}
	if wp.WaypointFor == workload.NotWaypoint {
		return Config{}, fmt.Errorf("waypoint: %s/%s: the service is not a waypoint (it sets no waypoint-for)", namespace, name)
	}
	cfg := Config{Name: name, Namespace: namespace, Identity: id, RootNamespace: st.RootNamespace()}
	fronted := map[string]bool{}
	for _, svc := range st.Services() {
		if got, err := st.ServiceWaypoint(svc); err == nil && got == wp {
			cfg.Services = append(cfg.Services, service(st, svc))
			fronted[svc.Key()] = true
		}
	}
	for _, w := range st.Workloads() {
		if got, err := st.WorkloadWaypoint(w); err == nil && got == wp {
			if ep, ok := endpoint(st, w); ok {
				cfg.Workloads = append(cfg.Workloads, ep)
			}
		}
	}
	backends := map[string]bool{}
	for _, r := range st.Routes() {
		attached := false
		for _, p := range r.Parents {
			attached = attached || fronted[r.Namespace+"/"+p.Service]
		}
		if !attached {
			continue
		}
		cfg.Routes = append(cfg.Routes, *r)
		for _, rule := range r.Rules {
			for _, b := range rule.Backends {
				key := r.Namespace + "/" + b.Service
				if svc := st.Service(r.Namespace, b.Service); svc != nil && !fronted[key] && !backends[key] {
					backends[key] = true
					cfg.Backends = append(cfg.Backends, service(st, svc))
				}
			}
		}
	}
	slices.SortFunc(cfg.Backends, func(a, b Service) int { return cmp.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	// The waypoint's own policies first: they are its L7 authorization; the others are the
	// destinations' L4 policies, which it applies to the original caller.
	for _, p := range st.PolicySet() {
		if len(p.TargetRefs) > 0 {
			cfg.Policies = append(cfg.Policies, p.Clone())
		}
	}
	for _, p := range st.PolicySet() {
		if len(p.TargetRefs) == 0 {
			cfg.Policies = append(cfg.Policies, p.Clone())
		}
	}
	return cfg, nil
}

// service converts svc with its ready (enrolled) endpoints.
func service(st *workload.State, svc *workload.Service) Service {
	s := Service{Name: svc.Name, Namespace: svc.Namespace, Hostname: svc.Name + "." + svc.Namespace + ".svc.cluster.local", VIPs: slices.Clone(svc.VIPs)}
	for _, p := range svc.Ports {
		s.Ports = append(s.Ports, Port{Port: p.Port, TargetPort: p.TargetPort})
	}
	for _, w := range st.Endpoints(svc) {
		if ep, ok := endpoint(st, w); ok {
			s.Endpoints = append(s.Endpoints, ep)
		}
	}
	return s
}

// endpoint is w as a destination of the waypoint: only a workload in the mesh, which its
// agent serves over HBONE (the waypoint sends nothing in plaintext).
func endpoint(st *workload.State, w *workload.Workload) (Endpoint, bool) {
	if !w.Enrolled() || len(w.IPs) == 0 {
		return Endpoint{}, false
	}
	id, err := w.ID(st.TrustDomain())
	if err != nil {
		return Endpoint{}, false
	}
	return Endpoint{UID: w.UID, Name: w.Name, Namespace: w.Namespace, IP: w.IPs[0], Identity: id, Labels: w.Labels}, true
}

// errNoRoute is a request no route matches (404, as Gateway API says).
var errNoRoute = errors.New("no route matches the request")
