// Package metrics is amesh's Prometheus telemetry. The TCP metrics carry the names and labels
// Istio's ztunnel exports (istio_tcp_*, with ztunnel's CommonTrafficLabels), so that dashboards
// and tools made for ztunnel read amesh unchanged; what only amesh knows is under amesh_. Label
// values are workloads, services and principals, never addresses or ports: the number of series
// grows with the pairs of workloads that talk, not with connections.
package metrics

import (
	"net/http"
	"reflect"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Unknown is the value of a label nothing is known for, as ztunnel writes it.
const Unknown = "unknown"

// Reporters: which end of the connection the agent that counts it serves.
const (
	ReporterSource      = "source"
	ReporterDestination = "destination"
)

// Connection security policies.
const (
	MutualTLS = "mutual_tls"
	Plaintext = "unknown" // ztunnel's value for a connection without mTLS
)

// Traffic is one connection's labels, ztunnel's CommonTrafficLabels; Labels fills empty fields
// with Unknown. The struct tags are the label names, in ztunnel's order.
type Traffic struct {
	Reporter                     string `label:"reporter"`
	SourceWorkload               string `label:"source_workload"`
	SourceWorkloadNamespace      string `label:"source_workload_namespace"`
	SourcePrincipal              string `label:"source_principal"`
	SourceApp                    string `label:"source_app"`
	SourceVersion                string `label:"source_version"`
	SourceCanonicalService       string `label:"source_canonical_service"`
	SourceCanonicalRevision      string `label:"source_canonical_revision"`
	SourceCluster                string `label:"source_cluster"`
	DestinationService           string `label:"destination_service"`
	DestinationServiceNamespace  string `label:"destination_service_namespace"`
	DestinationServiceName       string `label:"destination_service_name"`
	DestinationWorkload          string `label:"destination_workload"`
	DestinationWorkloadNamespace string `label:"destination_workload_namespace"`
	DestinationPrincipal         string `label:"destination_principal"`
	DestinationApp               string `label:"destination_app"`
	DestinationVersion           string `label:"destination_version"`
	DestinationCanonicalService  string `label:"destination_canonical_service"`
	DestinationCanonicalRevision string `label:"destination_canonical_revision"`
	DestinationCluster           string `label:"destination_cluster"`
	RequestProtocol              string `label:"request_protocol"`
	ResponseFlags                string `label:"response_flags"`
	ConnectionSecurityPolicy     string `label:"connection_security_policy"`
}

// trafficLabels are Traffic's label names, read from its tags once.
var trafficLabels = func() []string {
	t := reflect.TypeFor[Traffic]()
	names := make([]string, t.NumField())
	for i := range names {
		names[i] = t.Field(i).Tag.Get("label")
	}
	return names
}()

// values returns t's label values in trafficLabels' order; empty ones are Unknown, an empty
// protocol tcp and empty response flags "-", as ztunnel writes them.
func (t Traffic) values() []string {
	if t.RequestProtocol == "" {
		t.RequestProtocol = "tcp"
	}
	if t.ResponseFlags == "" {
		t.ResponseFlags = "-"
	}
	v := reflect.ValueOf(t)
	out := make([]string, v.NumField())
	for i := range out {
		out[i] = v.Field(i).String()
		if out[i] == "" {
			out[i] = Unknown
		}
	}
	return out
}

// Registry holds the agent's metrics. Create it with New.
type Registry struct {
	reg                                *prometheus.Registry
	opened, closed, failed, sent, recv *prometheus.CounterVec
	open                               *prometheus.GaugeVec
	paths                              *prometheus.CounterVec
	refused                            *prometheus.CounterVec
}

// New registers the metrics, the Go runtime's and the process's, and istio_build with the
// given version.
func New(version string) *Registry {
	r := &Registry{reg: prometheus.NewRegistry()}
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		r.reg.MustRegister(c)
		return c
	}
	r.opened = counter("istio_tcp_connections_opened_total", "The total number of TCP connections opened.", trafficLabels)
	r.closed = counter("istio_tcp_connections_closed_total", "The total number of TCP connections closed.", trafficLabels)
	r.failed = counter("istio_tcp_connections_failed_total", "The total number of TCP connections that failed to be established or were refused.", trafficLabels)
	r.sent = counter("istio_tcp_sent_bytes_total", "The size of total bytes sent back to the client in TCP connections (destination to source).", trafficLabels)
	r.recv = counter("istio_tcp_received_bytes_total", "The size of total bytes received from the client in TCP connections (source to destination).", trafficLabels)
	r.open = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "istio_tcp_sockets_open", Help: "The number of TCP connections open now."}, trafficLabels)
	r.reg.MustRegister(r.open)
	r.paths = counter("amesh_connections_total", "Connections the agent handled, by direction, the path they took (hbone, splice, kernel, passthrough, plaintext) and their result.", []string{"direction", "path", "result"})
	r.refused = counter("amesh_refusals_total", "Connections refused, by reason.", []string{"reason"})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "istio_build", Help: "Istio component build info."}, []string{"component", "tag"})
	build.WithLabelValues("ztunnel", version).Set(1)
	r.reg.MustRegister(build,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Opened counts a connection established (and so open) under t.
func (r *Registry) Opened(t Traffic) {
	v := t.values()
	r.opened.WithLabelValues(v...).Inc()
	r.open.WithLabelValues(v...).Inc()
}

// Closed counts the end of a connection under t: received bytes went from the source to the
// destination, sent bytes back. openHere says Opened counted it in this process (not in the
// agent this one took over from), so that the open gauge goes down only for what it counted.
func (r *Registry) Closed(t Traffic, received, sent int64, openHere bool) {
	v := t.values()
	r.closed.WithLabelValues(v...).Inc()
	if openHere {
		r.open.WithLabelValues(v...).Dec()
	}
	r.recv.WithLabelValues(v...).Add(float64(received))
	r.sent.WithLabelValues(v...).Add(float64(sent))
}

// Failed counts a connection that was refused or never established; t.ResponseFlags says why.
func (r *Registry) Failed(t Traffic) { r.failed.WithLabelValues(t.values()...).Inc() }

// Handled counts one connection by direction, path and result (amesh_connections_total).
func (r *Registry) Handled(direction, path, result string) {
	r.paths.WithLabelValues(direction, path, result).Inc()
}

// Refused counts a refusal by reason (amesh_refusals_total).
func (r *Registry) Refused(reason string) { r.refused.WithLabelValues(reason).Inc() }

// Handler serves the exposition format (for /metrics and /stats/prometheus).
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Register adds c (the tunnel's or the redirector's own counters, read at scrape time).
func (r *Registry) Register(c prometheus.Collector) error { return r.reg.Register(c) }

// snapshot exports a set of values read at scrape time (another package's counters), one series
// per key, under a single label.
type snapshot struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	read func() map[string]float64
}

