package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DefaultSVIDTTL is the lifetime of a leaf X.509-SVID issued by the built-in CA unless set otherwise.
const DefaultSVIDTTL = 24 * time.Hour

// Names of the CA's files in its directory (see LoadCA and CA.WriteFiles).
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

const rootTTL = 365 * 24 * time.Hour

// CAConfig tunes a built-in CA. The zero value is usable.
type CAConfig struct {
	// SVIDTTL is the lifetime of issued leaf SVIDs; DefaultSVIDTTL when zero.
	SVIDTTL time.Duration
	// Now is the clock; time.Now when nil. Tests move it to mint expired or future certificates.
	Now func() time.Time
}

// CA is the built-in certificate authority of local mode and tests: an ECDSA P-256 root held in
// memory (or loaded from disk) that signs short-lived leaf X.509-SVIDs carrying exactly one URI SAN,
// the workload's SPIFFE ID, and no DNS SAN.
type CA struct {
	td     spiffeid.TrustDomain
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	bundle *x509bundle.Bundle
	ttl    time.Duration
	now    func() time.Time
	issued atomic.Uint64
}

// NewCA creates a CA for td with a freshly generated root.
func NewCA(td spiffeid.TrustDomain, cfg CAConfig) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("identity: new CA: empty trust domain")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: new CA: generate root key: %w", err)
	}
	now := clock(cfg.Now)()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"amesh"}, CommonName: "amesh root CA " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(rootTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("identity: new CA: sign root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: new CA: parse root: %w", err)
	}
	return newCA(td, cert, key, cfg), nil
}

// LoadCA reads a CA root certificate and key written by WriteFiles from dir.
func LoadCA(td spiffeid.TrustDomain, dir string, cfg CAConfig) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("identity: load CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("identity: load CA: %w", err)
	}
	return ParseCA(td, certPEM, keyPEM, cfg)
}

// ParseCA makes a CA of a root certificate and its key in PEM, as PEM returns them.
func ParseCA(td spiffeid.TrustDomain, certPEM, keyPEM []byte, cfg CAConfig) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("identity: load CA: %s: no CERTIFICATE PEM block", CACertFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("identity: load CA: parse %s: %w", CACertFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("identity: load CA: %s is not a CA certificate", CACertFile)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("identity: load CA: %s: no PEM block", CAKeyFile)
	}
	anyKey, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("identity: load CA: parse %s: %w", CAKeyFile, err)
	}
	key, ok := anyKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("identity: load CA: %s is not an ECDSA P-256 key", CAKeyFile)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("identity: load CA: %s does not match %s", CAKeyFile, CACertFile)
	}
	return newCA(td, cert, key, cfg), nil
}

func newCA(td spiffeid.TrustDomain, cert *x509.Certificate, key *ecdsa.PrivateKey, cfg CAConfig) *CA {
	ttl := cfg.SVIDTTL
	if ttl <= 0 {
		ttl = DefaultSVIDTTL
	}
	return &CA{
		td:     td,
		cert:   cert,
		key:    key,
		bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{cert}),
		ttl:    ttl,
		now:    clock(cfg.Now),
	}
}

// PEM returns the root certificate and its key (PKCS #8) in PEM, the contents of CACertFile
// and CAKeyFile.
func (ca *CA) PEM() (certPEM, keyPEM []byte, err error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: marshal CA key: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}

// WriteFiles stores the root certificate and key in dir (the key readable by its owner only).
func (ca *CA) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("identity: write CA: %w", err)
	}
	certPEM, keyPEM, err := ca.PEM()
	if err != nil {
		return fmt.Errorf("identity: write CA: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, CACertFile), certPEM, 0o644); err != nil {
		return fmt.Errorf("identity: write CA: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return fmt.Errorf("identity: write CA: %w", err)
	}
	return nil
}

// TrustDomain returns the trust domain the CA signs for.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Root returns the CA's root certificate.
func (ca *CA) Root() *x509.Certificate { return ca.cert }

// Issued returns how many SVIDs the CA has signed.
func (ca *CA) Issued() uint64 { return ca.issued.Load() }

// GetX509BundleForTrustDomain returns the CA's bundle for its own trust domain and an error for any other.
func (ca *CA) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != ca.td {
		return nil, fmt.Errorf("identity: no X.509 bundle for trust domain %q (this CA signs %q)", td, ca.td)
	}
	return ca.bundle, nil
}

// Issue signs a new leaf X.509-SVID for id with a fresh P-256 key and the CA's TTL.
func (ca *CA) Issue(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	return ca.IssueWithTTL(ctx, id, ca.ttl)
}

// IssueWithTTL is Issue with a lifetime of ttl, starting at the CA clock's now.
func (ca *CA) IssueWithTTL(ctx context.Context, id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	now := ca.now()
	return ca.IssueValidity(ctx, id, now, now.Add(ttl))
}

// IssueValidity signs a leaf for id valid from notBefore to notAfter; tests use it to mint
// expired and not-yet-valid certificates.
func (ca *CA) IssueValidity(ctx context.Context, id spiffeid.ID, notBefore, notAfter time.Time) (*x509svid.SVID, error) {
	return ca.issue(ctx, id, notBefore, notAfter, nil)
}

// IssueWithIPs is Issue plus IP address SANs, for peers that verify a host name as well as the
// SPIFFE ID (ghostunnel and stunnel in the benchmarks). The SPIFFE X.509-SVID spec allows SANs
// besides the one URI SAN; amesh's own SVIDs carry none.
func (ca *CA) IssueWithIPs(ctx context.Context, id spiffeid.ID, ips []net.IP) (*x509svid.SVID, error) {
	now := ca.now()
	return ca.issue(ctx, id, now, now.Add(ca.ttl), ips)
}

func (ca *CA) issue(ctx context.Context, id spiffeid.ID, notBefore, notAfter time.Time, ips []net.IP) (*x509svid.SVID, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("identity: issue %s: %w", id, err)
	}
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("identity: issue %s: trust domain %q is not this CA's %q", id, id.TrustDomain(), ca.td)
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("identity: issue %s: empty validity", id)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: issue %s: generate key: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{Organization: []string{"amesh"}},
		URIs:         []*url.URL{id.URL()},
		IPAddresses:  ips,
		// A small back-date absorbs clock skew between nodes without skewing rotation much.
		NotBefore:             notBefore.Add(-min(time.Minute, notAfter.Sub(notBefore)/10)),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("identity: issue %s: sign: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: issue %s: parse: %w", id, err)
	}
	ca.issued.Add(1)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}, nil
}

func randomSerial() *big.Int {
	// 128 random bits; crypto/rand.Int only fails if the system RNG does, which Go treats as fatal.
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	return n
}

func clock(now func() time.Time) func() time.Time {
	if now == nil {
		return time.Now
	}
	return now
}
