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
	_ NodeSource = (*Cache)(nil)
	_ Issuer     = (*CA)(nil)
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

// Subject is a workload of this node whose SVID a NodeSource holds: the SPIFFE ID amesh computed
// for it, and what a SPIRE agent selects on (its pod's namespace, service account, name, UID,
// node).
type Subject struct {
	ID             spiffeid.ID
	UID            string
	Name           string
	Namespace      string
	ServiceAccount string
	Node           string
}

// NodeSource is the Source of a node agent: it holds the SVIDs of the workloads enrolled on its
// node, from enrollment (Hold) to unenrollment (Release). The built-in CA's Cache is one and the
// SPIRE agent's Delegated Identity API (identity/spire) another; the agent does not know which
// it runs on.
type NodeSource interface {
	Source
	Revoker
	// Hold starts holding the SVID of s and waits, within ctx, for the source's first answer.
	// It fails when the source cannot serve s at all. A source that answers "no SVID for s yet"
	// (SPIRE with no registration entry for it) holds it all the same and says why in Check: an
	// SVID issued later (an entry created after the pod) then reaches it.
	Hold(ctx context.Context, s Subject) error
	// Release stops holding for the workload uid (it left the node); an identity nobody holds
	// any more is dropped with its key.
	Release(uid string)
	// Check says, without waiting, whether a current SVID of id is held: nil, or why not (the
	// reason a connection of that identity is refused).
	Check(id spiffeid.ID) error
	// Held describes every identity held, for the admin API and metrics.
	Held() []Held
	// Ready is nil when the source can serve, else why not (the agent's readiness says it).
	Ready() error
	// Close stops the source and drops every key.
	Close() error
}

// Held is one identity a NodeSource holds.
type Held struct {
	ID spiffeid.ID
	// Source names who issued it: "builtin" (the built-in CA) or "spire".
	Source string
	// SVID is the current SVID; nil when none is held, Err says why.
	SVID *x509svid.SVID
	Err  error
	// Selectors are what the SVID was asked with (SPIRE), for the operator's eye.
	Selectors []string
}

// Source names.
const (
	SourceBuiltin = "builtin"
	SourceSPIRE   = "spire"
)
