package xds

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/amesh-dev/amesh/waypoint"
)

// Options is what the translation needs besides the Config: the waypoint's credentials, which
// the resources carry as SDS secrets. Rotating them is a new Server.Set with the same Config.
type Options struct {
	// SVID is the waypoint's X.509-SVID, served as SecretCertificate; its ID must be
	// Config.Identity (the callers' agents verify it).
	SVID x509svid.Source
	// Bundles holds the roots of every trust domain the waypoint accepts: Config.Identity's and
	// those of TrustDomains. They are served in SecretRoots.
	Bundles x509bundle.Source
	// TrustDomains are further (federated) trust domains whose callers and destinations the
	// waypoint accepts. Its own trust domain is always accepted.
	TrustDomains []spiffeid.TrustDomain
}

// Translation is the Envoy configuration of one waypoint: the resources of one snapshot, each
// list sorted by name, and the input it could not translate as written.
type Translation struct {
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
	Routes    []*routev3.RouteConfiguration
	Endpoints []*endpointv3.ClusterLoadAssignment
	Secrets   []*tlsv3.Secret
	// Problems lists what was translated fail-closed rather than as written (see Problem).
	Problems []Problem
}

// Problem is a piece of input the translation could not express as written. Each was translated
// so that the waypoint denies or fails more requests than the input asks, never fewer.
type Problem struct {
	// Object is what holds the problem: "policy <ns>/<name>", "httproute <ns>/<name>",
	// "service <ns>/<name>", "waypoint <ns>/<name>".
	Object string
	// Message says what could not be translated and what was done instead.
	Message string
}

// String returns "object: message".
func (p Problem) String() string { return p.Object + ": " + p.Message }

// Resources returns t as go-control-plane's snapshot cache takes them.
func (t *Translation) Resources() map[resourcev3.Type][]types.Resource {
	out := map[resourcev3.Type][]types.Resource{}
	for _, l := range t.Listeners {
		out[resourcev3.ListenerType] = append(out[resourcev3.ListenerType], l)
	}
	for _, c := range t.Clusters {
		out[resourcev3.ClusterType] = append(out[resourcev3.ClusterType], c)
	}
	for _, r := range t.Routes {
		out[resourcev3.RouteType] = append(out[resourcev3.RouteType], r)
	}
	for _, e := range t.Endpoints {
		out[resourcev3.EndpointType] = append(out[resourcev3.EndpointType], e)
	}
	for _, s := range t.Secrets {
		out[resourcev3.SecretType] = append(out[resourcev3.SecretType], s)
	}
	return out
}

// ErrInvalidConfig is wrapped by the errors Resources returns for a Config that cannot be
// served at all (as opposed to the Problems it translates fail-closed).
var ErrInvalidConfig = errors.New("invalid waypoint config")

