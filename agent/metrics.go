package agent

import (
	"cmp"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/amesh-dev/amesh/metrics"
	"github.com/amesh-dev/amesh/tunnel"
	"github.com/amesh-dev/amesh/workload"
)

// registerMetrics adds what other rooms count (the tunnel's refusals, the eBPF programs'
// counters) and the agent's own state, all read at scrape time.
func (a *Agent) registerMetrics() {
	m := a.metrics
	snap := func(c *tunnel.Counters) func() map[string]float64 {
		return func() map[string]float64 {
			out := map[string]float64{}
			for k, v := range c.Snapshot() {
				out[k] = float64(v)
			}
			return out
		}
	}
	m.CounterSet("amesh_hbone_server_refusals_total", "HBONE connections and streams this agent's server refused or cut, by reason.", "reason", snap(a.srv.Counters()))
	m.CounterSet("amesh_hbone_client_refusals_total", "HBONE dials of this agent refused, by reason.", "reason", snap(a.cli.Counters()))
	m.CounterSet("amesh_ebpf_events_total", "What the eBPF programs did (captures, steering, drops, lost events), by event.", "event", func() map[string]float64 {
		out := map[string]float64{}
		stats, err := a.red.Stats()
		if err != nil {
			return out
		}
		for k, v := range stats {
			out[k] = float64(v)
		}
		return out
	})
	usage := func(capacity bool) func() map[string]float64 {
		return func() map[string]float64 {
			out := map[string]float64{}
			entries, limit, err := a.red.MapUsage()
			if err != nil {
				return out
			}
			src := entries
			if capacity {
				src = limit
			}
			for k, v := range src {
				out[k] = float64(v)
			}
			return out
		}
	}
	m.GaugeSet("amesh_ebpf_map_entries", "Entries of the eBPF maps that fill with traffic.", "map", usage(false))
	m.GaugeSet("amesh_ebpf_map_capacity", "How many entries those maps can hold (an LRU map that is full forgets its oldest).", "map", usage(true))
	m.Gauge("amesh_enrolled_pods", "Pods of this node in the mesh.", func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		return float64(len(a.pods))
	})
	m.Gauge("amesh_enrollment_failures", "Pods of this node whose last enrollment failed (retried).", func() float64 { return float64(a.failedEnrollments()) })
	if ev := a.cfg.PodEvents; ev != nil {
		m.CounterSet("amesh_pod_events_total", "Events about pods this agent reported to the API server, by result: posted, dropped (queue full) or failed.", "result", func() map[string]float64 {
			posted, dropped, failed := ev.Counts()
			return map[string]float64{"posted": float64(posted), "dropped": float64(dropped), "failed": float64(failed)}
		})
	}
	m.Gauge("amesh_netns_unresolved_pods", "Pods of this node in the mesh not enrolled because their network namespace is not known yet or is ambiguous (looked for again with backoff).", func() float64 { return float64(a.unresolvedNetns.Load()) })
	m.Gauge("amesh_netns_ambiguous_pods", "Pods of this node not enrolled because several network namespaces hold their IP and not exactly one of them is attached to the node (no CNI report).", func() float64 { return float64(a.ambiguousPods.Load()) })
	m.GaugeSet("amesh_certificate_expiration_timestamp_seconds", "When each identity's current X.509-SVID held by this agent expires (Unix time).", "identity", func() map[string]float64 {
		out := map[string]float64{}
		for _, h := range a.src.Held() {
			if h.SVID != nil {
				out[h.ID.String()] = float64(h.SVID.Certificates[0].NotAfter.Unix())
			}
		}
		return out
	})
	m.GaugeSet("amesh_identity_source_ready", "Whether the identity source can serve (1) or not (0, /healthz/ready says why), by source: builtin or spire.", "source", func() map[string]float64 {
		ready, src := 0.0, IdentityBuiltin
		if a.cfg.Identity == IdentitySPIRE {
			src = IdentitySPIRE
		}
		if a.src.Ready() == nil {
			ready = 1
		}
		return map[string]float64{src: ready}
	})
	m.GaugeSet("amesh_identities", "Identities the agent holds for its pods, by state: available (a current SVID) or unavailable (none: no SPIRE entry, SPIRE unreachable, expired; connections of that identity are refused).", "state", func() map[string]float64 {
		out := map[string]float64{"available": 0, "unavailable": 0}
		for _, h := range a.src.Held() {
			if h.SVID != nil && a.src.Check(h.ID) == nil {
				out["available"]++
			} else {
				out["unavailable"]++
			}
		}
		return out
	})
	m.Counter("amesh_accept_errors_total", "Accept errors on the pods' listeners (each retried).", func() float64 { return float64(a.acceptErrors.Load()) })
	m.Counter("amesh_dial_budget_refusals_total", "Connections refused over a pod's dial budget.", func() float64 { return float64(a.dialsRefused.Load()) })
	m.Gauge("amesh_hbone_pool_connections", "Outbound HBONE connections this agent's pool holds.", func() float64 { return float64(a.cli.PoolConns()) })
	m.Counter("amesh_state_updates_total", "States (of the state file or the API server) this agent applied.", func() float64 { return float64(a.stateUpdates.Load()) })
	m.CounterSet("amesh_state_errors_total", "What went wrong with the state source: versions rejected whole (the last good state kept), objects left out of a state (invalid), interrupted API watches; by kind.", "kind", func() map[string]float64 {
		h := a.feed.health()
		return map[string]float64{"rejected": float64(h.rejected), "ignored_object": float64(h.ignored), "watch_interrupted": float64(h.watchErrors)}
	})
	m.CounterSet("amesh_state_builds_total", "States the state source built: from everything it holds (full) or from one change (incremental); by kind.", "kind", func() map[string]float64 {
		h := a.feed.health()
		return map[string]float64{"full": float64(h.fullBuilds), "incremental": float64(h.incrementalBuilds)}
	})
	a.observeEnrollment = m.Histogram("amesh_enrollment_duration_seconds", "How long enrolling a pod took (listeners, certificate, redirection).")
}

