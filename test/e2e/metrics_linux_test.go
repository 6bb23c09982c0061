package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/test/lab"
)

// metricsAddr is where the lab's agents serve metrics, inside their node's netns.
const metricsAddr = "127.0.0.1:15020"

// TestMetrics: a known sequence of connections gives exactly those values of ztunnel's
// metrics, read from a scrape of each agent in the exposition format: opened, closed and
// bytes both ways on each path, failures with their response flags, each counted by the
// reporter(s) that served it; and 100 more connections between the same workloads add no
// series.
func TestMetrics(t *testing.T) {
	c := newCluster(t, "--same-node", "splice", "--metrics-addr", metricsAddr)
	echo := func(from, to string, size int) {
		t.Helper()
		echoSized(t, c.lab.Pod(from), net.JoinHostPort(c.lab.Pod(to).IP.String(), lab.EchoPort), size)
	}
	refused := func(from, addr string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := c.lab.Pod(from).Dial(ctx, addr)
		if err == nil {
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil {
			t.Fatalf("%s -> %s: served, want refused", from, addr)
		}
	}
	echo("web", "api2", 1000)                                                      // hbone
	echo("web", "api1", 2000)                                                      // splice
	echo("web", "legacy", 3000)                                                    // passthrough
	echo("plain", "perm", 4000)                                                    // plaintext into a PERMISSIVE pod
	refused("nosy", net.JoinHostPort(c.lab.Pod("api2").IP.String(), lab.EchoPort)) // denied by api-allow-web
	refused("web", net.JoinHostPort(c.lab.Pod("other").IP.String(), "9999"))       // nothing listens
	badCertificate(t, c.lab.Node("node1"), netip.AddrPortFrom(c.lab.Pod("api2").IP, 15008))

	type want struct {
		node, metric string
		labels       map[string]string
		value        float64
	}
	l := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	const web, api = "spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/api"
	hbone := l("source_workload", "web", "destination_workload", "api2", "source_principal", web, "destination_principal", api,
		"connection_security_policy", "mutual_tls", "source_app", "web", "destination_app", "api", "destination_canonical_service", "api",
		"source_cluster", "Kubernetes", "request_protocol", "tcp", "response_flags", "-")
	with := func(m map[string]string, kv ...string) map[string]string {
		out := l(kv...)
		for k, v := range m {
			if _, ok := out[k]; !ok {
				out[k] = v
			}
		}
		return out
	}
	wants := []want{
		{"node1", "istio_tcp_connections_opened_total", with(hbone, "reporter", "source"), 1},
		{"node1", "istio_tcp_connections_closed_total", with(hbone, "reporter", "source"), 1},
		{"node1", "istio_tcp_received_bytes_total", with(hbone, "reporter", "source"), 1000},
		{"node1", "istio_tcp_sent_bytes_total", with(hbone, "reporter", "source"), 1000},
		{"node2", "istio_tcp_connections_opened_total", with(hbone, "reporter", "destination"), 1},
		{"node2", "istio_tcp_received_bytes_total", with(hbone, "reporter", "destination"), 1000},
		{"node2", "istio_tcp_sent_bytes_total", with(hbone, "reporter", "destination"), 1000},
		{"node2", "istio_tcp_sockets_open", with(hbone, "reporter", "destination"), 0},
		{"node1", "istio_tcp_received_bytes_total", l("reporter", "source", "destination_workload", "api1", "connection_security_policy", "unknown"), 2000},
		{"node1", "istio_tcp_sent_bytes_total", l("reporter", "destination", "destination_workload", "api1"), 2000},
		{"node1", "istio_tcp_connections_closed_total", l("reporter", "destination", "destination_workload", "api1"), 1},
		{"node1", "istio_tcp_received_bytes_total", l("reporter", "source", "destination_workload", "legacy", "destination_principal", "unknown"), 3000},
		{"node2", "istio_tcp_received_bytes_total", l("reporter", "destination", "destination_workload", "perm", "source_principal", "unknown"), 4000},
		{"node2", "istio_tcp_connections_failed_total", l("reporter", "destination", "source_workload", "nosy", "destination_workload", "api2", "response_flags", "DENY"), 1},
		{"node1", "istio_tcp_connections_failed_total", l("reporter", "source", "source_workload", "nosy", "destination_workload", "api2", "response_flags", "DENY"), 1},
		{"node2", "istio_tcp_connections_failed_total", l("reporter", "destination", "destination_workload", "other", "response_flags", "CONNECT"), 1},
		{"node1", "istio_tcp_connections_failed_total", l("reporter", "source", "destination_workload", "other", "response_flags", "CONNECT"), 1},
		{"node1", "amesh_connections_total", l("direction", "outbound", "path", "splice", "result", "ok"), 1},
		{"node2", "amesh_refusals_total", l("reason", "denied"), 1},
		{"node1", "istio_build", l("component", "ztunnel"), 1},
		{"node2", "amesh_hbone_server_refusals_total", l("reason", "untrusted_cert"), 1},
		// amesh's own: node1 enrolled web, api1 and nosy (plain is not in the mesh), each
		// enrollment timed; node2's HBONE server refused nosy once (denied).
		{"node1", "amesh_enrolled_pods", l(), 3},
		{"node1", "amesh_ebpf_map_entries", l("map", "enrolled"), 3},
		{"node1", "amesh_ebpf_map_capacity", l("map", "enrolled"), 4096},
		{"node1", "amesh_enrollment_failures", l(), 0},
		{"node1", "amesh_netns_ambiguous_pods", l(), 0},
		{"node1", "amesh_netns_unresolved_pods", l(), 0},
		{"node1", "amesh_identity_source_ready", l("source", "builtin"), 1},
		{"node1", "amesh_identities", l("state", "available"), 3},
		{"node1", "amesh_identities", l("state", "unavailable"), 0},
		{"node1", "amesh_enrollment_duration_seconds", l(), 3},
		{"node2", "amesh_hbone_server_refusals_total", l("reason", "denied"), 1},
		{"node1", "amesh_hbone_client_refusals_total", l("reason", "denied"), 1},
		// node1's HBONE connections: web's to api2 and to other, nosy's to api2 (one per
		// source identity, source IP and destination), each handshake timed.
		{"node1", "amesh_hbone_handshake_duration_seconds", l(), 3},
		{"node1", "amesh_hbone_pool_connections", l(), 3},
	}
	for _, w := range wants {
		name := fmt.Sprintf("%s %s%v", w.node, w.metric, w.labels)
		var got float64
		var found bool
		// The counters move when each connection's relay ends, just after the client's close.
		deadline := time.Now().Add(3 * time.Second)
		for {
			fams := scrape(t, c.lab.Node(w.node))
			got, found = sum(fams, w.metric, w.labels)
			if found && got == w.value {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s = %v (found %v), want %v; the metric's series:\n%s", name, got, found, w.value, dump(fams[w.metric]))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// Every identity of node1's pods has a certificate whose expiry is in the future; the eBPF
	// programs counted captures.
	fams := scrape(t, c.lab.Node("node1"))
	for _, id := range []string{web, api, "spiffe://cluster.local/ns/shop/sa/nosy"} {
		if v, ok := sum(fams, "amesh_certificate_expiration_timestamp_seconds", l("identity", id)); !ok || v < float64(time.Now().Unix()) {
			t.Errorf("certificate expiry of %s: %v (found %v), want a time ahead", id, v, ok)
		}
	}
	if v, ok := sum(fams, "amesh_ebpf_events_total", l()); !ok || v == 0 {
		t.Errorf("amesh_ebpf_events_total: %v (found %v), want the programs' counts", v, ok)
	}

	// Prometheus' own linter on the live scrape.
	t.Run("promtool check metrics", func(t *testing.T) {
		promtool := os.Getenv("AMESH_PROMTOOL")
		if promtool == "" {
			home, _ := os.UserHomeDir()
			promtool = filepath.Join(home, ".cache", "amesh", "prometheus", "usr", "bin", "promtool")
		}
		if _, err := os.Stat(promtool); err != nil {
			if testenv.InCI() {
				t.Fatalf("no promtool at %s (make deps unpacks it)", promtool)
			}
			t.Skipf("SKIPPED LOUDLY: no promtool at %s; `make promtool` unpacks it", promtool)
		}
		for _, n := range []string{"node1", "node2"} {
			cmd := exec.Command(promtool, "check", "metrics")
			cmd.Stdin = bytes.NewReader(scrapeRaw(t, c.lab.Node(n)))
			if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Errorf("promtool check metrics on %s's scrape: %v\n%s", n, err, out)
			}
		}
	})

	// Cardinality: 1,000 connections among six workloads (each pair's first one makes its
	// series) add no series: no label varies per connection, address or port.
	pairs := []struct{ from, to string }{{"web", "api2"}, {"web", "other"}, {"nosy", "other"}, {"api1", "other"}, {"nosy", "web"}, {"api1", "perm"}}
	for _, p := range pairs {
		echo(p.from, p.to, 10)
	}
	closedOn1 := func() float64 {
		v, _ := sum(scrape(t, c.lab.Node("node1")), "istio_tcp_connections_closed_total", l("reporter", "source"))
		return v
	}
	// 9 on node1 as source: the hbone, splice and passthrough ones above, and these six.
	testenv.WaitFor(t, "the first connection of each pair counted", 3*time.Second, func() bool { return closedOn1() == 9 })
	before := []int{series(scrape(t, c.lab.Node("node1"))), series(scrape(t, c.lab.Node("node2")))}
	base := closedOn1()
	const more = 1000
	work := make(chan int, more)
	for i := range more {
		work <- i
	}
	close(work)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				p := pairs[i%len(pairs)]
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				conn, err := c.lab.Pod(p.from).Dial(ctx, net.JoinHostPort(c.lab.Pod(p.to).IP.String(), lab.EchoPort))
				cancel()
				if err == nil {
					err = roundTrip(conn)
					conn.Close()
				}
				if err != nil {
					t.Errorf("%s -> %s #%d: %v", p.from, p.to, i, err) // Errorf: not the test's goroutine
				}
			}
		})
	}
	wg.Wait()
	testenv.WaitFor(t, "the 1,000 connections counted", 10*time.Second, func() bool { return closedOn1() == base+more })
	after := []int{series(scrape(t, c.lab.Node("node1"))), series(scrape(t, c.lab.Node("node2")))}
	t.Logf("istio_tcp series on node1, node2: %v before, %v after 1,000 more connections", before, after)
	if after[0] != before[0] || after[1] != before[1] {
		t.Errorf("1,000 connections between the same workloads took the istio_tcp series from %v to %v: a label varies per connection", before, after)
	}

	// A state file that does not parse is rejected whole, and counted.
	if err := os.WriteFile(c.state, []byte("nodes: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"node1", "node2"} {
		testenv.WaitFor(t, n+" counting the rejected state file", 10*time.Second, func() bool {
			v, _ := sum(scrape(t, c.lab.Node(n)), "amesh_state_errors_total", l("kind", "rejected"))
			return v == 1
		})
	}
	echo("web", "api2", 10) // the last good state still in force
}