// Resources translates cfg into the Envoy resources of an Envoy waypoint (see the package doc
// for the layout). It is a pure function of cfg and of what opts' sources return.
//
// It returns an error, and no resources, when cfg cannot be served (no identity, a service
// without hostname, two services on one VIP:port, ...; these wrap ErrInvalidConfig), when
// the credentials cannot be read or do not match cfg.Identity, or when a generated resource
// fails its protoc-gen-validate rules. Everything else it cannot express (an unsupported policy
// condition, a route to an unknown backend, ...) becomes a Problem, translated fail-closed.
func Resources(cfg waypoint.Config, opts Options) (*Translation, error) {
	if err := checkConfig(cfg); err != nil {
		return nil, err
	}
	b := &builder{cfg: cfg}
	secrets, err := buildSecrets(cfg, opts)
	if err != nil {
		return nil, err
	}
	b.trustDomains = secrets.trustDomains
	t := &Translation{Secrets: secrets.secrets}

	t.Listeners = append(t.Listeners, b.connectTerminate(), b.connectOriginateListener())
	if mi := b.mainInternal(); mi != nil {
		t.Listeners = append(t.Listeners, mi)
	} else {
		b.problem("waypoint "+cfg.Namespace+"/"+cfg.Name, "fronts no service: main_internal is left out and every CONNECT fails")
	}
	t.Routes = b.routes
	t.Clusters = append(t.Clusters, b.mainInternalCluster(), b.connectOriginateCluster())
	// Clusters for the fronted services and for the other services their routes send to.
	for _, list := range [][]waypoint.Service{cfg.Services, cfg.Backends} {
		for i := range list {
			for _, port := range list[i].Ports {
				t.Clusters = append(t.Clusters, b.serviceCluster(&list[i], port))
				t.Endpoints = append(t.Endpoints, b.loadAssignment(&list[i], port))
			}
		}
	}
	if len(cfg.Workloads) > 0 {
		b.problem("waypoint "+cfg.Namespace+"/"+cfg.Name, fmt.Sprintf(
			"pod-addressed traffic to %d workloads is not translated: main_internal has no chain for pod IPs, so those CONNECTs are refused (use the Go waypoint for it)",
			len(cfg.Workloads)))
	}
	if b.err != nil {
		return nil, b.err
	}

	slices.SortFunc(t.Listeners, func(a, b *listenerv3.Listener) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(t.Clusters, func(a, b *clusterv3.Cluster) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(t.Routes, func(a, b *routev3.RouteConfiguration) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(t.Endpoints, func(a, b *endpointv3.ClusterLoadAssignment) int {
		return cmp.Compare(a.ClusterName, b.ClusterName)
	})
	t.Problems = b.problems

	for _, r := range t.all() {
		if err := validate(r); err != nil {
			return nil, fmt.Errorf("xds: generated %s %q is invalid: %w", typeName(r), resourceName(r), err)
		}
	}
	return t, nil
}

func (t *Translation) all() []proto.Message {
	var out []proto.Message
	for _, l := range t.Listeners {
		out = append(out, l)
	}
	for _, c := range t.Clusters {
		out = append(out, c)
	}
	for _, r := range t.Routes {
		out = append(out, r)
	}
	for _, e := range t.Endpoints {
		out = append(out, e)
	}
	for _, s := range t.Secrets {
		out = append(out, s)
	}
	return out
}

// checkConfig rejects a Config Envoy could not be given at all.
func checkConfig(cfg waypoint.Config) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("xds: %w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if cfg.Name == "" || cfg.Namespace == "" {
		bad("the waypoint has no name or namespace")
	}
	if cfg.Identity.IsZero() {
		bad("waypoint %s/%s has no identity (check its service account)", cfg.Namespace, cfg.Name)
	}
	seen := map[netip.AddrPort]string{}
	clusters := map[string]string{}
	for n, svc := range slices.Concat(cfg.Services, cfg.Backends) {
		key := svc.Namespace + "/" + svc.Name
		if svc.Hostname == "" {
			bad("service %s has no hostname", key)
		}
		for _, port := range svc.Ports {
			if port.Port == 0 {
				bad("service %s has a port 0", key)
			}
			if other, dup := clusters[ClusterName(svc.Hostname, port.Port)]; dup {
				bad("services %s and %s both make cluster %s", other, key, ClusterName(svc.Hostname, port.Port))
			}
			clusters[ClusterName(svc.Hostname, port.Port)] = key
			if n >= len(cfg.Services) {
				continue // a backend only: no main_internal chain
			}
			for _, vip := range svc.VIPs {
				if !vip.IsValid() {
					bad("service %s has an invalid VIP", key)
					continue
				}
				ap := netip.AddrPortFrom(vip.Unmap(), port.Port)
				if other, dup := seen[ap]; dup && other != key {
					bad("services %s and %s both listen on %s (one main_internal chain per VIP:port)", other, key, ap)
				} else if dup {
					bad("service %s lists %s twice", key, ap)
				}
				seen[ap] = key
			}
		}
		for _, ep := range svc.Endpoints {
			if !ep.IP.IsValid() {
				bad("service %s: endpoint %s/%s has no IP", key, ep.Namespace, ep.Name)
			}
		}
	}
	return errors.Join(errs...)
}

// targetPort is the workload port of service port port: its TargetPort, or the port itself when
// unset, as the Go waypoint reads it; 0 when svc has no such port.
func targetPort(svc *waypoint.Service, port uint16) uint16 {
	for _, p := range svc.Ports {
		if p.Port == port {
			if p.TargetPort == 0 {
				return p.Port
			}
			return p.TargetPort
		}
	}
	return 0
}

// builder holds the state of one translation: the first error and the problems found.
type builder struct {
	cfg          waypoint.Config
	trustDomains []spiffeid.TrustDomain
	routes       []*routev3.RouteConfiguration
	problems     []Problem
	err          error
}

// problem records a Problem once: a policy applied to several chains reports its problems once.
func (b *builder) problem(object, message string) {
	p := Problem{Object: object, Message: message}
	if !slices.Contains(b.problems, p) {
		b.problems = append(b.problems, p)
	}
}

func (b *builder) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// any packs m after validating it: an Any's contents escape the Validate of the message holding
// it, so every typed config is checked here. Marshalling is deterministic (maps sorted) so that
// equal inputs give byte-equal resources.
func (b *builder) any(m proto.Message) *anypb.Any {
	if err := validate(m); err != nil {
		b.fail(fmt.Errorf("xds: generated %s is invalid: %w", typeName(m), err))
	}
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		b.fail(fmt.Errorf("xds: pack %s: %w", typeName(m), err))
	}
	return a
}

// validate runs m's protoc-gen-validate rules, all of them.
func validate(m proto.Message) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		return v.ValidateAll()
	}
	if v, ok := m.(interface{ Validate() error }); ok {
		return v.Validate()
	}
	return nil
}

func typeName(m proto.Message) string { return string(m.ProtoReflect().Descriptor().FullName()) }

func resourceName(m proto.Message) string {
	if n := cachev3.GetResourceName(m); n != "" {
		return n
	}
	return "?"
}
