// Package bench is the side-by-side benchmark behind `ameshctl bench` and `make bench-suite`:
// in ONE run, on a two-node netns lab it builds, it measures direct pod→pod (no mesh), amesh within a
// node (each same-node mode: kernel short-circuit, splice, hbone), amesh across nodes (HBONE), and
// the L4 mTLS peers users would otherwise deploy (a ghostunnel pair and a stunnel pair between the
// same two unmeshed pods, with certificates from the built-in CA). For each: 1 KiB request/response
// at a fixed 1,000 RPS and at max rate with p50/p90/p99/p99.9 (fortio as a library), one- and
// four-stream throughput (iperf3), new connections per second, and for amesh the agent's CPU per
// 1,000 RPS and its RSS. For L7, HTTP request/response (1 KiB, one keep-alive connection) across
// nodes: direct, through amesh to a service VIP without a waypoint, and to one whose service
// names a waypoint (amesh-waypoint in its own pod; skipped when the binary is absent), at the same
// rates and percentiles but without throughput or connection rate, since the waypoint carries
// HTTP only. It writes a Markdown table with ratios to direct and to the best peer, a
// JSON file with everything, and a PNG of latency percentiles and throughput per scenario.
//
// cost.go is the "cost per node" section: N pods a node meshed by one agent per node or by a
// ghostunnel pair per pod, the proxies' CPU and RSS per node side by side (cost.md/json/png).
// cluster.go runs the request/response and connection clients in pods of a running cluster
// (`ameshctl bench --kubeconfig`).
//
// The load generator runs inside the source pod's netns: the suite re-executes its own command
// there (`... rr|cps|http ...`), since sockets belong to the netns of the thread that made them.
// Every run is bounded in time; all traffic stays inside the lab. Needs root.
//
// suite.go builds the lab, starts the agents and runs the scenarios; client.go holds the load
// clients it re-executes inside pods; peers.go the ghostunnel and stunnel pairs; report.go and
// plot.go the outputs.
//
// # Imports
//
// bench is linked into the ameshctl binary, so it is not test code and it lives outside test/.
// Non-test code never imports test/..., with one exception: bench imports test/lab, the netns lab
// it builds and measures. No other package outside test/ imports test/lab, and bench imports
// nothing else under test/.
package bench
