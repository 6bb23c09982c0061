package xds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/amesh-dev/amesh/waypoint"
)

// syncBuffer is a log sink the server's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The order Envoy subscribes in: clusters and listeners (wildcard), then what they name.
var adsTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType}

// fakeEnvoy speaks ADS as Envoy does (state of the world): it subscribes to CDS and LDS,
// then to the EDS, RDS and SDS names those resources refer to; it checks every resource it
// receives (it must unpack and pass its validation rules) and ACKs with the version and nonce,
// or NACKs (error_detail, last accepted version) when reject says so.
type fakeEnvoy struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc
	resps  chan *discoveryv3.DiscoveryResponse
	done   chan struct{} // closed when the reader ends, with err
	err    error
	node   *corev3.Node
	reject func(*discoveryv3.DiscoveryResponse, []proto.Message) string

	accepted map[string]string // type → version
	nonce    map[string]string
	names    map[string][]string // subscribed names; nil is wildcard
	state    map[string][]proto.Message
	nacked   []string // "type@version"
}

func newFakeEnvoy(ctx context.Context, t *testing.T, conn *grpc.ClientConn, node string) *fakeEnvoy {
	t.Helper()
	sctx, cancel := context.WithCancel(ctx)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		cancel()
		t.Fatalf("open ADS stream: %v", err)
	}
	e := &fakeEnvoy{
		t: t, stream: stream, cancel: cancel,
		resps: make(chan *discoveryv3.DiscoveryResponse), done: make(chan struct{}),
		node:     &corev3.Node{Id: node, Cluster: nodeCluster},
		accepted: map[string]string{}, nonce: map[string]string{}, names: map[string][]string{}, state: map[string][]proto.Message{},
	}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				e.err = err
				close(e.done)
				return
			}
			select {
			case e.resps <- r:
			case <-sctx.Done():
				e.err = sctx.Err()
				close(e.done)
				return
			}
		}
	}()
	e.send(resourcev3.ClusterType, "", nil)
	e.send(resourcev3.ListenerType, "", nil)
	return e
}

// close ends the stream and waits for its reader.
func (e *fakeEnvoy) close() {
	_ = e.stream.CloseSend()
	e.cancel()
	<-e.done // the reader ends with sctx even when blocked handing a response over
}

func (e *fakeEnvoy) send(typeURL, nonce string, detail *status.Status) {
	e.t.Helper()
	req := &discoveryv3.DiscoveryRequest{
		TypeUrl: typeURL, VersionInfo: e.accepted[typeURL], ResponseNonce: nonce,
		ResourceNames: e.names[typeURL], ErrorDetail: detail,
	}
	if e.node != nil {
		req.Node, e.node = e.node, nil // set_node_on_first_message_only
	}
	// io.EOF: the server ended the stream; Recv reports why.
	if err := e.stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
		e.t.Fatalf("send %s request: %v", typeURL, err)
	}
}

// handle processes one response: check, ACK or NACK, and subscribe to what it names.
func (e *fakeEnvoy) handle(r *discoveryv3.DiscoveryResponse) {
	e.t.Helper()
	var msgs []proto.Message
	var problem string
	for _, a := range r.Resources {
		m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
		if err != nil {
			problem = fmt.Sprintf("unpack %s: %v", a.TypeUrl, err)
			break
		}
		if err := validate(m); err != nil {
			problem = fmt.Sprintf("%s %s: %v", typeName(m), resourceName(m), err)
			break
		}
		msgs = append(msgs, m)
	}
	if problem == "" && e.reject != nil {
		problem = e.reject(r, msgs)
	}
	e.nonce[r.TypeUrl] = r.Nonce
	if problem != "" {
		e.nacked = append(e.nacked, r.TypeUrl+"@"+r.VersionInfo)
		e.send(r.TypeUrl, r.Nonce, &status.Status{Code: int32(codes.InvalidArgument), Message: problem})
		return
	}
	e.accepted[r.TypeUrl] = r.VersionInfo
	e.state[r.TypeUrl] = msgs
	e.send(r.TypeUrl, r.Nonce, nil)

	// Subscribe to what the accepted clusters and listeners name, as Envoy does.
	var want map[string][]string
	switch r.TypeUrl {
	case resourcev3.ClusterType, resourcev3.ListenerType:
		want = e.references()
	default:
		return
	}
	for typeURL, names := range want {
		if !slices.Equal(names, e.names[typeURL]) {
			e.names[typeURL] = names
			e.send(typeURL, e.nonce[typeURL], nil)
		}
	}
}

