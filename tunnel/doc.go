// Package tunnel is amesh's HBONE: TCP connections carried as HTTP/2 CONNECT streams over
// mutual TLS 1.3 between SPIFFE identities, on port 15008, wire-compatible with Istio's ztunnel.
//
// A Server accepts HBONE on listeners that each present one workload's SVID (the pod whose
// listener accepted), verifies the client's SVID, authorizes each CONNECT and relays it to the
// destination. A Client dials HBONE through a pool keyed by (source identity, destination
// identity, destination address) and checks that the server proves exactly the expected
// identity. Every refusal carries a Reason and is counted.
//
// The Server is the security boundary of every pod on its node, so everything a peer can make
// it hold has a budget (ServerConfig, "Budgets"): memory of queued data per stream and per
// source IP (charged by buffer capacity, not payload, with small frames coalesced), running
// stream handlers per connection, streams reset before their response (GOAWAY
// ENHANCE_YOUR_CALM, CVE-2023-44487), queued control frames (10,000), a write that makes no
// progress, idle and half-closed streams, connections per source IP, handshakes in progress,
// and the peer certificate's lifetime. With the defaults one hostile source IP costs at most
// ~113 MiB and one connection ~35 MiB (the arithmetic is on ServerConfig); set the agent's
// memory limit from that and the number of peers that may misbehave at once. attack_test.go
// is the attacker for each (AMESH_SOAK=1 for the full counts).
//
// Ports (DESIGN §3): 15001 outbound, 15006 inbound plaintext, 15008 HBONE, 15000 admin,
// 15020 metrics, 15021 readiness.
package tunnel

// HBONEPort is the port HBONE listens on.
const HBONEPort = 15008
