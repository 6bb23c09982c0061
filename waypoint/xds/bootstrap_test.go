package xds

import (
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"go.yaml.in/yaml/v3"
)

func TestBootstrapGolden(t *testing.T) {
	b, err := Bootstrap("router~10.0.0.9~waypoint-0.shop~shop.svc.cluster.local", "127.0.0.1:15010")
	if err != nil {
		t.Fatal(err)
	}
	j, err := MarshalJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "bootstrap.golden.json", j)
	y, err := MarshalYAML(b)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "bootstrap.golden.yaml", y)
	var back map[string]any
	if err := yaml.Unmarshal(y, &back); err != nil {
		t.Fatalf("the YAML does not parse: %v", err)
	}

	if exts := b.GetBootstrapExtensions(); len(exts) != 1 || exts[0].Name != internalListenerExt {
		t.Errorf("bootstrap extensions %v, want %s", exts, internalListenerExt)
	}
	if sa := b.GetAdmin().GetAddress().GetSocketAddress(); sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 15000 {
		t.Errorf("admin on %v, want 127.0.0.1:15000", sa)
	}
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType().String() != "GRPC" || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != xdsCluster {
		t.Errorf("ADS config %v", ads)
	}
	if b.GetDynamicResources().GetLdsConfig().GetAds() == nil || b.GetDynamicResources().GetCdsConfig().GetAds() == nil {
		t.Error("LDS and CDS do not come over ADS")
	}
}

func TestBootstrapAddress(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		typ     clusterv3.Cluster_DiscoveryType
		want    string // the endpoint, or part of the error
		wantErr bool
	}{
		{addr: "127.0.0.1:15010", typ: clusterv3.Cluster_STATIC, want: "127.0.0.1:15010"},
		{addr: "[::1]:15010", typ: clusterv3.Cluster_STATIC, want: "::1:15010"},
		{addr: "amesh-xds.amesh-system.svc:15010", typ: clusterv3.Cluster_STRICT_DNS, want: "amesh-xds.amesh-system.svc:15010"},
		{addr: "unix:///run/amesh/xds.sock", typ: clusterv3.Cluster_STATIC, want: "/run/amesh/xds.sock"},
		{addr: "unix://", wantErr: true, want: "no socket path"},
		{addr: "localhost", wantErr: true, want: "not host:port"},
		{addr: "localhost:0", wantErr: true, want: "no valid host and port"},
		{addr: ":15010", wantErr: true, want: "no valid host and port"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			b, err := Bootstrap("node", tc.addr)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want one containing %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := b.GetStaticResources().GetClusters()[0]
			if c.GetType() != tc.typ {
				t.Errorf("cluster type %v, want %v", c.GetType(), tc.typ)
			}
			a := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
			got := a.GetPipe().GetPath()
			if sa := a.GetSocketAddress(); sa != nil {
				got = sa.GetAddress() + ":" + strconv.FormatUint(uint64(sa.GetPortValue()), 10)
			}
			if got != tc.want {
				t.Errorf("endpoint %q, want %q", got, tc.want)
			}
		})
	}
	if _, err := Bootstrap("", "127.0.0.1:1"); err == nil {
		t.Error("no error for an empty node ID")
	}
}
