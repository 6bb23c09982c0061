package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/amesh-dev/amesh/identity"
)

const alpnH2 = "h2"

var errNoClientCert = errors.New("client presented no certificate")

// tlsCertificate turns an SVID into what crypto/tls presents.
func tlsCertificate(s *x509svid.SVID) *tls.Certificate {
	chain := make([][]byte, len(s.Certificates))
	for i, c := range s.Certificates {
		chain[i] = c.Raw
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
}

// verifyPeer checks raw as an X.509-SVID against src's bundles and returns its ID, with a
// Reason for every way it can fail. go-spiffe does the chain and SVID checks; classifying its
// error is what lets each refusal be counted for what it was.
func verifyPeer(src identity.Source, raw [][]byte, now time.Time) (spiffeid.ID, error) {
	if len(raw) == 0 {
		return spiffeid.ID{}, refuse(ReasonNoClientCert, errNoClientCert)
	}
	id, _, err := x509svid.ParseAndVerify(raw, src, x509svid.WithTime(now))
	if err == nil {
		return id, nil
	}
	var invalid x509.CertificateInvalidError
	var unknown x509.UnknownAuthorityError
	switch {
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		if invalid.Cert != nil && now.Before(invalid.Cert.NotBefore) {
			return id, refuse(ReasonCertNotYetValid, err)
		}
		return id, refuse(ReasonCertExpired, err)
	case errors.As(err, &unknown):
		return id, refuse(ReasonUntrusted, err)
	case !id.IsZero():
		if _, berr := src.GetX509BundleForTrustDomain(id.TrustDomain()); berr != nil {
			return id, refuse(ReasonWrongTrustDomain, err)
		}
		return id, refuse(ReasonNotSVID, err)
	default:
		return id, refuse(ReasonNotSVID, err)
	}
}

// serverTLS is the TLS configuration of one listener, presenting local's SVID. No SNI is read:
// HBONE is addressed to an IP, and the listener says which pod it serves.
func serverTLS(src identity.Source, local spiffeid.ID) *tls.Config {
	base := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpnH2},
		// Verification is ours (verifyPeer) so a missing certificate is classified too.
		ClientAuth: tls.RequestClientCert,
		// Resumption would skip VerifyPeerCertificate and outlive a rotation or an expiry.
		SessionTicketsDisabled:      true,
		DynamicRecordSizingDisabled: true,
		GetCertificate: func(hi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			s, err := src.SVID(hi.Context(), local)
			if err != nil {
				return nil, fmt.Errorf("tunnel: no SVID for %s: %w", local, err)
			}
			return tlsCertificate(s), nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := verifyPeer(src, raw, time.Now())
			return err
		},
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Refuse early, with a reason, what the handshake would refuse with a generic alert.
		GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			if !slices.Contains(hi.SupportedVersions, tls.VersionTLS13) {
				return nil, refuse(ReasonTLSVersion, fmt.Errorf("client offers TLS versions %x, not TLS 1.3", hi.SupportedVersions))
			}
			if !slices.Contains(hi.SupportedProtos, alpnH2) {
				return nil, refuse(ReasonALPN, fmt.Errorf("client offers ALPN %q, not h2", hi.SupportedProtos))
			}
			return base, nil
		},
	}
}

// clientTLS is the TLS configuration for one HBONE connection from local to a server that must
// prove exactly want (not just any identity of the trust domain). The leaf it presents is
// stored in *presented.
func clientTLS(src identity.Source, local, want spiffeid.ID, presented **x509.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: []string{alpnH2},
		// The server is authenticated by its SPIFFE ID in VerifyPeerCertificate, not a host name
		// (the go-spiffe tlsconfig way); no SNI is sent for an IP destination.
		InsecureSkipVerify:          true,
		DynamicRecordSizingDisabled: true,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			s, err := src.SVID(cri.Context(), local)
			if err != nil {
				return nil, fmt.Errorf("tunnel: no SVID for %s: %w", local, err)
			}
			*presented = s.Certificates[0]
			return tlsCertificate(s), nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := verifyPeer(src, raw, time.Now())
			if err != nil {
				return err
			}
			if id != want {
				return refuse(ReasonWrongServerID, fmt.Errorf("server is %s, want %s", id, want))
			}
			return nil
		},
	}
}

// classifyHandshake gives a failed handshake its Reason.
func classifyHandshake(ctx context.Context, err error) error {
	var re *RefusedError
	if errors.As(err, &re) {
		return re
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return refuse(ReasonHandshakeTimeout, err)
	}
	var alert tls.AlertError
	if errors.As(err, &alert) {
		switch alert {
		case 116: // certificate_required (RFC 8446 §6.2): the server wants a client certificate
			return refuse(ReasonNoClientCert, err)
		case 70: // protocol_version
			return refuse(ReasonTLSVersion, err)
		case 120: // no_application_protocol
			return refuse(ReasonALPN, err)
		}
	}
	return refuse(ReasonHandshake, err)
}

// peerID reads the verified SPIFFE ID of an established session.
func peerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, refuse(ReasonNoClientCert, errNoClientCert)
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, refuse(ReasonNotSVID, err)
	}
	return id, nil
}
