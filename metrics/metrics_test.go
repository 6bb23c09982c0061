package metrics

import (
	"io"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// ztunnelLabels are the labels of ztunnel's CommonTrafficLabels, as its metrics show them.
var ztunnelLabels = []string{
	"reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app",
	"source_version", "source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_service", "destination_service_namespace", "destination_service_name",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_app", "destination_version", "destination_canonical_service",
	"destination_canonical_revision", "destination_cluster", "request_protocol", "response_flags",
	"connection_security_policy",
}

func TestTrafficLabels(t *testing.T) {
	if !slices.Equal(trafficLabels, ztunnelLabels) {
		t.Errorf("labels %v\nwant ztunnel's %v", trafficLabels, ztunnelLabels)
	}
	tests := []struct {
		name string
		in   Traffic
		want map[string]string
	}{
		{"empty: unknown, tcp, no flags", Traffic{}, map[string]string{"reporter": "unknown", "request_protocol": "tcp", "response_flags": "-", "source_workload": "unknown"}},
		{"set values kept", Traffic{Reporter: ReporterSource, SourceWorkload: "web", ResponseFlags: "DENY"}, map[string]string{"reporter": "source", "source_workload": "web", "response_flags": "DENY"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := tt.in.values()
			for k, want := range tt.want {
				if got := v[slices.Index(trafficLabels, k)]; got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
}

// TestExposition: the handler serves ztunnel's metric names, with the open gauge following
// opens and closes counted here only.
func TestExposition(t *testing.T) {
	r := New("1.2.3")
	tr := Traffic{Reporter: ReporterSource, SourceWorkload: "web"}
	r.Opened(tr)
	r.Opened(tr)
	r.Closed(tr, 10, 20, true)
	r.Closed(tr, 1, 2, false) // opened by the predecessor: the gauge stays
	r.Failed(Traffic{Reporter: ReporterSource, ResponseFlags: "DENY"})
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	out := string(body)
	for _, want := range []string{
		`istio_tcp_connections_opened_total{`, `istio_tcp_connections_closed_total{`,
		`istio_tcp_received_bytes_total{`, `istio_tcp_sent_bytes_total{`, `istio_tcp_connections_failed_total{`,
		`istio_build{component="ztunnel",tag="1.2.3"} 1`, `go_goroutines`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "istio_tcp_sockets_open{") && !strings.HasSuffix(line, " 1") {
			t.Errorf("open gauge %q, want 1 (two opened, one closed here)", line)
		}
		if strings.HasPrefix(line, "istio_tcp_received_bytes_total{") && !strings.HasSuffix(line, " 11") {
			t.Errorf("received bytes %q, want 11", line)
		}
	}
}
