package xds

import (
	"net/netip"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	sfsvaluev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	sfshttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/amesh-dev/amesh/waypoint"
)

// HTTP/2 settings of the HBONE server, as istiod sets them (and as ztunnel's server uses):
// streams of one connection share one Envoy worker, so their number is bounded for fairness,
// and keepalives prune connections of callers that went away without closing.
const (
	h2MaxStreams        = 100
	h2KeepaliveInterval = 10 * time.Second
	h2KeepaliveTimeout  = 20 * time.Second
)

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func internalAddress(listener, endpointID string) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
		AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: listener},
		EndpointId:           endpointID,
	}}}
}

func (b *builder) originalDst() *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{
		Name:       originalDstFilter,
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: b.any(&originaldstv3.OriginalDst{})},
	}
}

func (b *builder) router() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: b.any(&routerv3.Router{})},
	}
}

func (b *builder) hcmFilter(h *hcmv3.HttpConnectionManager) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name:       "envoy.filters.network.http_connection_manager",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(h)},
	}
}

// filterState is one set_filter_state entry whose value is an Envoy format string, shared with
// the upstream (internal) connection only: ONCE, so it reaches main_internal but is not carried
// on to connect_originate, whose pooled connections serve many callers.
func filterState(key, factory, format string) *sfsvaluev3.FilterStateValue {
	return &sfsvaluev3.FilterStateValue{
		Key:        &sfsvaluev3.FilterStateValue_ObjectKey{ObjectKey: key},
		FactoryKey: factory,
		Value: &sfsvaluev3.FilterStateValue_FormatString{FormatString: &corev3.SubstitutionFormatString{
			Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
				Specifier: &corev3.DataSource_InlineString{InlineString: format},
			}},
		}},
		SharedWithUpstream: sfsvaluev3.FilterStateValue_ONCE,
	}
}

// connectTerminate is the HBONE listener: mTLS with a client certificate, HTTP/2 with CONNECT,
// and one route, for CONNECT, into main_internal. The set_filter_state filter hands
// main_internal what it cannot see itself: the original destination (the CONNECT's :authority,
// which its original_dst listener filter restores), the caller's address, and the caller's
// verified SPIFFE ID for RBAC (PeerPrincipalKey; no filter of main_internal sets it).
func (b *builder) connectTerminate() *listenerv3.Listener {
	// (read_only would say so, but Envoy deprecated it: it has no effect.)
	peer := filterState(PeerPrincipalKey, stringObjectFactory, "%DOWNSTREAM_PEER_URI_SAN%")
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: ConnectTerminate,
		CodecType:  hcmv3.HttpConnectionManager_HTTP2,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: ConnectTerminate,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    ConnectTerminate,
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Name: "connect",
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_ConnectMatcher_{
						ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{},
					}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: MainInternal},
						UpgradeConfigs: []*routev3.RouteAction_UpgradeConfig{{
							UpgradeType:   "CONNECT",
							ConnectConfig: &routev3.RouteAction_UpgradeConfig_ConnectConfig{},
						}},
					}},
				}},
			}},
		}},
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "CONNECT"}},
		Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
			AllowConnect:         true,
			MaxConcurrentStreams: wrapperspb.UInt32(h2MaxStreams),
			ConnectionKeepalive: &corev3.KeepaliveSettings{
				Interval: durationpb.New(h2KeepaliveInterval),
				Timeout:  durationpb.New(h2KeepaliveTimeout),
			},
		},
		// A tunnel lives as long as the connection it carries; its idleness is the inner
		// protocol's business.
		StreamIdleTimeout: durationpb.New(0),
		UseRemoteAddress:  wrapperspb.Bool(false),
		HttpFilters: []*hcmv3.HttpFilter{
			{
				Name: "connect_authority",
				ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: b.any(&sfshttpv3.Config{
					OnRequestHeaders: []*sfsvaluev3.FilterStateValue{
						filterState(originalDstLocalKey, "", "%REQ(:AUTHORITY)%"),
						filterState(originalDstRemoteKey, "", "%DOWNSTREAM_REMOTE_ADDRESS%"),
						peer,
					},
				})},
			},
			b.router(),
		},
	}
	return &listenerv3.Listener{
		Name:    ConnectTerminate,
		Address: socketAddress("0.0.0.0", hbonePort),
		FilterChains: []*listenerv3.FilterChain{{
			Name:            ConnectTerminate,
			TransportSocket: b.downstreamTLS(),
			Filters:         []*listenerv3.Filter{b.hcmFilter(hcm)},
		}},
		// HBONE connections are few and long-lived, each multiplexing many streams on one worker:
		// balance them exactly across workers, as istiod does.
		ConnectionBalanceConfig: &listenerv3.Listener_ConnectionBalanceConfig{
			BalanceType: &listenerv3.Listener_ConnectionBalanceConfig_ExactBalance_{
				ExactBalance: &listenerv3.Listener_ConnectionBalanceConfig_ExactBalance{},
			},
		},
	}
}