// badCertificate opens an HBONE connection to addr from node n with a valid-looking SVID of
// another CA: the agent must refuse it in the handshake (and count it).
func badCertificate(t *testing.T, n *lab.Node, addr netip.AddrPort) {
	t.Helper()
	ca, err := identity.NewCA(spiffeid.RequireTrustDomainFromString("cluster.local"), identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.Issue(context.Background(), spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web"))
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := n.Dial(ctx, addr.String())
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer raw.Close()
	tc := tls.Client(raw, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	// In TLS 1.3 the server judges the client's certificate after the client's handshake: the
	// refusal shows on the first read.
	err = tc.Handshake()
	if err == nil {
		_, err = tc.Read(make([]byte, 1))
	}
	if err == nil {
		t.Fatal("an HBONE handshake with another CA's certificate was accepted")
	}
}

// scrapeRaw reads node's agent metrics in the text exposition format.
func scrapeRaw(t *testing.T, n *lab.Node) []byte {
	t.Helper()
	client := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return n.Dial(ctx, metricsAddr) },
	}}
	resp, err := client.Get("http://" + metricsAddr + "/stats/prometheus")
	if err != nil {
		t.Fatalf("scrape %s: %v", n.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s, %v", n.Name, resp.Status, err)
	}
	return b
}

// scrape reads node's agent metrics and parses them.
func scrape(t *testing.T, n *lab.Node) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(scrapeRaw(t, n)))
	if err != nil {
		t.Fatalf("scrape %s: parse: %v", n.Name, err)
	}
	return fams
}

// sum adds the values of metric's series whose labels include want.
func sum(fams map[string]*dto.MetricFamily, metric string, want map[string]string) (float64, bool) {
	f, ok := fams[metric]
	if !ok {
		return 0, false
	}
	var total float64
	found := false
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, lp := range m.Label {
			labels[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		}
	}
	return total, found
}

// dump shows f's series, for a failure message.
func dump(f *dto.MetricFamily) string {
	if f == nil {
		return "  (none)"
	}
	var b strings.Builder
	for _, m := range f.Metric {
		var kv []string
		for _, lp := range m.Label {
			if lp.GetValue() != "unknown" {
				kv = append(kv, lp.GetName()+"="+lp.GetValue())
			}
		}
		v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
		fmt.Fprintf(&b, "  {%s} %v\n", strings.Join(kv, ","), v)
	}
	return b.String()
}

// series counts the istio_tcp_* series.
func series(fams map[string]*dto.MetricFamily) int {
	n := 0
	for name, f := range fams {
		if strings.HasPrefix(name, "istio_tcp_") {
			n += len(f.Metric)
		}
	}
	return n
}
