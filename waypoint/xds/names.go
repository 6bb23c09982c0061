package xds

import (
	"fmt"

	"github.com/amesh-dev/amesh/tunnel"
)

// Listener and cluster names, as istiod names them for waypoints, so that tools reading an Envoy
// config dump (istioctl proxy-config) find what they expect.
const (
	// ConnectTerminate is the listener on :15008 that terminates HBONE.
	ConnectTerminate = "connect_terminate"
	// MainInternal is the internal listener (and the cluster that reaches it) holding one HTTP
	// filter chain per service VIP:port.
	MainInternal = "main_internal"
	// ConnectOriginate is the internal listener (and the ORIGINAL_DST cluster behind it) that
	// opens HBONE to the chosen endpoint.
	ConnectOriginate = "connect_originate"
)

// SDS secret names, Istio's: the waypoint's certificate and the roots it validates peers with.
const (
	SecretCertificate = "default"
	SecretRoots       = "ROOTCA"
)

// PeerPrincipalKey is the filter state object connect_terminate sets to the caller's SPIFFE ID
// and main_internal's RBAC reads (see the package doc).
const PeerPrincipalKey = "io.amesh.peer_principal"

// Well-known Envoy names this package relies on.
const (
	originalDstFilter      = "envoy.filters.listener.original_dst"
	originalDstLocalKey    = "envoy.filters.listener.original_dst.local_ip"
	originalDstRemoteKey   = "envoy.filters.listener.original_dst.remote_ip"
	internalListenerExt    = "envoy.bootstrap.internal_listener"
	internalUpstreamSocket = "envoy.transport_sockets.internal_upstream"
	spiffeValidator        = "envoy.tls.cert_validator.spiffe"
	stringObjectFactory    = "envoy.string"
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	invalidBackendCluster  = "amesh_invalid_backend"
)

// hbonePort is where HBONE listens, on the waypoint and on every destination's agent.
const hbonePort = tunnel.HBONEPort

// ClusterName is the name of the cluster for a service port, Istio's "outbound|<port>||<hostname>".
func ClusterName(hostname string, port uint16) string {
	return fmt.Sprintf("outbound|%d||%s", port, hostname)
}

// ChainName is the name of the main_internal filter chain for a service port, and of its route
// configuration, Istio's "inbound-vip|<port>|http|<hostname>".
func ChainName(hostname string, port uint16) string {
	return fmt.Sprintf("inbound-vip|%d|http|%s", port, hostname)
}