// mainInternal is the internal listener with one HTTP filter chain per service VIP:port, or nil
// when the waypoint fronts no service (Envoy refuses a listener without filter chains).
// A destination matching no chain (a pod IP, an unknown VIP or port) has its connection closed.
func (b *builder) mainInternal() *listenerv3.Listener {
	var chains []*listenerv3.FilterChain
	for i := range b.cfg.Services {
		svc := &b.cfg.Services[i]
		if len(svc.VIPs) == 0 {
			b.problem("service "+svc.Namespace+"/"+svc.Name, "has no VIP: no main_internal chain, its traffic is refused")
			continue
		}
		for _, port := range svc.Ports {
			chains = append(chains, b.serviceChain(svc, port))
		}
	}
	if len(chains) == 0 {
		return nil
	}
	return &listenerv3.Listener{
		Name:              MainInternal,
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
		ListenerFilters:   []*listenerv3.ListenerFilter{b.originalDst()},
		TrafficDirection:  corev3.TrafficDirection_INBOUND,
		FilterChains:      chains,
	}
}

// serviceChain is main_internal's chain for one service port: RBAC, then the router with the
// service's routes over RDS (so that a route change does not drain the chain's connections, as
// an inline route change in a listener would).
func (b *builder) serviceChain(svc *waypoint.Service, port waypoint.Port) *listenerv3.FilterChain {
	name := ChainName(svc.Hostname, port.Port)
	var ranges []*corev3.CidrRange
	for _, vip := range svc.VIPs {
		vip = vip.Unmap()
		ranges = append(ranges, &corev3.CidrRange{
			AddressPrefix: vip.String(),
			PrefixLen:     wrapperspb.UInt32(uint32(vip.BitLen())),
		})
	}
	rc, reach := b.routeConfig(svc, port)
	b.routes = append(b.routes, rc)
	filters := append(b.chainRBAC(svc, port, reach), b.router())
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: name,
		}},
		// The caller's address was restored from connect_terminate; no X-Forwarded-For to trust.
		UseRemoteAddress: wrapperspb.Bool(false),
		// Normalize before RBAC matches paths, so "/a/../admin" or "//admin" cannot pass for
		// something a DENY rule does not name.
		NormalizePath: wrapperspb.Bool(true),
		MergeSlashes:  true,
		HttpFilters:   filters,
	}
	return &listenerv3.FilterChain{
		Name: name,
		FilterChainMatch: &listenerv3.FilterChainMatch{
			DestinationPort: wrapperspb.UInt32(uint32(port.Port)),
			PrefixRanges:    ranges,
		},
		Filters: []*listenerv3.Filter{b.hcmFilter(hcm)},
	}
}

// connectOriginateListener opens HBONE to the endpoint the service cluster chose: original_dst
// restores the endpoint's IP:targetPort (passed as host metadata through the internal_upstream
// socket), the tunnel's :authority is that address, and the ORIGINAL_DST cluster dials it on
// port 15008.
func (b *builder) connectOriginateListener() *listenerv3.Listener {
	tcp := &tcpproxyv3.TcpProxy{
		StatPrefix:       ConnectOriginate,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: ConnectOriginate},
		TunnelingConfig:  &tcpproxyv3.TcpProxy_TunnelingConfig{Hostname: "%DOWNSTREAM_LOCAL_ADDRESS%"},
	}
	return &listenerv3.Listener{
		Name:              ConnectOriginate,
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
		UseOriginalDst:    wrapperspb.Bool(false),
		ListenerFilters:   []*listenerv3.ListenerFilter{b.originalDst()},
		TrafficDirection:  corev3.TrafficDirection_OUTBOUND,
		FilterChains: []*listenerv3.FilterChain{{
			Name: ConnectOriginate,
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.tcp_proxy",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(tcp)},
			}},
		}},
	}
}

// endpointID is an endpoint's IP:port as Envoy parses it ("[v6]:port" for IPv6).
func endpointID(ip netip.Addr, port uint16) string {
	return netip.AddrPortFrom(ip.Unmap(), port).String()
}