// references returns the EDS, RDS and SDS names the accepted clusters and listeners name.
func (e *fakeEnvoy) references() map[string][]string {
	e.t.Helper()
	sets := map[string]map[string]bool{resourcev3.EndpointType: {}, resourcev3.RouteType: {}, resourcev3.SecretType: {}}
	for _, c := range e.state[resourcev3.ClusterType] {
		if c := c.(*clusterv3.Cluster); c.GetType() == clusterv3.Cluster_EDS {
			sets[resourcev3.EndpointType][cmpOr(c.GetEdsClusterConfig().GetServiceName(), c.Name)] = true
		}
	}
	for _, typeURL := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		for _, m := range e.state[typeURL] {
			walk(e.t, m.ProtoReflect(), func(m proto.Message) {
				switch m := m.(type) {
				case *tlsv3.SdsSecretConfig:
					sets[resourcev3.SecretType][m.Name] = true
				case *hcmv3.Rds:
					sets[resourcev3.RouteType][m.RouteConfigName] = true
				}
			})
		}
	}
	out := map[string][]string{}
	for typeURL, set := range sets {
		for n := range set {
			out[typeURL] = append(out[typeURL], n)
		}
		slices.Sort(out[typeURL])
	}
	return out
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// walk calls f on every message under m, unpacking Any.
func walk(t *testing.T, m protoreflect.Message, f func(proto.Message)) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			t.Fatalf("unpack %s: %v", a.TypeUrl, err)
		}
		walk(t, inner.ProtoReflect(), f)
		return
	}
	f(m.Interface())
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				walk(t, v.List().Get(i).Message(), f)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				walk(t, mv.Message(), f)
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			walk(t, v.Message(), f)
		}
		return true
	})
}

// until handles responses until cond holds, failing the test at ctx's deadline.
func (e *fakeEnvoy) until(ctx context.Context, what string, cond func() bool) {
	e.t.Helper()
	for !cond() {
		select {
		case r := <-e.resps:
			e.handle(r)
		case <-e.done:
			e.t.Fatalf("waiting for %s: stream ended: %v", what, e.err)
		case <-ctx.Done():
			e.t.Fatalf("waiting for %s: %v (accepted %v, nacked %v)", what, ctx.Err(), e.accepted, e.nacked)
		}
	}
}

// at reports whether every type was accepted at version.
func (e *fakeEnvoy) at(version string) bool {
	for _, typeURL := range adsTypes {
		if e.accepted[typeURL] != version {
			return false
		}
	}
	return true
}

func (e *fakeEnvoy) hasCluster(name string) bool {
	for _, c := range e.state[resourcev3.ClusterType] {
		if c.(*clusterv3.Cluster).Name == name {
			return true
		}
	}
	return false
}

// withService returns the fixture plus one more service.
func withService(name, vip string) waypoint.Config {
	cfg := fixture()
	cfg.Services = append(cfg.Services, svc(name, []string{vip}, []waypoint.Port{{Port: 80, TargetPort: 8080}}, ep(name+"-1", "10.0.7.1", nil)))
	return cfg
}

