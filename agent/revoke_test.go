package agent

import (
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestRevokeIdentity: a revoked identity's open connections end, each once, with a reason
// that names the revocation; other identities' connections are untouched.
func TestRevokeIdentity(t *testing.T) {
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	web := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	nosy := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/nosy")
	var mu sync.Mutex
	killed := map[*openConn]int{}
	add := func(src spiffeid.ID) *openConn {
		c := &openConn{src: src.String()}
		c.kill = func() { mu.Lock(); killed[c]++; mu.Unlock() }
		a.open.add(c)
		return c
	}
	w1, w2, n1 := add(web), add(web), add(nosy)
	tests := []struct {
		name string
		id   spiffeid.ID
		want int
	}{
		{"the revoked identity's connections end", web, 2},
		{"a second revocation ends nothing more", web, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := a.revokeIdentity(tt.id); n != tt.want {
				t.Errorf("revokeIdentity(%s) = %d, want %d", tt.id, n, tt.want)
			}
		})
	}
	for _, c := range []*openConn{w1, w2} {
		if killed[c] != 1 {
			t.Errorf("a connection of web was killed %d times, want once", killed[c])
		}
		if d := c.revocation(); d == nil || !strings.Contains(revokedReason(d), "revoked by its source") {
			t.Errorf("revocation %+v: want a reason naming the identity source", d)
		}
	}
	if killed[n1] != 0 || n1.revocation() != nil {
		t.Error("nosy's connection was revoked with web's identity")
	}
}
