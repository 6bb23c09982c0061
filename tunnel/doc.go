// Package tunnel is amesh's HBONE: TCP connections carried as HTTP/2 CONNECT streams over
// mutual TLS 1.3 between SPIFFE identities, on port 15008, wire-compatible with Istio's ztunnel.
//
// A Server accepts HBONE on listeners that each present one workload's SVID (the pod whose
// listener accepted), verifies the client's SVID, authorizes each CONNECT and relays it to the
// destination. A Client dials HBONE through a pool keyed by (source identity, destination
// identity, destination address) and checks that the server proves exactly the expected
// identity. Every refusal carries a Reason and is counted.
//
// Ports (DESIGN §3): 15001 outbound, 15006 inbound plaintext, 15008 HBONE, 15000 admin,
// 15020 metrics, 15021 readiness.
package tunnel

// HBONEPort is the port HBONE listens on.
const HBONEPort = 15008
