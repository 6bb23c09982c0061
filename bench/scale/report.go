package scale

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// percentile returns the p-th percentile of v (nearest rank); 0 for no samples.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// write writes scale.json and scale.md, and prints the table.
func write(outDir string, d time.Duration, agentArgs []string, rs []Result) error {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "duration": d.String(), "agent_args": agentArgs, "results": rs}, "", "  ")
	if err := os.WriteFile(filepath.Join(outDir, "scale.json"), js, 0o644); err != nil {
		return err
	}
	md := markdown(d, agentArgs, rs)
	fmt.Print(md)
	return os.WriteFile(filepath.Join(outDir, "scale.md"), []byte(md), 0o644)
}

func markdown(d time.Duration, agentArgs []string, rs []Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Cluster scale, %s: one amesh-agent (--kube) against a real kube-apiserver + etcd holding the pods (100 per fake node and per namespace), services (one EndpointSlice each) and policies below; churn replaces pods at the rate shown (%d watch events each), %v alone (the agent's CPU) and %v more while enforcement is measured on real traffic through the agent, from before the API call to the first connection showing the change.", time.Now().UTC().Format("2006-01-02"), eventsPerReplacement, d, d)
	if len(agentArgs) > 0 {
		fmt.Fprintf(&b, " Agent flags added: `%s`.", strings.Join(agentArgs, " "))
	}
	b.WriteString("\n\n")
	b.WriteString("| pods | services | policies | churn/s | replaced | agent RSS MiB (base) | Go heap MiB | bytes/pod | RSS after churn MiB | sync s | idle vCPU | churn vCPU | µs/event | informer peer µs/event | stream peer µs/event | policy p50/p99 ms | endpoint p50/p99 ms | samples (timeouts) | full builds | incremental |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %d | %d | %d | %d | %d | %.1f (%.1f) | %.1f | %.0f | %.1f | %.1f | %.3f | %.3f | %.0f | %s | %s | %.0f / %.0f | %.0f / %.0f | %d (%d) | %d | %d |\n",
			r.Pods, r.Services, r.Policies, r.Churn, r.Replaced, r.RSSMiB, r.BaseRSSMiB, r.HeapMiB, r.BytesPerPod, r.RSSAfterMiB, r.SyncSeconds,
			r.IdleVCPU, r.ChurnVCPU, r.MicrosPerEvent, orDash(r.InformerMicrosPerEvent), orDash(r.StreamMicrosPerEvent), r.PolicyP50, r.PolicyP99, r.EndpointP50, r.EndpointP99, r.Samples, r.Timeouts, r.FullBuilds, r.Incremental)
	}
	return b.String()
}

// orDash prints a peer's figure, or "–" for a run without peers.
func orDash(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", v)
}
