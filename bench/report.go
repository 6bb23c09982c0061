package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// writeResults writes the medians of all to results.json (with every round), results.md and
// results.png in outDir, and prints the Markdown.
func writeResults(outDir string, d time.Duration, runs int, all [][]Result) error {
	results := make([]Result, len(all))
	for i := range all {
		results[i] = median(all[i])
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "duration": d.String(), "runs": runs,
		"results": results, "rounds": all}, "", "  ")
	if err := os.WriteFile(filepath.Join(outDir, "results.json"), js, 0o644); err != nil {
		return err
	}
	md := markdown(results, d, runs)
	if err := os.WriteFile(filepath.Join(outDir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := writePlot(filepath.Join(outDir, "results.png"), results); err != nil {
		return err
	}
	fmt.Print(md)
	return nil
}

// median takes each figure's median over the rounds of one scenario.
func median(rs []Result) Result {
	med := func(get func(Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	out := Result{Scenario: rs[0].Scenario, Base: rs[0].Base, HTTP: rs[0].HTTP, RR1000: map[string]float64{}, RRMax: map[string]float64{}}
	for _, p := range []string{"p50", "p90", "p99", "p99.9"} {
		out.RR1000[p] = med(func(r Result) float64 { return r.RR1000[p] })
		out.RRMax[p] = med(func(r Result) float64 { return r.RRMax[p] })
	}
	out.RRMaxQPS = med(func(r Result) float64 { return r.RRMaxQPS })
	out.Gbps1 = med(func(r Result) float64 { return r.Gbps1 })
	out.Gbps4 = med(func(r Result) float64 { return r.Gbps4 })
	out.CPS = med(func(r Result) float64 { return r.CPS })
	out.AgentCPU = med(func(r Result) float64 { return r.AgentCPU })
	out.AgentRSSMiB = med(func(r Result) float64 { return r.AgentRSSMiB })
	for _, r := range rs {
		out.Scrapes += r.Scrapes // over every round
	}
	return out
}

// markdown renders the results with ratios to each one's base (the direct case of the same
// placement, or the scenario it adds one thing to) and to the best peer (the peers run across
// nodes). HTTP scenarios have no throughput or connection rate: "–" there.
func markdown(rs []Result, d time.Duration, runs int) string {
	// The best peer is chosen per measure: the lowest p50 for latency, the highest for throughput.
	var best, bestThr *Result
	byName := map[string]*Result{}
	for i := range rs {
		r := &rs[i]
		byName[r.Scenario] = r
		if strings.HasSuffix(r.Scenario, "pair") {
			if best == nil || r.RR1000["p50"] < best.RR1000["p50"] {
				best = r
			}
			if bestThr == nil || r.Gbps1 > bestThr.Gbps1 {
				bestThr = r
			}
		}
	}
	ratio := func(v, base float64) string {
		if base == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", v/base)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Benchmark suite, %s, each load run %v, medians of %d rounds. \"× base\" compares with the scenario named in compared_with: two unmeshed pods in the same placement, or for the scraped run and the waypoint the same path without the scrapes or the waypoint; the HTTP scenarios are net/http GETs of 1 KiB over one keep-alive connection (no iperf3 or CPS: the waypoint carries HTTP only); best peer: the lowest 1,000 RPS p50 (%s) for latency, the highest one-stream throughput (%s) for throughput.\n\n", time.Now().UTC().Format("2006-01-02"), d, runs, name(best), name(bestThr))
	b.WriteString("| scenario | p50 µs | p90 | p99 | p99.9 | p50 × base | p50 × best peer | max RPS | 1 stream Gbit/s | × base | × best peer | 4 streams Gbit/s | new conn/s | agent vCPU / 1k RPS | agent RSS MiB |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		cpu, rss := "–", "–"
		if r.AgentRSSMiB > 0 {
			cpu, rss = fmt.Sprintf("%.3f", r.AgentCPU), fmt.Sprintf("%.1f", r.AgentRSSMiB)
		}
		var dp50, bp50, dg, bg float64
		if direct := byName[r.Base]; direct != nil {
			dp50, dg = direct.RR1000["p50"], direct.Gbps1
		} else if r.Base == "" {
			dp50, dg = r.RR1000["p50"], r.Gbps1
		}
		if best != nil {
			bp50, bg = best.RR1000["p50"], bestThr.Gbps1
		}
		g1, g1d, g1b, g4, cps := fmt.Sprintf("%.2f", r.Gbps1), ratio(r.Gbps1, dg), ratio(r.Gbps1, bg), fmt.Sprintf("%.2f", r.Gbps4), fmt.Sprintf("%.0f", r.CPS)
		if r.HTTP {
			g1, g1d, g1b, g4, cps = "–", "–", "–", "–", "–"
		} else if r.Gbps1 == 0 {
			g1, g1d, g1b, g4 = "–", "–", "–", "–" // not measured (a cluster run has no iperf3)
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f | %.1f | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n",
			r.Scenario, r.RR1000["p50"], r.RR1000["p90"], r.RR1000["p99"], r.RR1000["p99.9"],
			ratio(r.RR1000["p50"], dp50), ratio(r.RR1000["p50"], bp50), r.RRMaxQPS,
			g1, g1d, g1b, g4, cps, cpu, rss)
	}
	// The HTTP scenarios' comparisons in full, each with the one it is based on: the table
	// gives only p50.
	first := true
	for _, r := range rs {
		base := byName[r.Base]
		if !r.HTTP || base == nil {
			continue
		}
		if first {
			b.WriteString("\n")
			first = false
		}
		fmt.Fprintf(&b, "- %s vs %s: p50 %s×, p99 %s× at 1,000 RPS; p50 %s×, p99 %s×, max RPS %s× at max rate\n",
			r.Scenario, base.Scenario, ratio(r.RR1000["p50"], base.RR1000["p50"]), ratio(r.RR1000["p99"], base.RR1000["p99"]),
			ratio(r.RRMax["p50"], base.RRMax["p50"]), ratio(r.RRMax["p99"], base.RRMax["p99"]), ratio(r.RRMaxQPS, base.RRMaxQPS))
	}
	return b.String()
}

func name(r *Result) string {
	if r == nil {
		return "none"
	}
	return r.Scenario
}
