package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Reason says why a tunnel refused a connection or a stream. Every refusal is counted by reason
// (Counters) and carried in a *RefusedError.
type Reason uint8

// Refusal reasons. TLS-level reasons end the connection before any stream exists; request-level
// reasons answer one CONNECT with an error status and deliver no byte.
const (
	ReasonNone             Reason = iota
	ReasonHandshakeTimeout        // the peer did not finish the TLS handshake in time
	ReasonTLSVersion              // the peer does not offer TLS 1.3
	ReasonALPN                    // the peer does not offer or select ALPN h2
	ReasonNoClientCert            // the client presented no certificate
	ReasonCertExpired             // the peer's certificate has expired
	ReasonCertNotYetValid         // the peer's certificate is not valid yet
	ReasonUntrusted               // the peer's certificate does not chain to the trust bundle (self-signed, other CA)
	ReasonWrongTrustDomain        // the peer's SPIFFE ID is of a trust domain we hold no bundle for
	ReasonNotSVID                 // the peer's certificate is not an X.509-SVID (no single SPIFFE URI SAN, CA flag)
	ReasonWrongServerID           // the server's SPIFFE ID is not the one the destination should have
	ReasonHandshake               // any other TLS handshake failure
	ReasonProtocol                // broken HTTP/2: bad preface, frame errors
	ReasonBadMethod               // a request other than CONNECT
	ReasonBadAuthority            // :authority is not a literal ip:port
	ReasonBadRequest              // other malformed request headers
	ReasonHeadersTooLarge         // the request's header list is over the limit
	ReasonDenied                  // the authorization hook said no
	ReasonUpstreamDial            // the destination refused or could not be reached
	// Budgets (DESIGN §8: a peer over budget is cut, never the agent). A refused stream gets
	// RST_STREAM, a cut connection GOAWAY; the names are what a metric or log line shows.
	ReasonTooManyStreams    // a stream over ServerConfig.MaxConcurrentStreams running handlers (REFUSED_STREAM)
	ReasonRapidReset        // the peer reset too many streams before their response (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM
	ReasonStreamBuffer      // a stream's queued data held more memory than ServerConfig.MaxStreamBuffer
	ReasonPeerBuffer        // a peer's queued data held more memory than ServerConfig.MaxPeerBuffer
	ReasonControlFlood      // more than maxQueuedControl control frames waiting on a peer that does not read
	ReasonWriteTimeout      // a write to the peer made no progress for ServerConfig.WriteTimeout
	ReasonStreamIdle        // a stream carried nothing for ServerConfig.StreamIdleTimeout
	ReasonHalfCloseTimeout  // a half-closed stream carried nothing for ServerConfig.HalfCloseTimeout
	ReasonTooManyConns      // a peer (source IP) over ServerConfig.MaxConnsPerPeer connections
	ReasonTooManyHandshakes // more than ServerConfig.MaxHandshakes handshakes at once
	ReasonHandshakeEvicted  // a handshake older than ServerConfig.HandshakeEvictAfter closed to make room for a new one
	ReasonHandshakeRate     // a peer (source IP) starting handshakes faster than ServerConfig.HandshakeRatePerPeer allows
	ReasonAcceptError       // Accept failed (EMFILE and the like); Serve backs off and retries
	ReasonSourceIdentity    // the peer's identity is not that of the workload at its source address (Authorize says so with Refuse)
	ReasonWaypointBypass    // traffic for a waypoint-covered port that did not come from the waypoint (Authorize says so with Refuse)
	reasonCount
)

var reasonNames = [reasonCount]string{
	ReasonNone:              "none",
	ReasonHandshakeTimeout:  "handshake_timeout",
	ReasonTLSVersion:        "tls_version",
	ReasonALPN:              "alpn",
	ReasonNoClientCert:      "no_client_cert",
	ReasonCertExpired:       "cert_expired",
	ReasonCertNotYetValid:   "cert_not_yet_valid",
	ReasonUntrusted:         "untrusted_cert",
	ReasonWrongTrustDomain:  "wrong_trust_domain",
	ReasonNotSVID:           "not_svid",
	ReasonWrongServerID:     "wrong_server_id",
	ReasonHandshake:         "handshake",
	ReasonProtocol:          "protocol",
	ReasonBadMethod:         "bad_method",
	ReasonBadAuthority:      "bad_authority",
	ReasonBadRequest:        "bad_request",
	ReasonHeadersTooLarge:   "headers_too_large",
	ReasonDenied:            "denied",
	ReasonUpstreamDial:      "upstream_dial",
	ReasonTooManyStreams:    "too_many_streams",
	ReasonRapidReset:        "rapid_reset",
	ReasonStreamBuffer:      "stream_buffer",
	ReasonPeerBuffer:        "peer_buffer",
	ReasonControlFlood:      "control_flood",
	ReasonWriteTimeout:      "write_timeout",
	ReasonStreamIdle:        "stream_idle",
	ReasonHalfCloseTimeout:  "half_close_timeout",
	ReasonTooManyConns:      "too_many_conns",
	ReasonWaypointBypass:    "waypoint_bypass",
	ReasonTooManyHandshakes: "too_many_handshakes",
	ReasonHandshakeEvicted:  "handshake_evicted",
	ReasonHandshakeRate:     "handshake_rate",
	ReasonAcceptError:       "accept_error",
	ReasonSourceIdentity:    "source_identity",
}