// record writes e's access line and counts it: a connection counted as opened is closed, with
// its bytes; one that never opened failed, with why.
func (a *Agent) record(e *accessEntry, d time.Duration, result, reason string) {
	if a.logAccess(result) {
		traffic := a.traffic(e)
		e.log(a.access, d, result, reason, traffic[0])
	}
	a.metrics.Handled(e.direction, e.path, result)
	if e.opened {
		for _, t := range a.traffic(e) {
			// received: from the source to the destination; sent: back.
			a.metrics.Closed(t, e.sent, e.received, !e.inherited)
		}
		return
	}
	flags := responseFlags(e.cause, result)
	for _, t := range a.traffic(e) {
		t.ResponseFlags = flags
		a.metrics.Failed(t)
	}
	a.metrics.Refused(cmp.Or(reasonLabel(e.cause), result))
}

// logAccess says whether a connection that ended with result gets an access line: all of them
// unless the log is off; with sampling, a share of those that went well and every one that did
// not (a refusal is what an operator looks for).
func (a *Agent) logAccess(result string) bool {
	switch {
	case a.cfg.AccessLogOff:
		return false
	case a.cfg.AccessLogSample <= 0 || a.cfg.AccessLogSample >= 1 || result != "ok":
		return true
	}
	return rand.Float64() < a.cfg.AccessLogSample
}

// done is record for a connection that began at start.
func (a *Agent) done(e *accessEntry, start time.Time, result, reason string) {
	a.record(e, time.Since(start), result, reason)
}

// opened counts e as an established connection (istio_tcp_connections_opened_total and the
// sockets-open gauge) and marks it so, for record.
func (a *Agent) opened(e *accessEntry) {
	e.opened = true
	for _, t := range a.traffic(e) {
		a.metrics.Opened(t)
	}
}

