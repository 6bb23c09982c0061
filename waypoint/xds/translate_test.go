package xds

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	sfshttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	internalupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/policy"
	"github.com/amesh-dev/amesh/waypoint"
	"github.com/amesh-dev/amesh/workload"
)

func translate(t *testing.T, cfg waypoint.Config) *Translation {
	t.Helper()
	opts, _ := testOptions(t)
	tr, err := Resources(cfg, opts)
	if err != nil {
		t.Fatalf("Resources: %v", err)
	}
	return tr
}

// goldenJSON is the golden form of tr: every resource, secrets without their (random) key
// material, and the problems.
func goldenJSON(t *testing.T, tr *Translation) []byte {
	t.Helper()
	doc := map[string]any{}
	add := func(kind string, m proto.Message) {
		j, err := MarshalJSON(m)
		if err != nil {
			t.Fatal(err)
		}
		list, _ := doc[kind].([]json.RawMessage)
		doc[kind] = append(list, json.RawMessage(j))
	}
	for _, l := range tr.Listeners {
		add("listeners", l)
	}
	for _, c := range tr.Clusters {
		add("clusters", c)
	}
	for _, r := range tr.Routes {
		add("routes", r)
	}
	for _, e := range tr.Endpoints {
		add("endpoints", e)
	}
	for _, s := range tr.Secrets {
		s = proto.Clone(s).(*tlsv3.Secret)
		if c := s.GetTlsCertificate(); c != nil {
			c.CertificateChain.Specifier = &corev3.DataSource_InlineString{InlineString: "<certificate chain PEM>"}
			c.PrivateKey.Specifier = &corev3.DataSource_InlineString{InlineString: "<private key PEM>"}
		}
		if v := s.GetValidationContext(); v != nil {
			spiffe := &tlsv3.SPIFFECertValidatorConfig{}
			if err := v.CustomValidatorConfig.TypedConfig.UnmarshalTo(spiffe); err != nil {
				t.Fatal(err)
			}
			for _, d := range spiffe.TrustDomains {
				d.TrustBundle.Specifier = &corev3.DataSource_InlineString{InlineString: "<bundle PEM of " + d.Name + ">"}
			}
			a, err := anypb.New(spiffe)
			if err != nil {
				t.Fatal(err)
			}
			v.CustomValidatorConfig.TypedConfig = a
		}
		add("secrets", s)
	}
	problems := []string{}
	for _, p := range tr.Problems {
		problems = append(problems, p.String())
	}
	doc["problems"] = problems
	return indentJSON(t, doc)
}

func TestResourcesGolden(t *testing.T) {
	opts, ca := testOptions(t)
	tr, err := Resources(fixture(), opts)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "waypoint.golden.json", goldenJSON(t, tr))

	// What the golden file cannot show: the secrets hold the SVID and the bundle themselves.
	svid, _ := opts.SVID.GetX509SVID()
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundlePEM, err := ca.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	wantBundle, _ := bundlePEM.Marshal()
	for _, s := range tr.Secrets {
		switch s.Name {
		case SecretCertificate:
			c := s.GetTlsCertificate()
			if !bytes.Equal(c.GetCertificateChain().GetInlineBytes(), certPEM) || !bytes.Equal(c.GetPrivateKey().GetInlineBytes(), keyPEM) {
				t.Errorf("secret %s does not hold the waypoint's SVID", s.Name)
			}
		case SecretRoots:
			v := s.GetValidationContext()
			if v.GetCustomValidatorConfig().GetName() != spiffeValidator || v.GetTrustedCa() != nil {
				t.Errorf("secret %s: validator %q, trusted_ca %v; want the SPIFFE validator alone", s.Name, v.GetCustomValidatorConfig().GetName(), v.GetTrustedCa())
			}
			spiffe := &tlsv3.SPIFFECertValidatorConfig{}
			if err := v.GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(spiffe); err != nil {
				t.Fatal(err)
			}
			if len(spiffe.TrustDomains) != 1 || spiffe.TrustDomains[0].Name != "cluster.local" ||
				!bytes.Equal(spiffe.TrustDomains[0].TrustBundle.GetInlineBytes(), wantBundle) {
				t.Errorf("secret %s: trust domains %v, want cluster.local with the CA's bundle", s.Name, spiffe.TrustDomains)
			}
		default:
			t.Errorf("unexpected secret %q", s.Name)
		}
	}
}

func TestResourcesValidate(t *testing.T) {
	tr := translate(t, fixture())
	for _, m := range tr.all() {
		if err := validate(m); err != nil {
			t.Errorf("%s %s: %v", typeName(m), resourceName(m), err)
		}
	}
	snap, err := cachev3.NewSnapshot("1", tr.Resources())
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Consistent(); err != nil {
		t.Errorf("snapshot is not consistent: %v", err)
	}
}