// String returns the reason's metric label.
func (r Reason) String() string {
	if r < reasonCount {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Status is the HTTP status a server answers a refused CONNECT with (0 for TLS-level reasons).
func (r Reason) Status() int {
	switch r {
	case ReasonBadMethod, ReasonBadAuthority, ReasonBadRequest:
		return 400
	case ReasonDenied, ReasonSourceIdentity:
		return 401
	case ReasonHeadersTooLarge:
		return 431
	case ReasonUpstreamDial:
		return 503
	}
	return 0
}

// reasonForStatus classifies a non-200 CONNECT response on the client side.
func reasonForStatus(status int) Reason {
	switch status {
	case 401, 403:
		return ReasonDenied
	case 431:
		return ReasonHeadersTooLarge
	case 502, 503, 504:
		return ReasonUpstreamDial
	}
	return ReasonBadRequest
}

// RefusedError is a connection or stream refused for Reason.
type RefusedError struct {
	Reason Reason
	Status int // the CONNECT response status, when the refusal came as one
	Err    error
}

// Error gives the reason, the status when there was one, and the cause.
func (e *RefusedError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("tunnel: refused (%s, HTTP %d): %v", e.Reason, e.Status, e.Err)
	}
	return fmt.Sprintf("tunnel: refused (%s): %v", e.Reason, e.Err)
}

// Unwrap returns the cause.
func (e *RefusedError) Unwrap() error { return e.Err }

// ReasonOf returns the Reason carried by err, or ReasonNone.
func ReasonOf(err error) Reason {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ReasonNone
}

func refuse(r Reason, err error) *RefusedError { return &RefusedError{Reason: r, Err: err} }

// Refuse is how a ServerConfig.Authorize hook refuses with a reason of its own rather than
// ReasonDenied (the stream is counted and answered by that reason's status).
func Refuse(r Reason, err error) error { return refuse(r, err) }

// Counters counts refusals by reason. The zero value is ready; it is safe for concurrent use.
type Counters struct {
	n [reasonCount]atomic.Uint64
}

func (c *Counters) add(r Reason) {
	if r < reasonCount {
		c.n[r].Add(1)
	}
}

// Get returns how many refusals had reason r.
func (c *Counters) Get(r Reason) uint64 {
	if r >= reasonCount {
		return 0
	}
	return c.n[r].Load()
}

// Snapshot returns the non-zero counts by reason label.
func (c *Counters) Snapshot() map[string]uint64 {
	m := map[string]uint64{}
	for r := Reason(1); r < reasonCount; r++ {
		if v := c.n[r].Load(); v != 0 {
			m[r.String()] = v
		}
	}
	return m
}

// The log budget of each refusal reason: a burst of refusalLogBurst lines, then refusalLogRate
// a second.
const (
	refusalLogBurst = 20
	refusalLogRate  = 10
)

// refusalLog keeps the log budget of each refusal reason. What it holds back is counted and
// said on the reason's next line ("suppressed"); Counters stay exact. The zero value is ready.
type refusalLog struct {
	mu      sync.Mutex
	buckets [reasonCount]*rate.Limiter
	held    [reasonCount]uint64
}

// info writes msg at Info on log with r's reason (and, after a gap, how many of r's lines were
// held back), unless r's log budget is spent.
func (l *refusalLog) info(log *slog.Logger, r Reason, msg string, args ...any) {
	ok, held := l.allow(r, time.Now())
	if !ok {
		return
	}
	args = append([]any{"reason", r.String()}, args...)
	if held > 0 {
		args = append(args, "suppressed", held)
	}
	log.Info(msg, args...)
}

// allow says whether a line for r may be written at now, and how many of r's were held back
// since the last one written.
func (l *refusalLog) allow(r Reason, now time.Time) (bool, uint64) {
	if r >= reasonCount {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[r]
	if b == nil {
		b = rate.NewLimiter(refusalLogRate, refusalLogBurst)
		l.buckets[r] = b
	}
	if !b.AllowN(now, 1) {
		l.held[r]++
		return false, 0
	}
	held := l.held[r]
	l.held[r] = 0
	return true, held
}
