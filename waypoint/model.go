// Package waypoint is amesh's L7 proxy for destinations that ask for one: what a waypoint
// serves (Config, derived from the cluster state), the Go waypoint that serves it over HBONE
// (HTTP authorization and routing per request), and, in waypoint/xds, the same Config as the
// Envoy resources Istio generates for an Envoy waypoint.
package waypoint

import (
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/workload"
)

// Config is everything one waypoint needs to serve its traffic: a pure function of the state
// (see Build), so the Go waypoint and the xDS translation serve the same thing.
type Config struct {
	// Name and Namespace are the waypoint's Service.
	Name, Namespace string
	// Identity is the waypoint's own SPIFFE ID (its pods' service account): what it presents to
	// callers and to destinations.
	Identity spiffeid.ID
	// Services are the services whose traffic this waypoint receives (they use it and it is for
	// service or all traffic), sorted by namespace and name.
	Services []Service
	// Workloads are the workloads whose pod-addressed traffic it receives (they use it and it is
	// for workload or all traffic), sorted by namespace and name.
	Workloads []Endpoint
	// Policies are the waypoint's authorization: the policies whose TargetRefs name it, first,
	// then every other policy, which the waypoint evaluates at L4 for each destination workload
	// against the original caller (the destination's agent trusts its waypoint for that, see
	// DESIGN §7), with RootNamespace.
	Policies      []policy.Policy
	RootNamespace string
	// Routes are the routes attached to one of Services (Gateway API HTTPRoutes of the GAMMA
	// form, parentRef kind Service, as the subset workload.Route holds), sorted by key.
	Routes []workload.Route
	// Backends are the services Routes send to that are not among Services (a route to
	// reviews-v2 from reviews), sorted by namespace and name.
	Backends []Service
}

// Service is a service the waypoint fronts.
type Service struct {
	Name, Namespace string
	// Hostname is the service's DNS name, "<name>.<namespace>.svc.cluster.local".
	Hostname string
	VIPs     []netip.Addr
	Ports    []Port
	// Endpoints are the service's ready workloads.
	Endpoints []Endpoint
}

// Port is a service port and the workload port it goes to.
type Port struct {
	Port, TargetPort uint16
}

// Endpoint is a workload the waypoint may send to: over HBONE to IP:15008, proving Identity.
type Endpoint struct {
	UID, Name, Namespace string
	IP                   netip.Addr
	Identity             spiffeid.ID
	Labels               map[string]string
}
