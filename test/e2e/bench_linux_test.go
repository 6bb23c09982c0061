package e2e

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/test/lab"
)

// The lab benchmark measures, in one run, on the e2e cluster: 1 KiB request/response latency at
// a fixed rate and one-stream throughput (real iperf3) for direct pod→pod (both pods out of the
// mesh) within and across nodes, amesh within a node (the default splice path) and amesh across
// nodes (HBONE), each amesh case compared with the direct case of the same placement; pod
// enrolment time; and the idle agent's RSS. Run it with `make bench` (-benchtime 1x: every measurement is bounded by time
// and count, not by b.N). Compare ratios within one run.

const (
	rrRate     = 1000 // requests per second, as Istio's published numbers
	rrDuration = 2 * time.Second
	iperfTime  = 2 // seconds
)

// scenario is one path measured; base names the direct scenario it is compared with.
type scenario struct{ name, from, to, base string }

var scenarios = []scenario{
	{"direct-same-node", "plain", "plain2", ""},        // both out of the mesh, node1 -> node1
	{"direct-cross-node", "plain", "legacy", ""},       // both out of the mesh, node1 -> node2
	{"same-node", "web", "api1", "direct-same-node"},   // amesh (splice), node1 -> node1
	{"cross-node", "web", "api2", "direct-cross-node"}, // amesh HBONE, node1 -> node2
}

func BenchmarkLab(b *testing.B) {
	// splice explicitly: under the default (kernel) the one measured connection of a pair would be
	// its spliced first one anyway; bench/ measures the kernel path with a warm-up.
	c := newCluster(b, "--same-node", "splice")
	p50s, p99s := map[string]float64{}, map[string]float64{}
	b.Run("rr", func(b *testing.B) {
		for _, s := range scenarios {
			b.Run(s.name, func(b *testing.B) {
				ctx, cancel := context.WithTimeout(context.Background(), rrDuration+5*time.Second)
				defer cancel()
				p50, p99, err := lab.RR(ctx, c.lab.Pod(s.from), c.lab.Pod(s.to),
					lab.RROptions{Requests: rrRate * int(rrDuration/time.Second), Rate: rrRate})
				if err != nil {
					b.Fatal(err)
				}
				p50s[s.name], p99s[s.name] = us(p50), us(p99)
				b.ReportMetric(us(p50), "p50-µs")
				b.ReportMetric(us(p99), "p99-µs")
				if s.base != "" {
					b.ReportMetric(us(p50)/p50s[s.base], "p50-x-direct")
					b.ReportMetric(us(p99)/p99s[s.base], "p99-x-direct")
				}
			})
		}
	})
	gbps := map[string]float64{}
	b.Run("throughput", func(b *testing.B) {
		for _, s := range scenarios {
			b.Run(s.name, func(b *testing.B) {
				v, err := c.lab.Iperf(context.Background(), c.lab.Pod(s.from), c.lab.Pod(s.to),
					net.JoinHostPort(c.lab.Pod(s.to).IP.String(), "5201"), 1, iperfTime*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				gbps[s.name] = v
				b.ReportMetric(v, "Gbit/s")
				if s.base != "" {
					b.ReportMetric(v/gbps[s.base], "x-direct")
				}
			})
		}
	})
	b.Run("agent-rss", func(b *testing.B) {
		time.Sleep(time.Second)
		for _, node := range []string{"node1", "node2"} {
			rss, err := lab.RSSMiB(c.agents[node].Cmd.Process.Pid)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(rss, node+"-MB")
		}
	})
	c.close()

	b.Run("enroll", func(b *testing.B) {
		// 30 pods on one node, enrolled by one agent at start: the p99 of its per-pod enrolment.
		pods := make([]lab.PodSpec, 30)
		for i := range pods {
			pods[i] = lab.PodSpec{Name: fmt.Sprintf("p%d", i), Namespace: "bench", ServiceAccount: fmt.Sprintf("sa%d", i%5)}
		}
		ec := newClusterOf(b, []lab.NodeSpec{{Name: "node1", Pods: pods}})
		var took []float64
		for _, m := range ec.logLines("node1") {
			if m["msg"] == "pod enrolled" {
				took = append(took, toMS(m["took"]))
			}
		}
		if len(took) != len(pods) {
			b.Fatalf("%d enrolments logged for %d pods", len(took), len(pods))
		}
		slices.Sort(took)
		b.ReportMetric(took[len(took)/2], "p50-ms")
		b.ReportMetric(took[len(took)*99/100], "p99-ms")
	})
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func toMS(v any) float64 {
	f, _ := v.(float64)
	return f / 1e6
}