// traffic returns e's metric labels for each reporter this agent is: the source's agent for an
// outbound connection, the destination's for an inbound one, both for a connection within the
// node (splice, kernel), where this agent serves both ends.
func (a *Agent) traffic(e *accessEntry) []metrics.Traffic {
	st := a.store.Load()
	t := metrics.Traffic{SourcePrincipal: e.srcID, DestinationPrincipal: e.dstID}
	if e.path == "hbone" {
		t.ConnectionSecurityPolicy = metrics.MutualTLS
	} else {
		t.ConnectionSecurityPolicy = metrics.Plaintext
	}
	if w := st.WorkloadByIP(e.src); w != nil {
		t.SourceWorkload, t.SourceWorkloadNamespace = w.Owner(), w.Namespace
		t.SourceApp, t.SourceVersion, t.SourceCanonicalService, t.SourceCanonicalRevision = canonical(w)
		t.SourceCluster = cluster
	}
	to := e.upstream
	if !to.IsValid() {
		to = e.dst
	}
	if w := st.WorkloadByIP(to.Addr()); w != nil {
		t.DestinationWorkload, t.DestinationWorkloadNamespace = w.Owner(), w.Namespace
		t.DestinationApp, t.DestinationVersion, t.DestinationCanonicalService, t.DestinationCanonicalRevision = canonical(w)
		t.DestinationCluster = cluster
	}
	if svc, _, ok := st.ServiceByVIP(e.dst); ok {
		t.DestinationService = svc.Name + "." + svc.Namespace + ".svc.cluster.local"
		t.DestinationServiceNamespace, t.DestinationServiceName = svc.Namespace, svc.Name
	}
	switch {
	case e.path == "splice" || e.path == "kernel":
		src, dst := t, t
		src.Reporter, dst.Reporter = metrics.ReporterSource, metrics.ReporterDestination
		return []metrics.Traffic{src, dst}
	case strings.HasPrefix(e.direction, "inbound"):
		t.Reporter = metrics.ReporterDestination
	default:
		t.Reporter = metrics.ReporterSource
	}
	return []metrics.Traffic{t}
}

// cluster is the cluster label, Istio's default cluster ID.
const cluster = "Kubernetes"

// canonical returns w's app, version, canonical service and revision as Istio derives them
// from the pod's labels.
func canonical(w *workload.Workload) (app, version, service, revision string) {
	l := w.Labels
	app = cmp.Or(l["app"], l["app.kubernetes.io/name"])
	version = cmp.Or(l["version"], l["app.kubernetes.io/version"])
	service = cmp.Or(l["service.istio.io/canonical-name"], app, w.Owner())
	revision = cmp.Or(l["service.istio.io/canonical-revision"], version, "latest")
	return app, version, service, revision
}

// responseFlags is ztunnel's response_flags for a connection that failed: DENY for a policy or
// mode refusal, CONNECT when the destination could not be reached, TLS_FAILURE and
// IDENTITY_ERROR for a peer that failed the handshake or presented the wrong identity.
func responseFlags(r tunnel.Reason, result string) string {
	switch r {
	case tunnel.ReasonDenied, tunnel.ReasonSourceIdentity, tunnel.ReasonWaypointBypass:
		return "DENY"
	case tunnel.ReasonUpstreamDial:
		return "CONNECT"
	case tunnel.ReasonHandshakeTimeout, tunnel.ReasonTLSVersion, tunnel.ReasonALPN, tunnel.ReasonNoClientCert,
		tunnel.ReasonUntrusted, tunnel.ReasonHandshake:
		return "TLS_FAILURE"
	case tunnel.ReasonCertExpired, tunnel.ReasonCertNotYetValid, tunnel.ReasonWrongTrustDomain,
		tunnel.ReasonNotSVID, tunnel.ReasonWrongServerID:
		return "IDENTITY_ERROR"
	case tunnel.ReasonProtocol, tunnel.ReasonBadMethod, tunnel.ReasonBadAuthority, tunnel.ReasonBadRequest,
		tunnel.ReasonHeadersTooLarge:
		return "H2_HANDSHAKE_FAILURE"
	case tunnel.ReasonNone:
	default:
		return "OVERLOAD" // a budget: the peer was cut (see tunnel's reasons)
	}
	switch result {
	case "denied", "refused":
		return "DENY"
	}
	return "CONNECT"
}

// reasonLabel is r's name for amesh_refusals_total, "" for none.
func reasonLabel(r tunnel.Reason) string {
	if r == tunnel.ReasonNone {
		return ""
	}
	return r.String()
}
