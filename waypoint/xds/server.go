package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"google.golang.org/grpc"

	"github.com/amesh-dev/amesh/waypoint"
)

// nodeKey is the one snapshot key: a Server serves one waypoint, and every Envoy replica of it
// gets the same configuration whatever its node ID.
const nodeKey = "waypoint"

// stopGrace bounds how long Serve waits for streams to end after its context is done.
const stopGrace = 5 * time.Second

// Server serves one waypoint's Envoy configuration over ADS (gRPC, state of the world).
//
// Invariants: cur is the snapshot in the cache; good, when set, is the latest snapshot some
// Envoy has ACKed on every resource type it was sent, and no Envoy has NACKed. When an Envoy
// NACKs the current version, the Server puts good back in the cache (and serves it to every
// Envoy, including those that connect later), so one bad translation cannot leave the
// waypoints without a configuration, and go-control-plane does not resend the rejected version
// in a loop (it answers any request whose version differs from the cache's).
type Server struct {
	log   *slog.Logger
	cache cachev3.SnapshotCache

	mu      sync.Mutex
	version uint64
	cur     *cachev3.Snapshot
	good    *cachev3.Snapshot
	streams map[int64]*streamState
	// recent are the last snapshots set, by version: an ACK may arrive after the next Set
	// (the Envoy acknowledged what it had), and must still make its version good.
	recent map[string]*cachev3.Snapshot
	nacked map[string]bool

	nacks atomic.Uint64
}

// streamState is what one ADS stream was sent and acknowledged, per type URL.
type streamState struct {
	node  string
	sent  map[string]sent
	acked map[string]string
	// ever holds, per type URL, every version the stream ACKed: an ACK of an older version
	// can land after a newer one was sent.
	ever map[string]map[string]bool
}

type sent struct{ version, nonce string }

// NewServer returns a Server with no configuration yet: Envoys that connect wait until Set.
func NewServer(log *slog.Logger) *Server {
	s := &Server{log: log, streams: map[int64]*streamState{}, recent: map[string]*cachev3.Snapshot{}, nacked: map[string]bool{}}
	s.cache = cachev3.NewSnapshotCache(true, constantHash{}, cacheLogger{log})
	return s
}

type constantHash struct{}

func (constantHash) ID(*corev3.Node) string { return nodeKey }

// Set translates cfg with opts (see Resources) and serves it as a new snapshot version. Its
// Problems are logged. On error the Server keeps serving what it served.
func (s *Server) Set(ctx context.Context, cfg waypoint.Config, opts Options) error {
	t, err := Resources(cfg, opts)
	if err != nil {
		return err
	}
	for _, p := range t.Problems {
		s.log.Warn("waypoint config translated fail-closed", "waypoint", cfg.Namespace+"/"+cfg.Name, "object", p.Object, "problem", p.Message)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	version := strconv.FormatUint(s.version+1, 10)
	snap, err := cachev3.NewSnapshot(version, t.Resources())
	if err != nil {
		return fmt.Errorf("xds: snapshot %s: %w", version, err)
	}
	if err := snap.Consistent(); err != nil {
		return fmt.Errorf("xds: snapshot %s is inconsistent: %w", version, err)
	}
	if err := s.cache.SetSnapshot(ctx, nodeKey, snap); err != nil {
		return fmt.Errorf("xds: serve snapshot %s: %w", version, err)
	}
	s.version++
	s.cur = snap
	s.recent[version] = snap
	delete(s.recent, strconv.FormatUint(s.version-recentVersions, 10))
	s.log.Info("waypoint config set", "waypoint", cfg.Namespace+"/"+cfg.Name, "version", version,
		"listeners", len(t.Listeners), "clusters", len(t.Clusters), "problems", len(t.Problems))
	return nil
}

// Version returns the version being served, "" before the first Set.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return ""
	}
	return s.cur.GetVersion(resourceTypeListener)
}

// NACKs returns how many responses Envoys have rejected.
func (s *Server) NACKs() uint64 { return s.nacks.Load() }

// Serve serves ADS on l until ctx is done, then stops (streams are ended; Serve waits for them
// at most a few seconds) and returns nil. It closes l. Any other end is an error.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gs := grpc.NewServer()
	// The go-control-plane server ends its streams when ctx is done, which lets GracefulStop
	// return.
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, adsService{sotw: sotwv3.NewServer(ctx, s.cache, callbacks{s})})

	done := make(chan error, 1)
	go func() { done <- gs.Serve(l) }()
	select {
	case err := <-done:
		return fmt.Errorf("xds: serve ADS on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(stopGrace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		gs.Stop()
		<-stopped
	}
	if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xds: serve ADS on %s: %w", l.Addr(), err)
	}
	return nil
}

// adsService is the aggregated discovery service, state of the world only (what Bootstrap asks
// for). go-control-plane's pkg/server/v3 would give it too, but it pulls in the rate-limit
// service module, which this module does not require.
type adsService struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	sotw sotwv3.Server
}

// StreamAggregatedResources serves one Envoy's ADS stream.
func (a adsService) StreamAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return a.sotw.StreamHandler(stream, resourcev3.AnyType)
}

// callbacks tracks streams for ACK/NACK accounting; go-control-plane calls it synchronously.
type callbacks struct{ s *Server }

var _ sotwv3.Callbacks = callbacks{}

// OnStreamOpen starts the stream's accounting.
func (c callbacks) OnStreamOpen(_ context.Context, id int64, typeURL string) error {
	c.s.mu.Lock()
	c.s.streams[id] = &streamState{sent: map[string]sent{}, acked: map[string]string{}, ever: map[string]map[string]bool{}}
	c.s.mu.Unlock()
	c.s.log.Debug("ADS stream opened", "stream", id, "type", typeURL)
	return nil
}

