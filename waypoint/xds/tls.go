package xds

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/amesh-dev/amesh/waypoint"
)

// alpnH2 is HBONE's only application protocol: HTTP/2, on which CONNECT runs.
const alpnH2 = "h2"

// adsSource points a resource reference (RDS, EDS, SDS) at the ADS stream the resource came on.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// commonTLS is the TLS of both HBONE hops: TLS 1.3 only (HBONE requires it, as tunnel does),
// ALPN h2, the waypoint's certificate and the SPIFFE roots from SDS.
func commonTLS() *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{
			TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		},
		AlpnProtocols: []string{alpnH2},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{
			Name:      SecretCertificate,
			SdsConfig: adsSource(),
		}},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{
				Name:      SecretRoots,
				SdsConfig: adsSource(),
			},
		},
	}
}

// downstreamTLS is connect_terminate's transport socket: a client certificate is required, and
// the SPIFFE validator in SecretRoots accepts it only from a trust domain whose bundle it holds.
func (b *builder) downstreamTLS() *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(&tlsv3.DownstreamTlsContext{
			CommonTlsContext:         commonTLS(),
			RequireClientCertificate: wrapperspb.Bool(true),
		})},
	}
}

// upstreamTLS is connect_originate's: the destination's agent must present an SVID of an
// accepted trust domain. Which workload it is cannot be checked per endpoint by an
// ORIGINAL_DST cluster, so a destination's own identity is not verified (istiod does not either).
func (b *builder) upstreamTLS() *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(&tlsv3.UpstreamTlsContext{
			CommonTlsContext: commonTLS(),
		})},
	}
}

type builtSecrets struct {
	secrets      []*tlsv3.Secret
	trustDomains []spiffeid.TrustDomain
}

// buildSecrets reads the waypoint's SVID and the bundles of the trust domains it accepts.
func buildSecrets(cfg waypoint.Config, opts Options) (builtSecrets, error) {
	if opts.SVID == nil || opts.Bundles == nil {
		return builtSecrets{}, errors.New("xds: Options.SVID and Options.Bundles are required")
	}
	svid, err := opts.SVID.GetX509SVID()
	if err != nil {
		return builtSecrets{}, fmt.Errorf("xds: get the waypoint's SVID: %w", err)
	}
	if svid.ID != cfg.Identity {
		return builtSecrets{}, fmt.Errorf("xds: the SVID source holds %s, not the waypoint's identity %s (check the service account the SVID was issued for)", svid.ID, cfg.Identity)
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return builtSecrets{}, fmt.Errorf("xds: encode the waypoint's SVID: %w", err)
	}

	tds := []spiffeid.TrustDomain{cfg.Identity.TrustDomain()}
	for _, td := range opts.TrustDomains {
		if !td.IsZero() && !slices.Contains(tds, td) {
			tds = append(tds, td)
		}
	}
	slices.SortFunc(tds, func(a, b spiffeid.TrustDomain) int { return cmp.Compare(a.Name(), b.Name()) })

	spiffe := &tlsv3.SPIFFECertValidatorConfig{}
	for _, td := range tds {
		bundle, err := opts.Bundles.GetX509BundleForTrustDomain(td)
		if err != nil {
			return builtSecrets{}, fmt.Errorf("xds: get the bundle of trust domain %s: %w", td, err)
		}
		pem, err := bundle.Marshal()
		if err != nil {
			return builtSecrets{}, fmt.Errorf("xds: encode the bundle of trust domain %s: %w", td, err)
		}
		if len(bundle.X509Authorities()) == 0 {
			return builtSecrets{}, fmt.Errorf("xds: the bundle of trust domain %s holds no root", td)
		}
		spiffe.TrustDomains = append(spiffe.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name:        td.Name(),
			TrustBundle: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pem}},
		})
	}

	b := &builder{}
	validator := b.any(spiffe)
	if b.err != nil {
		return builtSecrets{}, b.err
	}
	return builtSecrets{
		trustDomains: tds,
		secrets: []*tlsv3.Secret{
			{
				Name: SecretRoots,
				Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					// The SPIFFE validator checks the chain against the bundle of the trust domain
					// the peer's SPIFFE ID names, and refuses any other trust domain: that is the
					// trust-domain check, with federation for free. trusted_ca must stay unset.
					CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: spiffeValidator, TypedConfig: validator},
				}},
			},
			{
				Name: SecretCertificate,
				Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
					CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: certPEM}},
					PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: keyPEM}},
				}},
			},
		},
	}, nil
}