func TestResourcesDeterministic(t *testing.T) {
	opts, _ := testOptions(t)
	first, err := Resources(fixture(), opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		again, err := Resources(fixture(), opts)
		if err != nil {
			t.Fatal(err)
		}
		a, b := first.all(), again.all()
		if len(a) != len(b) {
			t.Fatalf("run %d: %d resources, first run %d", i, len(b), len(a))
		}
		for j := range a {
			if !proto.Equal(a[j], b[j]) {
				t.Fatalf("run %d: %s %s differs from the first run", i, typeName(a[j]), resourceName(a[j]))
			}
			ja, _ := MarshalJSON(a[j])
			jb, _ := MarshalJSON(b[j])
			if !bytes.Equal(ja, jb) {
				t.Fatalf("run %d: %s %s encodes differently", i, typeName(a[j]), resourceName(a[j]))
			}
		}
	}
}

func unpack[M proto.Message](t *testing.T, a *anypb.Any, m M) M {
	t.Helper()
	if err := a.UnmarshalTo(m); err != nil {
		t.Fatalf("unpack %s: %v", a.GetTypeUrl(), err)
	}
	return m
}

func listener(t *testing.T, tr *Translation, name string) *listenerv3.Listener {
	t.Helper()
	for _, l := range tr.Listeners {
		if l.Name == name {
			return l
		}
	}
	t.Fatalf("no listener %s", name)
	return nil
}

