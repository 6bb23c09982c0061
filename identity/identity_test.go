package identity

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func TestWorkloadID(t *testing.T) {
	tests := []struct {
		ns, sa, want string
		ok           bool
	}{
		{"shop", "default", "spiffe://cluster.local/ns/shop/sa/default", true},
		{"kube-system", "coredns.v1", "spiffe://cluster.local/ns/kube-system/sa/coredns.v1", true},
		{"", "default", "", false},
		{"Shop", "default", "", false},
		{"shop", "", "", false},
		{"shop/sa/x", "y", "", false},
		{"shop", "a/../b", "", false},
		{"-shop", "default", "", false},
		{"a123456789012345678901234567890123456789012345678901234567890123", "x", "", false},
	}
	for _, tt := range tests {
		id, err := WorkloadID(td, tt.ns, tt.sa)
		if (err == nil) != tt.ok {
			t.Errorf("WorkloadID(%q, %q) err = %v, want ok=%v", tt.ns, tt.sa, err, tt.ok)
			continue
		}
		if tt.ok && id.String() != tt.want {
			t.Errorf("WorkloadID(%q, %q) = %s, want %s", tt.ns, tt.sa, id, tt.want)
		}
	}
}

func TestParseWorkload(t *testing.T) {
	tests := []struct {
		in     string
		ns, sa string
		ok     bool
	}{
		{"spiffe://cluster.local/ns/shop/sa/web", "shop", "web", true},
		{"spiffe://cluster.local/ns/shop", "", "", false},
		{"spiffe://cluster.local/ns/shop/sa/web/extra", "", "", false},
		{"spiffe://cluster.local/sa/web/ns/shop", "", "", false},
		{"spiffe://cluster.local/ns/SHOP/sa/web", "", "", false},
		{"spiffe://cluster.local", "", "", false},
		{"https://cluster.local/ns/shop/sa/web", "", "", false},
	}
	for _, tt := range tests {
		w, err := ParseWorkloadString(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseWorkloadString(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if tt.ok && (w.Namespace != tt.ns || w.ServiceAccount != tt.sa || w.TrustDomain != td) {
			t.Errorf("ParseWorkloadString(%q) = %+v", tt.in, w)
		}
	}
}

func TestCAIssuesSVIDShape(t *testing.T) {
	ca, err := NewCA(td, CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := WorkloadID(td, "shop", "web")
	s, err := ca.Issue(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	leaf := s.Certificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URIs = %v, want exactly [%s]", leaf.URIs, id)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has non-URI SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if got := time.Until(leaf.NotAfter); got < DefaultSVIDTTL-time.Minute || got > DefaultSVIDTTL {
		t.Errorf("leaf lives %v more, want ~%v", got, DefaultSVIDTTL)
	}
	gotID, _, err := x509svid.Verify(s.Certificates, ca)
	if err != nil || gotID != id {
		t.Fatalf("Verify = %s, %v", gotID, err)
	}
	other := spiffeid.RequireTrustDomainFromString("other.org")
	if _, err := ca.Issue(context.Background(), other.ID()); err == nil {
		t.Error("issued for a foreign trust domain")
	}
}

func TestCATTLConfigurable(t *testing.T) {
	ca, err := NewCA(td, CAConfig{SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s, err := ca.Issue(context.Background(), td.ID())
	if err != nil {
		t.Fatal(err)
	}
	if got := time.Until(s.Certificates[0].NotAfter); got > time.Hour || got < 59*time.Minute {
		t.Errorf("ttl = %v, want ~1h", got)
	}
}

func TestCAFilesRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA(td, CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(td, dir, CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := WorkloadID(td, "a", "b")
	s, err := loaded.Issue(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	// Signed by the loaded key, verified by the original's bundle: the same root.
	if _, _, err := x509svid.Verify(s.Certificates, ca); err != nil {
		t.Fatalf("loaded CA's SVID does not verify with the original root: %v", err)
	}
	if _, err := LoadCA(td, t.TempDir(), CAConfig{}); err == nil {
		t.Error("LoadCA of an empty dir succeeded")
	}
}

// countingIssuer wraps a CA, counts calls, and can be made to fail or block.
type countingIssuer struct {
	*CA
	mu    sync.Mutex
	calls int
	fail  bool
	gate  chan struct{}
	ttl   time.Duration
}

func (c *countingIssuer) Issue(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	c.mu.Lock()
	c.calls++
	fail, gate := c.fail, c.gate
	c.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if fail {
		return nil, errors.New("issuer down")
	}
	if c.ttl > 0 {
		return c.CA.IssueWithTTL(ctx, id, c.ttl)
	}
	return c.CA.Issue(ctx, id)
}

func (c *countingIssuer) Calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

func newIssuer(t *testing.T) *countingIssuer {
	ca, err := NewCA(td, CAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return &countingIssuer{CA: ca}
}

func TestCacheOneIssuanceUnderHerd(t *testing.T) {
	is := newIssuer(t)
	is.gate = make(chan struct{})
	c := NewCache(is, nil)
	defer c.Close()
	id, _ := WorkloadID(td, "shop", "web")
	const n = 1000
	var wg sync.WaitGroup
	serials := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			s, err := c.SVID(context.Background(), id)
			errs[i] = err
			if err == nil {
				serials[i] = s.Certificates[0].SerialNumber.String()
			}
		})
	}
	time.Sleep(50 * time.Millisecond) // let the herd pile up behind the gate
	close(is.gate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || serials[i] != serials[0] {
			t.Fatalf("caller %d: serial %s err %v, want serial %s", i, serials[i], errs[i], serials[0])
		}
	}
	if got := is.Calls(); got != 1 {
		t.Errorf("issuer called %d times for one identity, want 1", got)
	}
}

func TestCacheRetriesAfterFailure(t *testing.T) {
	is := newIssuer(t)
	is.fail = true
	c := NewCache(is, nil)
	defer c.Close()
	if _, err := c.SVID(context.Background(), td.ID()); err == nil {
		t.Fatal("SVID succeeded with a failing issuer")
	}
	is.mu.Lock()
	is.fail = false
	is.mu.Unlock()
	if _, err := c.SVID(context.Background(), td.ID()); err != nil {
		t.Fatalf("SVID after the issuer recovered: %v", err)
	}
}

func TestCacheRotatesAtHalfLife(t *testing.T) {
	is := newIssuer(t)
	is.ttl = 2 * time.Second // certificates carry whole seconds
	c := NewCache(is, nil)
	defer c.Close()
	id, _ := WorkloadID(td, "shop", "web")
	first, err := c.SVID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	ch, stop := c.Watch(id)
	defer stop()
	start := time.Now()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no rotation within 5s of a 2s SVID")
	}
	// Rotation must come before the old certificate expires (half-life, not at expiry).
	if now := time.Now(); !now.Before(first.Certificates[0].NotAfter) {
		t.Errorf("rotation came %v after start, at or past the old certificate's expiry %v", now.Sub(start), first.Certificates[0].NotAfter)
	}
	second, err := c.SVID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if first.Certificates[0].SerialNumber.Cmp(second.Certificates[0].SerialNumber) == 0 {
		t.Error("rotation kept the same certificate")
	}
	if second.Certificates[0].NotAfter.Before(first.Certificates[0].NotAfter) {
		t.Error("rotated certificate does not outlive the old one")
	}
}

func TestCacheForgetAndClose(t *testing.T) {
	is := newIssuer(t)
	c := NewCache(is, nil)
	id, _ := WorkloadID(td, "shop", "web")
	if err := c.Warm(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if len(c.Held()) != 1 {
		t.Fatalf("held %v", c.Held())
	}
	c.Forget(id)
	if len(c.Held()) != 0 {
		t.Fatalf("held after Forget: %v", c.Held())
	}
	c.Close()
	if _, err := c.SVID(context.Background(), id); !errors.Is(err, ErrClosed) {
		t.Errorf("SVID after Close: %v, want ErrClosed", err)
	}
}

// TestCacheHoldRelease: two pods of one service account share an SVID; it is dropped only when
// the last of them is released, and Check says so.
func TestCacheHoldRelease(t *testing.T) {
	c := NewCache(newIssuer(t), nil)
	defer c.Close()
	id, _ := WorkloadID(td, "shop", "web")
	for _, uid := range []string{"pod-a", "pod-b"} {
		if err := c.Hold(context.Background(), Subject{ID: id, UID: uid, Namespace: "shop", ServiceAccount: "web"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Check(id); err != nil {
		t.Fatalf("Check while held: %v", err)
	}
	if h := c.Held(); len(h) != 1 || h[0].ID != id || h[0].Source != SourceBuiltin || h[0].SVID == nil {
		t.Fatalf("Held = %+v", h)
	}
	c.Release("pod-a")
	if err := c.Check(id); err != nil {
		t.Fatalf("Check after releasing one of two holders: %v", err)
	}
	c.Release("pod-b")
	if err := c.Check(id); err == nil {
		t.Fatal("Check after releasing both holders: nil, want an error")
	}
	if h := c.Held(); len(h) != 0 {
		t.Fatalf("Held after release = %+v", h)
	}
	c.Release("pod-b") // twice: harmless
}
