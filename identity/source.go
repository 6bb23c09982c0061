package identity

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source hands out X.509-SVIDs and trust bundles for the identities of this node's workloads
// (DESIGN §4). Implementations are safe for concurrent use.
type Source interface {
	// SVID returns the current X.509-SVID for id, fetching or issuing it if it is not held yet.
	// It blocks until the SVID is available, ctx is done, or the fetch fails.
	SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error)
	// Watch returns a channel that receives a value each time the SVID of id is replaced
	// (rotation), and a function that stops the watch. The channel is buffered by one and a
	// notification is dropped when one is already pending: readers must re-read SVID.
	Watch(id spiffeid.ID) (<-chan struct{}, func())
	// Source gives the trust bundle of a trust domain, used to verify peers.
	x509bundle.Source
}

// Issuer mints a fresh X.509-SVID for an identity. The built-in CA is one; a Cache turns any
// Issuer into a Source.
type Issuer interface {
	// Issue returns a new X.509-SVID for id.
	Issue(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error)
	// Source gives the trust bundle that verifies what Issue returns.
	x509bundle.Source
}

var (
	_ Source = (*Cache)(nil)
	_ Issuer = (*CA)(nil)
)

// Revoker is an Issuer that can revoke identities before their SVIDs expire (a SPIRE agent
// that evicts a workload, a CA with a revocation list). The node agent ends every open
// connection of a revoked identity, as it does for a policy change that denies it. The
// built-in CA revokes nothing.
type Revoker interface {
	// Revocations returns a channel that receives each identity revoked from now on, and a
	// function that stops the subscription.
	Revocations() (<-chan spiffeid.ID, func())
}