func cluster(t *testing.T, tr *Translation, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range tr.Clusters {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no cluster %s", name)
	return nil
}

func routeConfig(t *testing.T, tr *Translation, name string) *routev3.RouteConfiguration {
	t.Helper()
	for _, r := range tr.Routes {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no route configuration %s", name)
	return nil
}

// TestLayout asserts, explicitly, the layout the golden file shows.
func TestLayout(t *testing.T) {
	tr := translate(t, fixture())
	var names []string
	for _, l := range tr.Listeners {
		names = append(names, l.Name)
	}
	if want := []string{ConnectOriginate, ConnectTerminate, MainInternal}; !slices.Equal(names, want) {
		t.Errorf("listeners %v, want %v", names, want)
	}

	t.Run("connect_terminate", func(t *testing.T) {
		l := listener(t, tr, ConnectTerminate)
		if sa := l.GetAddress().GetSocketAddress(); sa.GetAddress() != "0.0.0.0" || sa.GetPortValue() != 15008 {
			t.Errorf("address %v, want 0.0.0.0:15008", sa)
		}
		if len(l.FilterChains) != 1 {
			t.Fatalf("%d filter chains, want 1", len(l.FilterChains))
		}
		fc := l.FilterChains[0]
		dtls := unpack(t, fc.GetTransportSocket().GetTypedConfig(), &tlsv3.DownstreamTlsContext{})
		if !dtls.GetRequireClientCertificate().GetValue() {
			t.Error("client certificate not required")
		}
		checkCommonTLS(t, dtls.GetCommonTlsContext())
		hcm := unpack(t, fc.Filters[0].GetTypedConfig(), &hcmv3.HttpConnectionManager{})
		if len(hcm.UpgradeConfigs) != 1 || hcm.UpgradeConfigs[0].UpgradeType != "CONNECT" {
			t.Errorf("upgrade configs %v, want CONNECT", hcm.UpgradeConfigs)
		}
		if !hcm.GetHttp2ProtocolOptions().GetAllowConnect() {
			t.Error("http2 allow_connect is not set")
		}
		routes := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()
		if len(routes) != 1 || routes[0].GetMatch().GetConnectMatcher() == nil {
			t.Fatalf("routes %v, want one CONNECT route", routes)
		}
		ra := routes[0].GetRoute()
		if ra.GetCluster() != MainInternal || len(ra.UpgradeConfigs) != 1 || ra.UpgradeConfigs[0].GetConnectConfig() == nil {
			t.Errorf("CONNECT route action %v, want terminating CONNECT to %s", ra, MainInternal)
		}
		sfs := unpack(t, hcm.HttpFilters[0].GetTypedConfig(), &sfshttpv3.Config{})
		got := map[string]string{}
		for _, v := range sfs.OnRequestHeaders {
			got[v.GetObjectKey()] = v.GetFormatString().GetTextFormatSource().GetInlineString()
			if v.SharedWithUpstream.String() != "ONCE" {
				t.Errorf("%s is shared %v, want ONCE", v.GetObjectKey(), v.SharedWithUpstream)
			}
			if v.GetObjectKey() == PeerPrincipalKey && v.FactoryKey != "envoy.string" {
				t.Errorf("%s: factory %q, want envoy.string", PeerPrincipalKey, v.FactoryKey)
			}
		}
		if got[originalDstLocalKey] != "%REQ(:AUTHORITY)%" || got[PeerPrincipalKey] != "%DOWNSTREAM_PEER_URI_SAN%" {
			t.Errorf("filter state %v", got)
		}
	})

	t.Run("main_internal", func(t *testing.T) {
		l := listener(t, tr, MainInternal)
		if l.GetInternalListener() == nil || l.GetAddress() != nil {
			t.Error("main_internal is not an internal listener")
		}
		if len(l.ListenerFilters) != 1 || l.ListenerFilters[0].Name != originalDstFilter {
			t.Errorf("listener filters %v, want original_dst", l.ListenerFilters)
		}
		type chain struct {
			name   string
			port   uint32
			ranges []string
			rbac   []string
		}
		want := []chain{
			{ChainName("ratings.shop.svc.cluster.local", 8080), 8080, []string{"10.96.0.20/32", "fd00::20/128"},
				[]string{rbacDenyFilter, rbacAllowFilter, rbacAllowWorkloadFilter}},
			{ChainName("ratings.shop.svc.cluster.local", 9090), 9090, []string{"10.96.0.20/32", "fd00::20/128"},
				[]string{rbacDenyFilter, rbacAllowFilter, rbacAllowWorkloadFilter}},
			{ChainName("reviews.shop.svc.cluster.local", 80), 80, []string{"10.96.0.10/32"},
				[]string{rbacDenyFilter, rbacAllowFilter}},
		}
		var got []chain
		for _, fc := range l.FilterChains {
			c := chain{name: fc.Name, port: fc.GetFilterChainMatch().GetDestinationPort().GetValue()}
			for _, r := range fc.GetFilterChainMatch().GetPrefixRanges() {
				c.ranges = append(c.ranges, fmt.Sprintf("%s/%d", r.AddressPrefix, r.GetPrefixLen().GetValue()))
			}
			hcm := unpack(t, fc.Filters[0].GetTypedConfig(), &hcmv3.HttpConnectionManager{})
			if hcm.GetRds().GetRouteConfigName() != fc.Name {
				t.Errorf("chain %s uses routes %q, want its own name", fc.Name, hcm.GetRds().GetRouteConfigName())
			}
			for i, f := range hcm.HttpFilters {
				if i == len(hcm.HttpFilters)-1 {
					if f.Name != "envoy.filters.http.router" {
						t.Errorf("chain %s: last filter %s, want the router", fc.Name, f.Name)
					}
					continue
				}
				c.rbac = append(c.rbac, f.Name)
			}
			got = append(got, c)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("chains\n got %v\nwant %v", got, want)
		}
	})

	t.Run("connect_originate", func(t *testing.T) {
		l := listener(t, tr, ConnectOriginate)
		if l.GetInternalListener() == nil || len(l.ListenerFilters) != 1 || l.ListenerFilters[0].Name != originalDstFilter {
			t.Errorf("connect_originate: internal %v, listener filters %v", l.GetInternalListener(), l.ListenerFilters)
		}
		tcp := unpack(t, l.FilterChains[0].Filters[0].GetTypedConfig(), &tcpproxyv3.TcpProxy{})
		if tcp.GetCluster() != ConnectOriginate || tcp.GetTunnelingConfig().GetHostname() != "%DOWNSTREAM_LOCAL_ADDRESS%" {
			t.Errorf("tcp_proxy %v", tcp)
		}
		c := cluster(t, tr, ConnectOriginate)
		if c.GetType() != clusterv3.Cluster_ORIGINAL_DST || c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED ||
			c.GetOriginalDstLbConfig().GetUpstreamPortOverride().GetValue() != 15008 {
			t.Errorf("cluster %s: type %v lb %v port override %v; want ORIGINAL_DST to port 15008",
				c.Name, c.GetType(), c.GetLbPolicy(), c.GetOriginalDstLbConfig().GetUpstreamPortOverride())
		}
		utls := unpack(t, c.GetTransportSocket().GetTypedConfig(), &tlsv3.UpstreamTlsContext{})
		checkCommonTLS(t, utls.GetCommonTlsContext())
		if _, ok := c.TypedExtensionProtocolOptions[httpProtocolOptionsKey]; !ok {
			t.Error("connect_originate has no HTTP/2 protocol options")
		}
	})

	t.Run("clusters and endpoints", func(t *testing.T) {
		var names []string
		for _, c := range tr.Clusters {
			names = append(names, c.Name)
		}
		want := []string{
			ConnectOriginate, MainInternal,
			"outbound|80||reviews-v1.shop.svc.cluster.local", "outbound|80||reviews-v2.shop.svc.cluster.local",
			"outbound|80||reviews.shop.svc.cluster.local",
			"outbound|8080||ratings.shop.svc.cluster.local", "outbound|9090||ratings.shop.svc.cluster.local",
		}
		if slices.Sort(want); !slices.Equal(names, want) {
			t.Errorf("clusters\n got %v\nwant %v", names, want)
		}
		mi := cluster(t, tr, MainInternal)
		if mi.GetType() != clusterv3.Cluster_STATIC ||
			mi.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetEnvoyInternalAddress().GetServerListenerName() != MainInternal {
			t.Errorf("cluster %s does not reach the internal listener %s", MainInternal, MainInternal)
		}
		svcCluster := cluster(t, tr, "outbound|9090||ratings.shop.svc.cluster.local")
		if svcCluster.GetType() != clusterv3.Cluster_EDS || svcCluster.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil {
			t.Errorf("service cluster is not EDS over ADS")
		}
		iu := unpack(t, svcCluster.GetTransportSocket().GetTypedConfig(), &internalupstreamv3.InternalUpstreamTransport{})
		if len(iu.PassthroughMetadata) != 1 || iu.PassthroughMetadata[0].Name != originalDstFilter {
			t.Errorf("service cluster passes metadata %v, want %s", iu.PassthroughMetadata, originalDstFilter)
		}
		var eps []string
		for _, cla := range tr.Endpoints {
			for _, loc := range cla.Endpoints {
				for _, lb := range loc.LbEndpoints {
					addr := lb.GetEndpoint().GetAddress().GetEnvoyInternalAddress()
					local := lb.GetMetadata().GetFilterMetadata()[originalDstFilter].GetFields()["local"].GetStringValue()
					if addr.GetServerListenerName() != ConnectOriginate || addr.GetEndpointId() != local {
						t.Errorf("%s: endpoint %v with local %q, want connect_originate with the same endpoint ID", cla.ClusterName, addr, local)
					}
					eps = append(eps, cla.ClusterName+" "+local)
				}
			}
		}
		wantEps := []string{ // by cluster name, then IP
			"outbound|8080||ratings.shop.svc.cluster.local 10.0.2.1:8080",
			"outbound|8080||ratings.shop.svc.cluster.local 10.0.2.2:8080",
			"outbound|80||reviews-v1.shop.svc.cluster.local 10.0.1.1:9080",
			"outbound|80||reviews-v2.shop.svc.cluster.local 10.0.1.2:9080",
			"outbound|9090||ratings.shop.svc.cluster.local 10.0.2.1:9090", // no targetPort: the port
			"outbound|9090||ratings.shop.svc.cluster.local 10.0.2.2:9090",
		}
		if !slices.Equal(eps, wantEps) {
			t.Errorf("endpoints\n got %v\nwant %v", eps, wantEps)
		}
	})

	t.Run("routes", func(t *testing.T) {
		rc := routeConfig(t, tr, ChainName("reviews.shop.svc.cluster.local", 80))
		routes := rc.VirtualHosts[0].Routes
		if len(routes) != 2 {
			t.Fatalf("%d routes, want 2", len(routes))
		}
		// The exact match sorts first though its rule comes second.
		if routes[0].GetMatch().GetPath() != "/healthz" || routes[0].GetRoute().GetCluster() != "outbound|80||reviews-v1.shop.svc.cluster.local" {
			t.Errorf("first route %v, want /healthz to reviews-v1", routes[0])
		}
		split := routes[1].GetRoute()
		var weights []string
		for _, c := range split.GetWeightedClusters().GetClusters() {
			weights = append(weights, fmt.Sprintf("%s=%d", c.Name, c.GetWeight().GetValue()))
		}
		if want := []string{"outbound|80||reviews-v1.shop.svc.cluster.local=80", "outbound|80||reviews-v2.shop.svc.cluster.local=20"}; !slices.Equal(weights, want) {
			t.Errorf("weights %v, want %v", weights, want)
		}
		if split.GetTimeout().AsDuration().Seconds() != 5 || routes[1].GetMatch().GetPrefix() != "/" {
			t.Errorf("split route: match %v timeout %v, want prefix / and 5s", routes[1].GetMatch(), split.GetTimeout())
		}
		def := routeConfig(t, tr, ChainName("ratings.shop.svc.cluster.local", 8080)).VirtualHosts[0].Routes
		if len(def) != 1 || def[0].GetRoute().GetCluster() != "outbound|8080||ratings.shop.svc.cluster.local" || def[0].GetRoute().GetTimeout().AsDuration() != 0 {
			t.Errorf("ratings routes %v, want one default route to its own cluster without timeout", def)
		}
	})
}

func checkCommonTLS(t *testing.T, c *tlsv3.CommonTlsContext) {
	t.Helper()
	p := c.GetTlsParams()
	if p.GetTlsMinimumProtocolVersion() != tlsv3.TlsParameters_TLSv1_3 || p.GetTlsMaximumProtocolVersion() != tlsv3.TlsParameters_TLSv1_3 {
		t.Errorf("TLS versions %v..%v, want 1.3 only", p.GetTlsMinimumProtocolVersion(), p.GetTlsMaximumProtocolVersion())
	}
	if len(c.TlsCertificateSdsSecretConfigs) != 1 || c.TlsCertificateSdsSecretConfigs[0].Name != SecretCertificate ||
		c.TlsCertificateSdsSecretConfigs[0].GetSdsConfig().GetAds() == nil {
		t.Errorf("certificate from %v, want SDS %q over ADS", c.TlsCertificateSdsSecretConfigs, SecretCertificate)
	}
	if v := c.GetValidationContextSdsSecretConfig(); v.GetName() != SecretRoots || v.GetSdsConfig().GetAds() == nil {
		t.Errorf("validation from %v, want SDS %q over ADS", v, SecretRoots)
	}
	if !slices.Equal(c.AlpnProtocols, []string{"h2"}) {
		t.Errorf("ALPN %v, want h2", c.AlpnProtocols)
	}
}

// TestRBACDecisions asks the generated RBAC of the fixture for decisions.
func TestRBACDecisions(t *testing.T) {
	tr := translate(t, fixture())
	reviews := chainFilters(t, tr, ChainName("reviews.shop.svc.cluster.local", 80))
	ratings8080 := chainFilters(t, tr, ChainName("ratings.shop.svc.cluster.local", 8080))
	ratings9090 := chainFilters(t, tr, ChainName("ratings.shop.svc.cluster.local", 9090))
	for _, tc := range []struct {
		name    string
		chain   []rbacFilter
		q       request
		allowed bool
		by      string
	}{
		{"frontend GET", reviews, request{principal: frontend, method: "GET", path: "/api"}, true, ""},
		{"frontend DELETE /admin", reviews, request{principal: frontend, method: "DELETE", path: "/admin/users"}, false, rbacDenyFilter},
		{"frontend DELETE /administrator", reviews, request{principal: frontend, method: "DELETE", path: "/administrator"}, false, rbacDenyFilter},
		{"frontend DELETE /admin?x", reviews, request{principal: frontend, method: "DELETE", path: "/admin?force=1"}, false, rbacDenyFilter},
		{"frontend DELETE elsewhere", reviews, request{principal: frontend, method: "DELETE", path: "/api/admin"}, true, ""},
		{"frontend GET /admin", reviews, request{principal: frontend, method: "GET", path: "/admin"}, true, ""},
		{"other caller", reviews, request{principal: other, method: "GET", path: "/"}, false, rbacAllowFilter},
		{"no identity carried", reviews, request{noPrincipal: true, method: "GET", path: "/"}, false, rbacDenyFilter},
		{"empty identity", reviews, request{method: "GET", path: "/"}, false, rbacDenyFilter},
		{"two URI SANs", reviews, request{principal: "spiffe://evil/x," + frontend, method: "GET", path: "/"}, false, rbacDenyFilter},
		{"ratings 8080 frontend", ratings8080, request{principal: frontend, method: "GET", path: "/"}, true, ""},
		// ratings-from-shop allows port 8080 only: on 9090 its ALLOW layer allows nothing.
		{"ratings 9090 frontend", ratings9090, request{principal: frontend, method: "GET", path: "/"}, false, rbacAllowWorkloadFilter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, by := allowed(t, tc.chain, tc.q)
			if ok != tc.allowed || by != tc.by {
				t.Errorf("allowed %v (by %q), want %v (by %q)", ok, by, tc.allowed, tc.by)
			}
		})
	}
}

// TestWorkloadLayerAgreesWithEvaluate checks that the L4 layer decides as policy.Evaluate
// does in the agent, for a set of L4 policies, callers and ports.
func TestWorkloadLayerAgreesWithEvaluate(t *testing.T) {
	labels := map[string]string{"app": "ratings"}
	policies := []policy.Policy{
		{Name: "deny-elsewhere", Namespace: "shop", Action: policy.Deny,
			Rules: []policy.Rule{{From: []policy.Source{{NotNamespaces: []string{"shop", "prod-*"}}}}}},
		{Name: "deny-curl-9090", Namespace: "amesh-system", Action: policy.Deny,
			Rules: []policy.Rule{{From: []policy.Source{{Principals: []string{"*/sa/curl"}}}, To: []policy.Operation{{Ports: []uint16{9090}}}}}},
		{Name: "allow-some", Namespace: "shop", Selector: labels,
			Rules: []policy.Rule{
				{From: []policy.Source{{Principals: []string{"cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/prod-eu/*"}}}},
				{From: []policy.Source{{Namespaces: []string{"*"}, NotPrincipals: []string{"*/sa/other"}}}, To: []policy.Operation{{NotPorts: []uint16{8080}}}},
			}},
		{Name: "not-mine", Namespace: "shop", Selector: map[string]string{"app": "reviews"}, Action: policy.Deny, Rules: []policy.Rule{{}}},
	}
	cfg := waypoint.Config{
		Name: "waypoint", Namespace: "shop", Identity: waypointID, RootNamespace: "amesh-system", Policies: policies,
		Services: []waypoint.Service{svc("ratings", []string{"10.96.0.20"}, []waypoint.Port{{Port: 80, TargetPort: 8080}, {Port: 90, TargetPort: 9090}},
			ep("ratings-1", "10.0.2.1", labels))},
	}
	tr := translate(t, cfg)
	callers := []string{frontend, other, outsider, "spiffe://cluster.local/ns/prod-eu/sa/api", "spiffe://cluster.local/ns/prod-us/sa/curl",
		"spiffe://cluster.local/ns/shop/sa/curl", "spiffe://cluster.local/weird-shape"}
	for _, p := range []struct{ port, target uint16 }{{80, 8080}, {90, 9090}} {
		chain := chainFilters(t, tr, ChainName("ratings.shop.svc.cluster.local", p.port))
		for _, caller := range callers {
			want := policy.Evaluate(policies, policy.Request{SrcPrincipal: caller, DstNamespace: "shop", DstLabels: labels, DstPort: p.target}, "amesh-system")
			got, by := allowed(t, chain, request{principal: caller, method: "GET", path: "/"})
			if got != want.Allowed {
				t.Errorf("port %d, %s: Envoy RBAC allows %v (by %q), policy.Evaluate %v (%s)", p.target, caller, got, by, want.Allowed, want.Reason)
			}
		}
	}
}

// TestFailClosed: input the translation cannot express is reported and denies more, never less.
func TestFailClosed(t *testing.T) {
	base := func(ps ...policy.Policy) waypoint.Config {
		return waypoint.Config{
			Name: "waypoint", Namespace: "shop", Identity: waypointID, Policies: ps,
			Services: []waypoint.Service{svc("ratings", []string{"10.96.0.20"}, []waypoint.Port{{Port: 80, TargetPort: 8080}},
				ep("ratings-1", "10.0.2.1", map[string]string{"app": "ratings"}))},
		}
	}
	chain := ChainName("ratings.shop.svc.cluster.local", 80)
	get := request{principal: frontend, method: "GET", path: "/"}
	del := request{principal: frontend, method: "DELETE", path: "/admin"}
	debug := request{principal: frontend, method: "GET", path: "/", headers: map[string]string{"x-debug": "1"}}
	out := request{principal: outsider, method: "GET", path: "/"}
	for _, tc := range []struct {
		name    string
		cfg     waypoint.Config
		problem string // substring of a problem
		checks  map[string]bool
	}{
		{
			name: "allow with an unsupported condition key allows nothing",
			cfg: base(policy.Policy{Name: "allow-jwt", Namespace: "shop", TargetRefs: waypointRef(), Rules: []policy.Rule{{
				From: []policy.Source{{Principals: []string{frontend}}},
				When: []policy.Condition{{Key: "request.auth.claims[iss]", Values: []string{"https://issuer"}}},
			}}}),
			problem: "when[0] (request.auth.claims[iss]): unsupported condition key",
			checks:  map[string]bool{"get": false, "delete": false},
		},
		{
			name: "deny with an unsupported condition key denies more",
			cfg: base(policy.Policy{Name: "deny-delete", Namespace: "shop", Action: policy.Deny, TargetRefs: waypointRef(), Rules: []policy.Rule{{
				To:   []policy.Operation{{Methods: []string{"DELETE"}}},
				When: []policy.Condition{{Key: "source.ip", Values: []string{"10.0.0.0/8"}}},
			}}}),
			problem: "that part is ignored, so the rule denies more requests",
			checks:  map[string]bool{"get": true, "delete": false},
		},
		{
			name: "deny with only an unsupported condition denies everything",
			cfg: base(policy.Policy{Name: "deny-when", Namespace: "shop", Action: policy.Deny, TargetRefs: waypointRef(), Rules: []policy.Rule{{
				When: []policy.Condition{{Key: "experimental.envoy.filters.x", Values: []string{"y"}}},
			}}}),
			problem: "unsupported condition key",
			checks:  map[string]bool{"get": false, "delete": false},
		},
		{
			name: "allow with a bad principal pattern allows nothing",
			cfg: base(policy.Policy{Name: "allow-bad", Namespace: "shop", TargetRefs: waypointRef(), Rules: []policy.Rule{{
				From: []policy.Source{{Principals: []string{"cluster.local/*/sa/*"}}},
			}}}),
			problem: "'*' may appear once",
			checks:  map[string]bool{"get": false},
		},
		{
			name: "deny with a bad path pattern denies all its methods",
			cfg: base(policy.Policy{Name: "deny-bad", Namespace: "shop", Action: policy.Deny, TargetRefs: waypointRef(), Rules: []policy.Rule{{
				To: []policy.Operation{{Methods: []string{"DELETE"}}, {Paths: []string{"/a*b*"}}},
			}}}),
			problem: "rules[0]: to[1]: paths",
			checks:  map[string]bool{"get": false, "delete": false},
		},
		{
			name:    "an unknown action is enforced as DENY",
			cfg:     base(policy.Policy{Name: "audit", Namespace: "shop", Action: "AUDIT", TargetRefs: waypointRef(), Rules: []policy.Rule{{}}}),
			problem: `action "AUDIT" is neither ALLOW nor DENY`,
			checks:  map[string]bool{"get": false},
		},
		{
			name: "waypoint policy ports are the service port the caller dialled",
			cfg: base(policy.Policy{Name: "allow-80", Namespace: "shop", TargetRefs: waypointRef(), Rules: []policy.Rule{{
				To: []policy.Operation{{Ports: []uint16{80}}},
			}}}),
			checks: map[string]bool{"get": true, "delete": true},
		},
		{
			name: "a waypoint policy on the target port does not match",
			cfg: base(policy.Policy{Name: "allow-8080", Namespace: "shop", TargetRefs: waypointRef(), Rules: []policy.Rule{{
				To: []policy.Operation{{Ports: []uint16{8080}}},
			}}}),
			checks: map[string]bool{"get": false},
		},
		{
			name: "conditions on headers, namespace and port",
			cfg: base(policy.Policy{Name: "allow-cond", Namespace: "shop", TargetRefs: waypointRef(), Rules: []policy.Rule{{
				When: []policy.Condition{
					{Key: "source.namespace", Values: []string{"shop"}},
					{Key: "destination.port", NotValues: []string{"81"}},
					{Key: "request.headers[X-Debug]", NotValues: []string{"*"}},
				},
			}}}),
			checks: map[string]bool{"get": true, "delete": true, "debug": false, "outsider": false},
		},
		{
			name:   "an ALLOW policy without rules denies everything",
			cfg:    base(policy.Policy{Name: "allow-nothing", Namespace: "shop", TargetRefs: waypointRef()}),
			checks: map[string]bool{"get": false},
		},
		{
			name: "a policy of another waypoint is not applied",
			cfg: base(policy.Policy{Name: "allow-nothing", Namespace: "shop",
				TargetRefs: []policy.TargetRef{{Kind: "Service", Name: "other-waypoint"}}}),
			checks: map[string]bool{"get": true, "delete": true},
		},
		{
			name: "endpoints with different workload policies deny everything",
			cfg: func() waypoint.Config {
				c := base(policy.Policy{Name: "v1-only", Namespace: "shop", Selector: map[string]string{"version": "v1"}, Rules: []policy.Rule{{}}})
				c.Services[0].Endpoints = append(c.Services[0].Endpoints, ep("ratings-2", "10.0.2.2", map[string]string{"app": "ratings", "version": "v1"}))
				return c
			}(),
			problem: "different workload policies",
			checks:  map[string]bool{"get": false},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := translate(t, tc.cfg)
			var problems []string
			for _, p := range tr.Problems {
				problems = append(problems, p.String())
			}
			if tc.problem != "" && !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tc.problem) }) {
				t.Errorf("problems %q, want one containing %q", problems, tc.problem)
			}
			if tc.problem == "" && len(problems) > 0 {
				t.Errorf("problems %q, want none", problems)
			}
			filters := chainFilters(t, tr, chain)
			for name, q := range map[string]request{"get": get, "delete": del, "debug": debug, "outsider": out} {
				want, ok := tc.checks[name]
				if !ok {
					continue
				}
				if got, by := allowed(t, filters, q); got != want {
					t.Errorf("%s: allowed %v (by %q), want %v", name, got, by, want)
				}
			}
		})
	}
}

