// Package spire runs a real SPIRE server and SPIRE agents (v1.13.3, built by `make spire-bins`
// into the cache) for the tests: sqlite datastore, join-token node attestation, the unix
// workload attestor, and on each agent the admin socket with the Delegated Identity API, the
// amesh agent of the node registered as its authorized delegate. Everything listens on
// loopback or unix sockets in the run's directory.
package spire
