package workload

import (
	"cmp"
	"fmt"
	"net/netip"

	"github.com/amesh-dev/amesh/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Node is a machine of the cluster, running one agent.
type Node struct {
	Name string
	// IP is the node's address; the state file requires it, a Kubernetes node whose pods have no
	// status.hostIP yet has none (invalid).
	IP netip.Addr
}

// Mode says whether a workload is in the mesh. The zero value is ModeAmbient: a workload is enrolled
// unless it opts out, as a pod of a namespace labelled amesh.io/dataplane-mode=ambient is.
type Mode uint8

// The dataplane modes.
const (
	ModeAmbient Mode = iota // enrolled: redirected, mTLS, policy
	ModeNone                // opted out (amesh.io/dataplane-mode=none): left alone
)

// String returns the name the state file uses: "ambient" or "none".
func (m Mode) String() string {
	switch m {
	case ModeAmbient:
		return "ambient"
	case ModeNone:
		return "none"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// InboundMode says what an enrolled workload accepts that does not come over HBONE. The zero value
// is InboundStrict.
type InboundMode uint8

// The inbound modes, PeerAuthentication's STRICT and PERMISSIVE.
const (
	InboundStrict     InboundMode = iota // mTLS (HBONE) only; plaintext is refused
	InboundPermissive                    // plaintext accepted too, on :15006, subject to policy
)

// String returns the name the state file uses: "strict" or "permissive".
func (m InboundMode) String() string {
	switch m {
	case InboundStrict:
		return "strict"
	case InboundPermissive:
		return "permissive"
	}
	return fmt.Sprintf("InboundMode(%d)", uint8(m))
}

// Workload is a pod. The *Workload values a State hands out are shared by every reader of that
// State and must not be modified.
type Workload struct {
	// UID identifies the workload across states; NewState sets it to "namespace/name" when empty.
	UID  string
	Name string
	// WorkloadName is the name of what runs the workload (its Deployment, StatefulSet, CronJob,
	// …) as Istio derives it from the pod's owner; the metrics' source_workload and
	// destination_workload. Name when empty (a bare pod): see Owner.
	WorkloadName   string
	Namespace      string
	ServiceAccount string
	// Node is the name of the node the workload runs on.
	Node string
	IPs  []netip.Addr
	// Netns is the path of the workload's network namespace (e.g. /run/netns/x or
	// /proc/<pid>/ns/net), needed by the agent of its node to enroll it; empty when unknown.
	Netns       string
	Mode        Mode
	InboundMode InboundMode
	Labels      map[string]string
	// Waypoint names the waypoint its traffic goes through (see Service.Waypoint).
	Waypoint string
	// AllowWaypointBypass lets mesh traffic in that skipped the workload's waypoints (as Istio
	// does by default). Unset, the workload's agent accepts traffic for a waypoint-covered port
	// only from the waypoint (State.WaypointsCovering).
	AllowWaypointBypass bool
	// ProbePorts are the ports the kubelet probes (httpGet, tcpSocket and grpc probes of the pod
	// spec). Only for these, plaintext from the workload's own node (HostIP) reaches the app even
	// under STRICT, as Istio ambient lets kubelet probes through.
	ProbePorts []uint16
	// HostIP is the IP of the workload's node as the pod sees its kubelet (status.hostIP); the
	// source address probes come from. Invalid when unknown.
	HostIP netip.Addr
}

// Owner returns WorkloadName, or Name for a workload that has none.
func (w *Workload) Owner() string { return cmp.Or(w.WorkloadName, w.Name) }

// ID returns the workload's SPIFFE ID in trust domain td.
func (w *Workload) ID(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	id, err := identity.WorkloadID(td, w.Namespace, w.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload: %s: %w", w.UID, err)
	}
	return id, nil
}

// Enrolled reports whether the workload is in the mesh (ModeAmbient).
func (w *Workload) Enrolled() bool { return w.Mode == ModeAmbient }

// AcceptsPlaintext reports whether the workload accepts inbound connections that do not come over
// HBONE (InboundPermissive).
func (w *Workload) AcceptsPlaintext() bool { return w.InboundMode == InboundPermissive }

// Service is a Kubernetes Service with virtual IPs. Its endpoints are the workloads of its namespace
// whose labels include its selector (see State.Endpoints).
type Service struct {
	Name      string
	Namespace string
	VIPs      []netip.Addr
	Ports     []ServicePort
	// Selector selects the endpoints; a service without a selector has none, as in Kubernetes.
	// Ignored when EndpointIPs is set.
	Selector map[string]string
	// EndpointIPs, when not nil, are the service's endpoints instead of Selector's: the ready
	// addresses of its EndpointSlices, as kube-proxy uses them. An address that is no workload's
	// is not an endpoint amesh can reach (the state knows no identity for it) and is left out.
	EndpointIPs []netip.Addr
	// Waypoint names the waypoint its traffic goes through: a service of its namespace whose
	// WaypointFor is set; empty for none, WaypointOptOut to refuse its namespace's.
	Waypoint string
	// WaypointFor makes the service a waypoint (its endpoints are the waypoint's pods) and says
	// which traffic it takes: addressed to services, to workloads, or both. Zero: not a
	// waypoint.
	WaypointFor WaypointTraffic
}

// WaypointTraffic is which traffic a waypoint takes, as Istio's istio.io/waypoint-for.
type WaypointTraffic uint8

// The kinds of waypoint.
const (
	NotWaypoint         WaypointTraffic = iota
	WaypointForService                  // traffic addressed to a service's VIP
	WaypointForWorkload                 // traffic addressed to a pod's IP
	WaypointForAll                      // both
	WaypointForNone                     // a waypoint that takes no traffic (Istio's "none")
)

// WaypointOptOut as a Waypoint name keeps a workload or service off its namespace's waypoint.
const WaypointOptOut = "none"

// String returns the label value: "service", "workload", "all", "none"; "" when not a waypoint.
func (t WaypointTraffic) String() string {
	switch t {
	case WaypointForService:
		return "service"
	case WaypointForWorkload:
		return "workload"
	case WaypointForAll:
		return "all"
	case WaypointForNone:
		return "none"
	}
	return ""
}

// ParseWaypointTraffic parses a label value (String's); ok is false for anything else.
func ParseWaypointTraffic(s string) (t WaypointTraffic, ok bool) {
	for t := WaypointForService; t <= WaypointForNone; t++ {
		if t.String() == s {
			return t, true
		}
	}
	return NotWaypoint, false
}

// forServices reports whether the waypoint takes traffic addressed to services.
func (t WaypointTraffic) forServices() bool { return t == WaypointForService || t == WaypointForAll }

// forWorkloads reports whether the waypoint takes traffic addressed to workloads.
func (t WaypointTraffic) forWorkloads() bool { return t == WaypointForWorkload || t == WaypointForAll }

// Key returns "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// ServicePort maps a port of the service's VIPs to a port of its endpoints.
type ServicePort struct {
	Port uint16
	// TargetPort is the endpoints' port; NewState sets it to Port when zero.
	TargetPort uint16
}