// OnStreamClosed drops the stream's accounting.
func (c callbacks) OnStreamClosed(id int64, node *corev3.Node) {
	c.s.mu.Lock()
	delete(c.s.streams, id)
	c.s.mu.Unlock()
	c.s.log.Debug("ADS stream closed", "stream", id, "node", node.GetId())
}

// OnStreamRequest recognizes ACKs and NACKs.
func (c callbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	return c.s.onRequest(id, req)
}

// OnStreamResponse records the version and nonce sent.
func (c callbacks) OnStreamResponse(ctx context.Context, id int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.s.onResponse(ctx, id, req, resp)
}

// onResponse records what was sent, to recognize the ACK or NACK that answers it (by nonce).
// go-control-plane calls it and onRequest from the stream's goroutine, in order.
func (s *Server) onResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[id]; st != nil {
		st.sent[resp.GetTypeUrl()] = sent{version: resp.GetVersionInfo(), nonce: resp.GetNonce()}
	}
}

// onRequest classifies a request that answers the last response of its type: an ACK (no
// error_detail) or a NACK. Requests with another nonce are stale and ignored, as the xDS
// protocol says.
func (s *Server) onRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[id]
	if st == nil {
		return nil
	}
	if n := req.GetNode().GetId(); n != "" {
		st.node = n
	}
	typeURL := req.GetTypeUrl()
	last, ok := st.sent[typeURL]
	if !ok || req.GetResponseNonce() == "" || req.GetResponseNonce() != last.nonce {
		return nil
	}
	if req.GetErrorDetail() == nil {
		st.acked[typeURL] = last.version
		if st.ever[typeURL] == nil {
			st.ever[typeURL] = map[string]bool{}
		}
		st.ever[typeURL][last.version] = true
		s.maybeGoodLocked(st, last.version)
		return nil
	}
	s.nacks.Add(1)
	s.log.Warn("Envoy rejected the waypoint config (NACK)", "stream", id, "node", st.node, "type", typeURL,
		"version", last.version, "nonce", last.nonce, "kept_version", req.GetVersionInfo(),
		"error", req.GetErrorDetail().GetMessage())
	s.nacked[last.version] = true
	return s.rejectLocked(last.version)
}

// recentVersions is how many of the last snapshots an ACK can still make good.
const recentVersions = 8

// maybeGoodLocked marks snapshot version v good when st has ACKed it on every type it was
// sent, no Envoy NACKed it, and it is newer than the good one. (The ever map grows by one
// entry per type and version a stream ACKs: bounded by the Sets of its life.)
func (s *Server) maybeGoodLocked(st *streamState, v string) {
	snap := s.recent[v]
	if snap == nil || s.nacked[v] {
		return
	}
	for typeURL := range st.sent {
		if !st.ever[typeURL][v] {
			return
		}
	}
	if s.good != nil {
		g, _ := strconv.ParseUint(s.good.GetVersion(resourceTypeListener), 10, 64)
		if n, _ := strconv.ParseUint(v, 10, 64); n <= g {
			return
		}
	}
	s.good = snap
}

// errNoGoodVersion ends a stream that NACKed the only version there is (see rejectLocked).
var errNoGoodVersion = errors.New("xds: the waypoint config was rejected and there is no earlier good one: closing the stream until a new version is set")

// rejectLocked handles a NACK of version: when it is the one served, the Server goes back to
// the last good snapshot. A NACK of an older version changes nothing: a newer Set already
// replaced it. With no good snapshot to go back to, it returns errNoGoodVersion, which ends the
// stream: go-control-plane would otherwise answer each NACK with the same version at once, in
// a loop, while a closed stream makes Envoy reconnect with backoff (keeping its config).
func (s *Server) rejectLocked(version string) error {
	if s.cur == nil || s.cur.GetVersion(resourceTypeListener) != version {
		return nil
	}
	if s.good == s.cur {
		s.good = nil
	}
	if s.good == nil {
		s.log.Error("no earlier good waypoint config to go back to: the rejected version stays served", "version", version)
		return errNoGoodVersion
	}
	// The cache responds to open watches from this goroutine; their channels are buffered
	// (one slot per type URL per stream, each stream holding at most one watch per type), so
	// this does not block on a stream's goroutine.
	if err := s.cache.SetSnapshot(context.Background(), nodeKey, s.good); err != nil {
		s.log.Error("go back to the last good waypoint config", "version", s.good.GetVersion(resourceTypeListener), "error", err)
		return nil
	}
	s.cur = s.good
	s.log.Warn("serving the last good waypoint config again", "version", s.good.GetVersion(resourceTypeListener), "rejected", version)
	return nil
}

// resourceTypeListener is the type whose version stands for the snapshot's: NewSnapshot gives
// every type the same.
const resourceTypeListener = resourcev3.ListenerType

// cacheLogger sends go-control-plane's logs to slog. Its info lines are per request (debug
// here), and its warnings include the routine "ADS mode: not responding" while an Envoy's
// subscription catches up with a new snapshot (info here).
type cacheLogger struct{ log *slog.Logger }

func (l cacheLogger) Debugf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Infof(format string, args ...any)  { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Warnf(format string, args ...any)  { l.log.Info(fmt.Sprintf(format, args...)) }
func (l cacheLogger) Errorf(format string, args ...any) { l.log.Error(fmt.Sprintf(format, args...)) }
