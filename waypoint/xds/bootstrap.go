package xds

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	internallistenerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/bootstrap/internal_listener/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Bootstrap settings.
const (
	// AdminAddress is where the bootstrap puts Envoy's admin interface: loopback only, since it
	// can change Envoy's state.
	AdminAddress = "127.0.0.1"
	// AdminPort is the admin port of the port table (DESIGN §3).
	AdminPort = 15000
	// xdsCluster is the bootstrap's static cluster for the ADS server, istio-agent's name.
	xdsCluster = "xds-grpc"
	// nodeCluster is the node's cluster (Envoy's --service-cluster), for Envoy's stats.
	nodeCluster = "amesh-waypoint"
)

// Bootstrap returns the Envoy bootstrap of a waypoint: node nodeID, the internal listener
// extension the layout needs, every listener, cluster, route, endpoint and secret over ADS
// (gRPC, SotW) from adsAddress, and the admin interface on 127.0.0.1:15000. adsAddress is
// "host:port" (an IP is dialled as is, a name resolved by DNS) or "unix:///path". The ADS
// connection is plaintext: put the server on loopback or a Unix socket next to Envoy.
//
// Write it with MarshalYAML or MarshalJSON for `envoy -c`.
func Bootstrap(nodeID, adsAddress string) (*bootstrapv3.Bootstrap, error) {
	if nodeID == "" {
		return nil, fmt.Errorf("xds: bootstrap: node ID is required")
	}
	xds, err := xdsServerCluster(adsAddress)
	if err != nil {
		return nil, err
	}
	b := &builder{}
	ads := &corev3.ApiConfigSource{
		ApiType:             corev3.ApiConfigSource_GRPC,
		TransportApiVersion: corev3.ApiVersion_V3,
		GrpcServices: []*corev3.GrpcService{{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: xdsCluster}},
		}},
		SetNodeOnFirstMessageOnly: true,
	}
	boot := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: nodeID, Cluster: nodeCluster},
		BootstrapExtensions: []*corev3.TypedExtensionConfig{{
			Name:        internalListenerExt,
			TypedConfig: b.any(&internallistenerv3.InternalListener{}),
		}},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{xds}},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: ads,
			LdsConfig: adsSource(),
			CdsConfig: adsSource(),
		},
		Admin: &bootstrapv3.Admin{Address: socketAddress(AdminAddress, AdminPort)},
	}
	xds.TypedExtensionProtocolOptions = b.protocolOptions(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		},
	})
	if b.err != nil {
		return nil, b.err
	}
	if err := validate(boot); err != nil {
		return nil, fmt.Errorf("xds: generated bootstrap is invalid: %w", err)
	}
	return boot, nil
}

// xdsServerCluster is the static cluster that reaches the ADS server at addr.
func xdsServerCluster(addr string) (*clusterv3.Cluster, error) {
	c := &clusterv3.Cluster{
		Name:           xdsCluster,
		ConnectTimeout: durationpb.New(connectTimeout),
	}
	var address *corev3.Address
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if path == "" {
			return nil, fmt.Errorf("xds: bootstrap: ADS address %q has no socket path", addr)
		}
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: path}}}
	} else {
		host, portStr, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("xds: bootstrap: ADS address %q is not host:port or unix:///path: %w", addr, err)
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || port == 0 || host == "" {
			return nil, fmt.Errorf("xds: bootstrap: ADS address %q has no valid host and port", addr)
		}
		if _, err := netip.ParseAddr(host); err == nil {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		} else {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		}
		address = socketAddress(host, uint32(port))
	}
	c.LoadAssignment = &endpointv3.ClusterLoadAssignment{
		ClusterName: xdsCluster,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: address}},
		}}}},
	}
	return c, nil
}

// MarshalJSON encodes m as Envoy reads it (proto field names), with a stable layout: sorted
// keys, two-space indent, a final newline. protojson alone is deliberately unstable.
func MarshalJSON(m proto.Message) ([]byte, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("xds: encode %s: %w", typeName(m), err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("xds: re-encode %s: %w", typeName(m), err)
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("xds: re-encode %s: %w", typeName(m), err)
	}
	return out.Bytes(), nil
}

// MarshalYAML encodes m as MarshalJSON does, in YAML (keys sorted).
func MarshalYAML(m proto.Message) ([]byte, error) {
	j, err := MarshalJSON(m)
	if err != nil {
		return nil, err
	}
	var v any
	if err := yaml.Unmarshal(j, &v); err != nil {
		return nil, fmt.Errorf("xds: encode %s as YAML: %w", typeName(m), err)
	}
	out, err := yaml.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("xds: encode %s as YAML: %w", typeName(m), err)
	}
	return out, nil
}
