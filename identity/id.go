// Package identity names workloads with SPIFFE IDs and hands out their X.509-SVIDs and trust
// bundles: a built-in CA for local mode and tests, and a cache that issues on demand, once per
// identity however many callers ask at once, and rotates each SVID at half its lifetime.
package identity

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrNotWorkloadID is returned when a SPIFFE ID does not have the workload shape
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
var ErrNotWorkloadID = errors.New("identity: not a workload SPIFFE ID (want spiffe://<td>/ns/<namespace>/sa/<service-account>)")

// Kubernetes names: a namespace is a DNS-1123 label, a service account a DNS-1123 subdomain.
var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// Workload is the namespace and service account a workload SPIFFE ID names.
type Workload struct {
	TrustDomain    spiffeid.TrustDomain
	Namespace      string
	ServiceAccount string
}

// ID returns the SPIFFE ID of w.
func (w Workload) ID() (spiffeid.ID, error) {
	return WorkloadID(w.TrustDomain, w.Namespace, w.ServiceAccount)
}

// WorkloadID returns spiffe://<td>/ns/<namespace>/sa/<serviceAccount>, refusing names that are not
// valid Kubernetes namespace and service-account names (so no ID can smuggle extra path segments).
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, errors.New("identity: empty trust domain")
	}
	if len(namespace) > 63 || !dnsLabel.MatchString(namespace) {
		return spiffeid.ID{}, fmt.Errorf("identity: namespace %q is not a DNS-1123 label", namespace)
	}
	if len(serviceAccount) > 253 || !dnsSubdomain.MatchString(serviceAccount) {
		return spiffeid.ID{}, fmt.Errorf("identity: service account %q is not a DNS-1123 subdomain", serviceAccount)
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: build ID for %s/%s: %w", namespace, serviceAccount, err)
	}
	return id, nil
}

// ParseWorkload parses a workload SPIFFE ID and returns what it names.
func ParseWorkload(id spiffeid.ID) (Workload, error) {
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) != 4 || segs[0] != "ns" || segs[2] != "sa" {
		return Workload{}, fmt.Errorf("%w: %s", ErrNotWorkloadID, id)
	}
	w := Workload{TrustDomain: id.TrustDomain(), Namespace: segs[1], ServiceAccount: segs[3]}
	if _, err := w.ID(); err != nil {
		return Workload{}, fmt.Errorf("%w: %s: %w", ErrNotWorkloadID, id, err)
	}
	return w, nil
}

// ParseWorkloadString parses s as a SPIFFE ID and then as a workload ID.
func ParseWorkloadString(s string) (Workload, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Workload{}, fmt.Errorf("identity: parse %q: %w", s, err)
	}
	return ParseWorkload(id)
}
