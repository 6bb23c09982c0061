package xds

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	internalupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/amesh-dev/amesh/waypoint"
)

// connectTimeout bounds dialling an endpoint's HBONE port (and the in-process internal hops).
const connectTimeout = 10 * time.Second

// originalDstCleanup is how long connect_originate keeps an idle endpoint host, istiod's value.
const originalDstCleanup = 60 * time.Second

// internalUpstream is the transport socket of a cluster whose endpoints are internal listeners.
// Filter state shared with the upstream crosses it into the internal listener's connection;
// passthrough names the host metadata it also carries over (into dynamic metadata).
func (b *builder) internalUpstream(passthrough ...string) *corev3.TransportSocket {
	iu := &internalupstreamv3.InternalUpstreamTransport{
		TransportSocket: &corev3.TransportSocket{
			Name:       "envoy.transport_sockets.raw_buffer",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(&rawbufferv3.RawBuffer{})},
		},
	}
	for _, name := range passthrough {
		iu.PassthroughMetadata = append(iu.PassthroughMetadata, &internalupstreamv3.InternalUpstreamTransport_MetadataValueSource{
			Kind: &metadatav3.MetadataKind{Kind: &metadatav3.MetadataKind_Host_{Host: &metadatav3.MetadataKind_Host{}}},
			Name: name,
		})
	}
	return &corev3.TransportSocket{
		Name:       internalUpstreamSocket,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(iu)},
	}
}

func (b *builder) protocolOptions(o *httpv3.HttpProtocolOptions) map[string]*anypb.Any {
	return map[string]*anypb.Any{httpProtocolOptionsKey: b.any(o)}
}

// mainInternalCluster is where connect_terminate's CONNECT route sends the tunnelled bytes:
// main_internal, over the internal_upstream socket so that the filter state connect_terminate
// set (destination, caller) arrives with them.
func (b *builder) mainInternalCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 MainInternal,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: MainInternal,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: internalAddress(MainInternal, ""),
				}},
			}}}},
		},
		TransportSocket: b.internalUpstream(),
	}
}

// serviceCluster is a service port's cluster, of type EDS: its endpoints (loadAssignment) change
// far more often than anything else, and EDS updates them without touching the cluster, whose
// change would drain its connections.
func (b *builder) serviceCluster(svc *waypoint.Service, port waypoint.Port) *clusterv3.Cluster {
	name := ClusterName(svc.Hostname, port.Port)
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LbPolicy:             clusterv3.Cluster_LEAST_REQUEST,
		// The endpoint's IP:targetPort travels as host metadata into connect_originate, whose
		// original_dst listener filter reads it (key originalDstFilter, field "local").
		TransportSocket: b.internalUpstream(originalDstFilter),
		// Inside the tunnel, speak to the destination what the caller spoke to us.
		TypedExtensionProtocolOptions: b.protocolOptions(&httpv3.HttpProtocolOptions{
			UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
				UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
					HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		}),
	}
}

// loadAssignment lists a service port's endpoints as internal addresses of connect_originate,
// each carrying its IP:targetPort. The endpoint ID keeps the hosts (and so their connection
// pools) apart.
func (b *builder) loadAssignment(svc *waypoint.Service, port waypoint.Port) *endpointv3.ClusterLoadAssignment {
	eps := slices.Clone(svc.Endpoints)
	slices.SortFunc(eps, func(a, b waypoint.Endpoint) int {
		return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.UID, b.UID))
	})
	var lbs []*endpointv3.LbEndpoint
	seen := map[string]bool{}
	for _, ep := range eps {
		id := endpointID(ep.IP, targetPort(svc, port.Port))
		if seen[id] {
			continue
		}
		seen[id] = true
		if td := ep.Identity.TrustDomain(); !ep.Identity.IsZero() && !slices.Contains(b.trustDomains, td) {
			b.problem("service "+svc.Namespace+"/"+svc.Name, fmt.Sprintf(
				"endpoint %s/%s is in trust domain %s, which the waypoint does not accept (Options.TrustDomains): HBONE to it will fail",
				ep.Namespace, ep.Name, td))
		}
		lbs = append(lbs, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: internalAddress(ConnectOriginate, id),
			}},
			Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				originalDstFilter: {Fields: map[string]*structpb.Value{"local": structpb.NewStringValue(id)}},
			}},
		})
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: ClusterName(svc.Hostname, port.Port)}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

// connectOriginateCluster dials the endpoint connect_originate restored, on port 15008, with
// HTTP/2 (the CONNECT tunnel) over mTLS.
func (b *builder) connectOriginateCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 ConnectOriginate,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(connectTimeout),
		CleanupInterval:      durationpb.New(originalDstCleanup),
		LbConfig: &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{
			UpstreamPortOverride: wrapperspb.UInt32(hbonePort),
		}},
		TransportSocket: b.upstreamTLS(),
		TypedExtensionProtocolOptions: b.protocolOptions(&httpv3.HttpProtocolOptions{
			UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
				ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
						Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
							ConnectionKeepalive: &corev3.KeepaliveSettings{
								Interval: durationpb.New(h2KeepaliveInterval),
								Timeout:  durationpb.New(h2KeepaliveTimeout),
							},
						},
					},
				},
			},
		}),
	}
}
