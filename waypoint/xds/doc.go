// Package xds translates a waypoint.Config into the Envoy resources istiod generates for an
// Envoy waypoint, using upstream Envoy extensions only, and serves them to Envoy over ADS
// (github.com/envoyproxy/go-control-plane). It is the Envoy alternative to amesh's Go waypoint:
// both serve the same Config (DESIGN §7).
//
// # Layout
//
// One HBONE connection arrives on a real listener and crosses two internal listeners
// (Envoy's envoy.bootstrap.internal_listener, which Bootstrap enables):
//
//	caller's agent ──HBONE (mTLS 1.3, h2 CONNECT :authority=VIP:port)──▶ connect_terminate :15008
//	    CONNECT route → cluster main_internal (STATIC, internal address)
//	                                      ▼
//	main_internal (internal listener; original_dst restores VIP:port from the CONNECT's :authority)
//	    one filter chain per service VIP:port: HCM → RBAC (DENY, then ALLOW layers) → router,
//	    routes over RDS ("inbound-vip|<port>|http|<hostname>")
//	    → cluster outbound|<port>||<hostname> (EDS; endpoints are internal addresses of
//	      connect_originate carrying the endpoint's IP:targetPort)
//	                                      ▼
//	connect_originate (internal listener; original_dst restores endpoint IP:targetPort)
//	    tcp_proxy, tunneling_config hostname %DOWNSTREAM_LOCAL_ADDRESS%
//	    → cluster connect_originate (ORIGINAL_DST, upstream_port_override 15008, h2, mTLS 1.3)
//	                                      ▼
//	destination's agent ◀──HBONE (CONNECT :authority=endpoint IP:targetPort)
//
// Certificates come over SDS on the same ADS stream: "default" (the waypoint's SVID) and
// "ROOTCA" (a validation context using the envoy.tls.cert_validator.spiffe validator with one
// bundle per accepted trust domain), the names Istio uses.
//
// # The caller's identity in main_internal
//
// main_internal's downstream is an internal connection without TLS, so RBAC's
// authenticated.principal_name never matches there. connect_terminate therefore copies the
// verified peer URI SAN (%DOWNSTREAM_PEER_URI_SAN%) into the read-only filter state object
// PeerPrincipalKey, shared ONCE with the upstream (internal) connection, and main_internal's
// RBAC principals match that filter state (istiod does the same with io.istio.peer_principal).
// Because %DOWNSTREAM_PEER_URI_SAN% joins several URI SANs with ",", the first RBAC filter of
// every chain denies any request whose carried identity is absent or is not exactly one
// spiffe:// URI, so a certificate with several URI SANs cannot slip past a DENY rule.
//
// # Failing closed
//
// Input that cannot be expressed is reported as a Problem and translated so that it denies more,
// never less: an untranslatable part of a DENY rule is dropped (the rule then matches more
// requests), an ALLOW rule with an untranslatable part is dropped (it allows nothing; the ALLOW
// filter stays even when empty, denying every request). See Resources.
package xds