// TestADS runs the ADS protocol on loopback: a client receives and ACKs a version; then a
// version it NACKs: the NACK is logged and counted, and the server goes back to (and keeps
// serving, to new clients too) the last good version instead of resending the rejected one;
// then a new good version arrives.
func TestADS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logs := &syncBuffer{}
	srv := NewServer(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	opts, _ := testOptions(t)
	if err := srv.Set(ctx, fixture(), opts); err != nil {
		t.Fatal(err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, l) }()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	bad := ClusterName("nack-me.shop.svc.cluster.local", 80)
	reject := func(r *discoveryv3.DiscoveryResponse, msgs []proto.Message) string {
		for _, m := range msgs {
			if c, ok := m.(*clusterv3.Cluster); ok && c.Name == bad {
				return "cluster " + bad + ": this Envoy refuses it"
			}
		}
		return ""
	}
	envoy := newFakeEnvoy(ctx, t, conn, "waypoint-0")
	defer envoy.close()
	envoy.reject = reject

	envoy.until(ctx, "version 1 on every type", func() bool { return envoy.at("1") })
	if len(envoy.state[resourcev3.SecretType]) != 2 || len(envoy.state[resourcev3.RouteType]) != 3 || len(envoy.state[resourcev3.EndpointType]) != 5 {
		t.Errorf("received %d secrets, %d route configs, %d load assignments; want 2, 3, 5",
			len(envoy.state[resourcev3.SecretType]), len(envoy.state[resourcev3.RouteType]), len(envoy.state[resourcev3.EndpointType]))
	}
	if n := srv.NACKs(); n != 0 {
		t.Fatalf("%d NACKs before any bad version", n)
	}

	// Version 2: the client refuses its clusters.
	if err := srv.Set(ctx, withService("nack-me", "10.96.0.99"), opts); err != nil {
		t.Fatal(err)
	}
	envoy.until(ctx, "the NACK of version 2 and the return to version 1", func() bool {
		return slices.Contains(envoy.nacked, resourcev3.ClusterType+"@2") && envoy.at("1") && srv.Version() == "1"
	})
	if envoy.hasCluster(bad) {
		t.Error("the client holds the cluster it refused")
	}
	if n := srv.NACKs(); n != 1 {
		t.Errorf("%d NACKs counted, want 1 (the rejected version must not be resent)", n)
	}
	if log := logs.String(); !strings.Contains(log, "NACK") || !strings.Contains(log, "this Envoy refuses it") || !strings.Contains(log, "version=2") {
		t.Errorf("the NACK is not logged with its version and error detail:\n%s", log)
	}

	// A client connecting now gets the last good version, not the rejected one.
	late := newFakeEnvoy(ctx, t, conn, "waypoint-1")
	late.until(ctx, "version 1 for a new client", func() bool { return late.at("1") })
	if late.hasCluster(bad) || len(late.nacked) > 0 {
		t.Errorf("the new client got the rejected version (nacked %v)", late.nacked)
	}
	late.close()

	// Version 3, good: received and ACKed.
	if err := srv.Set(ctx, withService("details", "10.96.0.30"), opts); err != nil {
		t.Fatal(err)
	}
	envoy.until(ctx, "version 3 on every type", func() bool { return envoy.at("3") })
	if !envoy.hasCluster(ClusterName("details.shop.svc.cluster.local", 80)) {
		t.Error("version 3 lacks its new cluster")
	}
	if n := srv.NACKs(); n != 1 {
		t.Errorf("%d NACKs, want 1", n)
	}
	if v := srv.Version(); v != "3" {
		t.Errorf("serving version %q, want 3", v)
	}
}

// TestADSNoGoodVersion: a NACK of the only version there is ends the stream (Envoy reconnects
// with backoff) rather than have the server resend it at once, in a loop.
func TestADSNoGoodVersion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	opts, _ := testOptions(t)
	if err := srv.Set(ctx, fixture(), opts); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, l) }()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	envoy := newFakeEnvoy(ctx, t, conn, "waypoint-0")
	envoy.reject = func(r *discoveryv3.DiscoveryResponse, _ []proto.Message) string {
		if r.TypeUrl == resourcev3.ClusterType {
			return "no clusters today"
		}
		return ""
	}
	for {
		select {
		case r := <-envoy.resps:
			envoy.handle(r)
			continue
		case <-envoy.done:
			if err := envoy.err; err == nil || !strings.Contains(err.Error(), "no earlier good one") {
				t.Errorf("stream ended with %v, want the no-good-version error", err)
			}
		case <-ctx.Done():
			t.Fatalf("the stream was not ended (NACKs %d)", srv.NACKs())
		}
		break
	}
	if n := srv.NACKs(); n != 1 {
		t.Errorf("%d NACKs, want 1", n)
	}
	envoy.cancel()
}

// TestSetKeepsServing: a config that cannot be translated leaves the served version alone.
func TestSetKeepsServing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	opts, _ := testOptions(t)
	if v := srv.Version(); v != "" {
		t.Errorf("version %q before any Set", v)
	}
	if err := srv.Set(ctx, fixture(), opts); err != nil {
		t.Fatal(err)
	}
	broken := fixture()
	broken.Identity = waypoint.Config{}.Identity
	if err := srv.Set(ctx, broken, opts); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Set(broken) = %v, want ErrInvalidConfig", err)
	}
	if v := srv.Version(); v != "1" {
		t.Errorf("version %q after a failed Set, want 1", v)
	}
}

func TestServeEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := srv.Serve(ctx, l); err == nil {
		t.Error("Serve on a closed listener returned nil")
	}

	l, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, l) }()
	// An open stream must not keep Serve from returning.
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	envoy := newFakeEnvoy(ctx, t, conn, "waypoint-0")
	stop()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve = %v after its context ended, want nil", err)
		}
	case <-ctx.Done():
		t.Fatal("Serve did not return after its context ended")
	}
	envoy.close()
}
