package workload

import (
	"errors"
	"fmt"
	"slices"
)

// Waypoints (DESIGN §7). A service or workload names its waypoint (Waypoint, inherited from its
// namespace by the feeders), which is a Service of the same namespace with WaypointFor set; the
// waypoint's pods are that Service's endpoints. The functions here decide which waypoint, if
// any, a connection must go through, and are pure functions of the State.

// ErrWaypoint marks a waypoint reference that does not resolve: the traffic it covers must be
// refused, never sent direct.
var ErrWaypoint = errors.New("waypoint does not resolve")

// ServiceWaypoint returns the waypoint that traffic addressed to svc (its VIP) goes through,
// nil for none: svc names none or opts out, the waypoint does not take service traffic, or svc
// is itself a waypoint. A name that does not resolve is an error wrapping ErrWaypoint.
func (s *State) ServiceWaypoint(svc *Service) (*Service, error) {
	if svc == nil || svc.WaypointFor != NotWaypoint {
		return nil, nil
	}
	wp, err := s.waypointNamed(svc.Namespace, svc.Waypoint)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", svc.Key(), err)
	}
	if wp == nil || !wp.WaypointFor.forServices() {
		return nil, nil
	}
	return wp, nil
}

// WorkloadWaypoint returns the waypoint that traffic addressed to w (its IP) goes through, nil
// for none: w names none or opts out, the waypoint does not take workload traffic, or w is a
// waypoint's pod. A name that does not resolve is an error wrapping ErrWaypoint.
func (s *State) WorkloadWaypoint(w *Workload) (*Service, error) {
	w = s.own(w)
	if w == nil || s.WaypointOf(w) != nil {
		return nil, nil
	}
	wp, err := s.waypointNamed(w.Namespace, w.Waypoint)
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", w.UID, err)
	}
	if wp == nil || !wp.WaypointFor.forWorkloads() {
		return nil, nil
	}
	return wp, nil
}

// WaypointOf returns the waypoint w is a pod of, nil when it is none's: the first of its
// services, by key, that is a waypoint. Traffic from a waypoint is never sent back to a
// waypoint: it is what the waypoint forwards.
func (s *State) WaypointOf(w *Workload) *Service {
	for _, svc := range s.ServicesOf(w) {
		if svc.WaypointFor != NotWaypoint {
			return svc
		}
	}
	return nil
}

// ServicesOf returns the services w (this state's workload of its UID) is an endpoint of,
// sorted by key: those whose EndpointIPs list one of its IPs, and those whose selector
// selects it.
func (s *State) ServicesOf(w *Workload) []*Service {
	if w == nil {
		return nil
	}
	o := s.WorkloadByUID(w.UID)
	if o == nil {
		return nil
	}
	var keys []string
	for _, ip := range o.IPs {
		keys = append(keys, getIP(s.listedAt, ip)...)
	}
	for k := range entries(s.selectors, o.Namespace+"/") {
		if svc := get(s.byKey, k); svc != nil && selects(svc.Selector, o.Labels) {
			keys = append(keys, svc.Key())
		}
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	out := make([]*Service, 0, len(keys))
	for _, k := range keys {
		out = append(out, get(s.byKey, k))
	}
	return out
}

// own returns this state's workload of w's UID: callers may hold a *Workload of an earlier
// state (an enrolled pod keeps the one it was enrolled with), and the indexes are this
// state's. w itself when this state has no such UID.
func (s *State) own(w *Workload) *Workload {
	if w == nil {
		return nil
	}
	if o := s.WorkloadByUID(w.UID); o != nil {
		return o
	}
	return w
}

// WaypointsCovering returns the waypoints through which mesh traffic to port (a workload port)
// of w must come: w's own workload waypoint, and the service waypoint of every service that
// sends to w on that port. Traffic for such a port from any other identity bypassed the
// waypoint. An error (wrapping ErrWaypoint) means a covering reference does not resolve: the
// caller refuses the traffic.
func (s *State) WaypointsCovering(w *Workload, port uint16) ([]*Service, error) {
	w = s.own(w)
	var out []*Service
	add := func(wp *Service) {
		for _, have := range out {
			if have == wp {
				return
			}
		}
		out = append(out, wp)
	}
	wp, err := s.WorkloadWaypoint(w)
	if err != nil {
		return nil, err
	}
	if wp != nil {
		add(wp)
	}
	for _, svc := range s.ServicesOf(w) {
		if !svc.targets(port) {
			continue
		}
		wp, err := s.ServiceWaypoint(svc)
		if err != nil {
			return nil, err
		}
		if wp != nil {
			add(wp)
		}
	}
	return out, nil
}

// targets reports whether one of svc's ports sends to workload port port.
func (svc *Service) targets(port uint16) bool {
	for _, p := range svc.Ports {
		if p.TargetPort == port {
			return true
		}
	}
	return false
}

// WaypointErrors returns every waypoint reference of the state that does not resolve, for the
// feeders to report: the traffic each covers is refused until it is fixed.
func (s *State) WaypointErrors() []error {
	var errs []error
	for _, svc := range s.Services() {
		if _, err := s.ServiceWaypoint(svc); err != nil {
			errs = append(errs, err)
		}
	}
	for _, w := range s.Workloads() {
		if _, err := s.WorkloadWaypoint(w); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// waypointNamed resolves a reference to a waypoint of namespace ns: nil for none.
func (s *State) waypointNamed(ns, name string) (*Service, error) {
	if name == "" || name == WaypointOptOut {
		return nil, nil
	}
	return waypointRef(get(s.byKey, ns+"/"+name), ns, name)
}

// waypointRef checks that wp, found under ns/name (nil if not found), is a waypoint.
func waypointRef(wp *Service, ns, name string) (*Service, error) {
	switch {
	case wp == nil:
		return nil, fmt.Errorf("%w: waypoint %s/%s: no such service", ErrWaypoint, ns, name)
	case wp.WaypointFor == NotWaypoint:
		return nil, fmt.Errorf("%w: waypoint %s/%s: the service is not a waypoint (it sets no waypoint-for)", ErrWaypoint, ns, name)
	}
	return wp, nil
}

// CheckWaypointReferences records in p every waypoint reference of spec that does not resolve,
// at its item: the state file rejects such a file whole (with the line), while the Kubernetes
// feeder keeps the objects and reports State.WaypointErrors, since one bad label must not
// freeze the cluster's state.
func CheckWaypointReferences(spec *Spec, p *Problems) {
	byKey := make(map[string]*Service, len(spec.Services))
	for i := range spec.Services {
		byKey[spec.Services[i].Key()] = &spec.Services[i]
	}
	check := func(section string, i int, what, ns, name string) {
		if name == "" || name == WaypointOptOut {
			return
		}
		if _, err := waypointRef(byKey[ns+"/"+name], ns, name); err != nil {
			p.Add(section, i, "waypoint", what, err)
		}
	}
	for i, w := range spec.Workloads {
		check(SectionWorkloads, i, "workload "+w.Namespace+"/"+w.Name, w.Namespace, w.Waypoint)
	}
	for i, svc := range spec.Services {
		if svc.WaypointFor == NotWaypoint {
			check(SectionServices, i, "service "+svc.Key(), svc.Namespace, svc.Waypoint)
		}
	}
}