func TestRouteProblems(t *testing.T) {
	cfg := fixture()
	cfg.Routes = append(cfg.Routes, workload.Route{
		Name: "broken", Namespace: "shop", Parents: []workload.RouteParent{{Service: "ratings", Port: 8080}},
		Rules: []workload.RouteRule{
			{Matches: []workload.RouteMatch{{Path: "/a"}}, Backends: []workload.RouteBackend{{Service: "ghost", Port: 80, Weight: 50}, {Service: "ratings", Port: 8080, Weight: 50}}},
			{Matches: []workload.RouteMatch{{Path: "/b"}}, Backends: []workload.RouteBackend{{Service: "ratings", Port: 1, Weight: 1}}},
			{Matches: []workload.RouteMatch{{Path: "/c"}}, Backends: []workload.RouteBackend{{Service: "ratings", Port: 8080, Weight: 0}}},
			{Matches: []workload.RouteMatch{{Path: "no-slash"}}, Backends: []workload.RouteBackend{{Service: "ratings", Port: 8080, Weight: 1}}},
		},
	})
	tr := translate(t, cfg)
	var problems []string
	for _, p := range tr.Problems {
		problems = append(problems, p.String())
	}
	for _, want := range []string{
		"route shop/broken: rules[0].backendRefs[0]: service shop/ghost port 80 is unknown to the waypoint: its share of the requests gets 500",
		"route shop/broken: rules[1].backendRefs[0]: service shop/ratings port 1 is unknown",
		"route shop/broken: rules[2]: sends nowhere",
		"route shop/broken: rules[3].matches[0]: path \"no-slash\" must start with /",
	} {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, want) }) {
			t.Errorf("problems %q\nwant one containing %q", problems, want)
		}
	}
	routes := routeConfig(t, tr, ChainName("ratings.shop.svc.cluster.local", 8080)).VirtualHosts[0].Routes
	byPath := map[string]*routev3.RouteAction{}
	for _, r := range routes {
		byPath[r.GetMatch().GetPathSeparatedPrefix()] = r.GetRoute()
		if a := r.GetRoute(); a.GetClusterNotFoundResponseCode() != routev3.RouteAction_INTERNAL_SERVER_ERROR {
			t.Errorf("route %s: cluster_not_found_response_code %v, want 500", r.Name, a.GetClusterNotFoundResponseCode())
		}
	}
	if len(routes) != 3 {
		t.Errorf("%d routes, want 3 (the bad match left out; a route attached means no default)", len(routes))
	}
	if w := byPath["/a"].GetWeightedClusters().GetClusters(); len(w) != 2 || w[0].Name != invalidBackendCluster {
		t.Errorf("/a splits %v, want half to %s", w, invalidBackendCluster)
	}
	for _, p := range []string{"/b", "/c"} {
		if c := byPath[p].GetCluster(); c != invalidBackendCluster {
			t.Errorf("%s goes to %q, want %s (500)", p, c, invalidBackendCluster)
		}
	}
	for _, c := range tr.Clusters {
		if c.Name == invalidBackendCluster {
			t.Errorf("cluster %s exists: its requests would not get 500", invalidBackendCluster)
		}
	}
	// The route on port 8080 only: 9090 keeps its default route.
	if r := routeConfig(t, tr, ChainName("ratings.shop.svc.cluster.local", 9090)).VirtualHosts[0].Routes; len(r) != 1 || r[0].Name != "default" {
		t.Errorf("ratings:9090 routes %v, want the default", r)
	}
}