func (s *snapshot) Describe(ch chan<- *prometheus.Desc) { ch <- s.desc }

func (s *snapshot) Collect(ch chan<- prometheus.Metric) {
	for k, v := range s.read() {
		ch <- prometheus.MustNewConstMetric(s.desc, s.typ, v, k)
	}
}

// CounterSet exports read's values, read at each scrape, as the counter name with label.
func (r *Registry) CounterSet(name, help, label string, read func() map[string]float64) {
	r.reg.MustRegister(&snapshot{desc: prometheus.NewDesc(name, help, []string{label}, nil), typ: prometheus.CounterValue, read: read})
}

// GaugeSet exports read's values, read at each scrape, as the gauge name with label.
func (r *Registry) GaugeSet(name, help, label string, read func() map[string]float64) {
	r.reg.MustRegister(&snapshot{desc: prometheus.NewDesc(name, help, []string{label}, nil), typ: prometheus.GaugeValue, read: read})
}

// Gauge exports read's value, read at each scrape, as the gauge name.
func (r *Registry) Gauge(name, help string, read func() float64) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, read))
}

// Counter exports read's value, read at each scrape, as the counter name.
func (r *Registry) Counter(name, help string, read func() float64) {
	r.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, read))
}

// Histogram registers a histogram of seconds (Prometheus' default buckets) and returns its
// Observe.
func (r *Registry) Histogram(name, help string) func(seconds float64) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: prometheus.DefBuckets})
	r.reg.MustRegister(h)
	return h.Observe
}

// CounterVec registers a counter with labels, counted by its owner as things happen.
func (r *Registry) CounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	r.reg.MustRegister(c)
	return c
}
