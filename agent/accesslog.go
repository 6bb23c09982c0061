package agent

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/amesh-dev/amesh/metrics"
	"github.com/amesh-dev/amesh/tunnel"
)

// accessEntry is one access-log line.
type accessEntry struct {
	direction, path string
	src             netip.Addr
	dst, upstream   netip.AddrPort
	srcID, dstID    string
	sent, received  int64
	// opened: counted as established (metrics), so its end is a close, not a failure;
	// inherited: opened under the agent this one took over from; cause: why it failed.
	opened, inherited bool
	cause             tunnel.Reason
	// waypoint is the waypoint ("namespace/name") an outbound connection was sent through.
	waypoint string
}

// log writes the line; t adds the fields ztunnel's access log has, under its names.
func (e accessEntry) log(l *slog.Logger, d time.Duration, result, reason string, t metrics.Traffic) {
	attrs := []any{
		"direction", e.direction, "path", e.path, "src_addr", e.src.String(), "dst_addr", e.dst.String(),
		"src_id", e.srcID, "dst_id", e.dstID, "bytes_sent", e.sent, "bytes_received", e.received,
		"duration_ms", float64(d.Microseconds()) / 1000, "result", result,
	}
	for _, f := range []struct{ k, v string }{
		{"src.workload", t.SourceWorkload}, {"src.namespace", t.SourceWorkloadNamespace}, {"src.identity", e.srcID},
		{"dst.workload", t.DestinationWorkload}, {"dst.namespace", t.DestinationWorkloadNamespace},
		{"dst.service", t.DestinationService}, {"dst.identity", e.dstID},
	} {
		if f.v != "" {
			attrs = append(attrs, f.k, f.v)
		}
	}
	if e.waypoint != "" {
		attrs = append(attrs, "waypoint", e.waypoint)
	}
	if e.upstream.IsValid() && e.upstream != e.dst {
		attrs = append(attrs, "upstream_addr", e.upstream.String())
	}
	if reason != "" {
		attrs = append(attrs, "reason", reason)
	}
	l.Info("access", attrs...)
}

func resultOf(err error) string {
	switch tunnel.ReasonOf(err) {
	case tunnel.ReasonDenied:
		return "denied"
	case tunnel.ReasonNone:
		return "error"
	}
	return "refused"
}

func relayResult(err error) string {
	if err != nil {
		return "reset"
	}
	return "ok"
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