func TestResourcesErrors(t *testing.T) {
	okOpts, _ := testOptions(t)
	otherCA, err := identity.NewCA(spiffeid.RequireTrustDomainFromString("other.example"), identity.CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		cfg     func(*waypoint.Config)
		opts    func(*Options)
		want    string
		invalid bool
	}{
		{name: "no identity", cfg: func(c *waypoint.Config) { c.Identity = spiffeid.ID{} }, want: "has no identity", invalid: true},
		{name: "no name", cfg: func(c *waypoint.Config) { c.Name = "" }, want: "no name or namespace", invalid: true},
		{name: "duplicate VIP:port", cfg: func(c *waypoint.Config) {
			c.Services[1].VIPs = append(c.Services[1].VIPs, netip.MustParseAddr("10.96.0.20"))
			c.Services[1].Ports = append(c.Services[1].Ports, waypoint.Port{Port: 8080})
		}, want: "both listen on 10.96.0.20:8080", invalid: true},
		{name: "no hostname", cfg: func(c *waypoint.Config) { c.Backends[0].Hostname = "" }, want: "service shop/reviews-v1 has no hostname", invalid: true},
		{name: "port 0", cfg: func(c *waypoint.Config) { c.Services[0].Ports[0].Port = 0 }, want: "port 0", invalid: true},
		{name: "endpoint without IP", cfg: func(c *waypoint.Config) { c.Services[0].Endpoints[0].IP = netip.Addr{} }, want: "has no IP", invalid: true},
		{name: "no SVID source", opts: func(o *Options) { o.SVID = nil }, want: "Options.SVID and Options.Bundles are required"},
		{name: "SVID of another identity", cfg: func(c *waypoint.Config) {
			c.Identity = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/impostor")
		}, want: "not the waypoint's identity"},
		{name: "no bundle for a trust domain", opts: func(o *Options) {
			o.TrustDomains = []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("federated.example")}
		}, want: "bundle of trust domain federated.example"},
		{name: "bundles of another trust domain", opts: func(o *Options) { o.Bundles = otherCA }, want: "bundle of trust domain cluster.local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, opts := fixture(), okOpts
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			if tc.opts != nil {
				tc.opts(&opts)
			}
			tr, err := Resources(cfg, opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if tr != nil {
				t.Error("resources returned with an error")
			}
			if errors.Is(err, ErrInvalidConfig) != tc.invalid {
				t.Errorf("errors.Is(err, ErrInvalidConfig) = %v, want %v", !tc.invalid, tc.invalid)
			}
		})
	}
}

func TestReportedGaps(t *testing.T) {
	cfg := fixture()
	cfg.Workloads = []waypoint.Endpoint{ep("pod", "10.0.9.9", nil)}
	cfg.Services[0].Endpoints[0].Identity = spiffeid.RequireFromString("spiffe://foreign.example/ns/shop/sa/x")
	tr := translate(t, cfg)
	var problems []string
	for _, p := range tr.Problems {
		problems = append(problems, p.String())
	}
	for _, want := range []string{"pod-addressed traffic to 1 workloads", "trust domain foreign.example, which the waypoint does not accept"} {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, want) }) {
			t.Errorf("problems %q, want one containing %q", problems, want)
		}
	}

	empty := translate(t, waypoint.Config{Name: "waypoint", Namespace: "shop", Identity: waypointID})
	for _, l := range empty.Listeners {
		if l.Name == MainInternal {
			t.Error("main_internal generated without a chain (Envoy refuses a listener without filter chains)")
		}
	}
	if len(empty.Problems) != 1 || !strings.Contains(empty.Problems[0].Message, "fronts no service") {
		t.Errorf("problems %v, want the waypoint fronting no service", empty.Problems)
	}
}
