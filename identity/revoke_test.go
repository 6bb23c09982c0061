package identity

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// revokingIssuer is a CA that can also revoke, as a SPIRE-backed issuer will.
type revokingIssuer struct {
	*CA
	c chan spiffeid.ID
}

func (r revokingIssuer) Revocations() (<-chan spiffeid.ID, func()) { return r.c, func() {} }

// TestCacheRevocations: the cache passes on what an issuer that revokes says, and gives a
// channel that never delivers for one that cannot (the built-in CA).
func TestCacheRevocations(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := NewCA(td, CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	plain := NewCache(ca, nil)
	defer plain.Close()
	if ch, stop := plain.Revocations(); ch != nil {
		stop()
		t.Error("the built-in CA's cache offers revocations")
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	ri := revokingIssuer{CA: ca, c: make(chan spiffeid.ID, 1)}
	c := NewCache(ri, nil)
	defer c.Close()
	ch, stop := c.Revocations()
	defer stop()
	ri.c <- id
	select {
	case got := <-ch:
		if got != id {
			t.Errorf("revoked %s, want %s", got, id)
		}
	case <-time.After(time.Second):
		t.Fatal("the revocation did not come through the cache")
	}
}
