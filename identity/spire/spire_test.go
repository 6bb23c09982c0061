package spire

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	delegatedidentityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/amesh-dev/amesh/identity"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func TestSelectors(t *testing.T) {
	subj := identity.Subject{UID: "u-1", Name: "web-0", Namespace: "shop", ServiceAccount: "web", Node: "node1"}
	for _, tc := range []struct {
		name      string
		templates []string
		want      string // comma-joined, or the error's substring
		err       bool
	}{
		{"default", DefaultSelectors, "k8s:ns:shop,k8s:sa:web", false},
		{"pod uid", []string{"k8s:pod-uid:{pod-uid}"}, "k8s:pod-uid:u-1", false},
		{"every placeholder", []string{"k8s:pod-name:{pod-name}", "k8s:node-name:{node}", "unix:uid:0"}, "k8s:pod-name:web-0,k8s:node-name:node1,unix:uid:0", false},
		{"two in one value", []string{"x:{namespace}/{serviceaccount}"}, "x:shop/web", false},
		{"unknown placeholder", []string{"k8s:ns:{nope}"}, "unknown placeholder", true},
		{"no type", []string{":ns:shop"}, "want type:value", true},
		{"no value", []string{"k8s"}, "want type:value", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sels, names, err := Selectors(tc.templates, subj)
			if tc.err {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want one saying %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(names, ","); got != tc.want {
				t.Fatalf("selectors %s, want %s", got, tc.want)
			}
			for i, s := range sels {
				if s.Type+":"+s.Value != names[i] {
					t.Fatalf("selector %d is %s:%s, named %s", i, s.Type, s.Value, names[i])
				}
			}
		})
	}
	if _, _, err := Selectors([]string{"k8s:node-name:{node}"}, identity.Subject{}); err == nil || !strings.Contains(err.Error(), "no node") {
		t.Errorf("a template on a field the workload lacks: %v, want an error naming it", err)
	}
}

// fakeSPIRE is a Delegated Identity API as a SPIRE agent serves it: SVIDs of the entries whose
// selectors are a subset of the asked ones, pushed again on every change.
type fakeSPIRE struct {
	delegatedidentityv1.UnimplementedDelegatedIdentityServer
	ca *identity.CA

	mu      sync.Mutex
	entries map[string]entry // by name
	changed chan struct{}    // closed and replaced on every change
	deny    bool
	empty   int // answer this many first answers of new streams with no SVID (a SPIRE agent not synced)
}

type entry struct {
	id        spiffeid.ID
	selectors []string
	svid      *x509svid.SVID
}

func newFake(t *testing.T) *fakeSPIRE {
	ca, err := identity.NewCA(td, identity.CAConfig{SVIDTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeSPIRE{ca: ca, entries: map[string]entry{}, changed: make(chan struct{})}
}

// set creates (or rotates: a new SVID) the entry name; selectors nil deletes it.
func (f *fakeSPIRE) set(t *testing.T, name string, id spiffeid.ID, selectors ...string) *x509svid.SVID {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var sv *x509svid.SVID
	if selectors == nil {
		delete(f.entries, name)
	} else {
		var err error
		if sv, err = f.ca.Issue(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		f.entries[name] = entry{id: id, selectors: selectors, svid: sv}
	}
	close(f.changed)
	f.changed = make(chan struct{})
	return sv
}

func (f *fakeSPIRE) answer(asked []*types.Selector) (*delegatedidentityv1.SubscribeToX509SVIDsResponse, <-chan struct{}, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	have := map[string]bool{}
	for _, s := range asked {
		have[s.Type+":"+s.Value] = true
	}
	resp := &delegatedidentityv1.SubscribeToX509SVIDsResponse{}
	for _, e := range f.entries {
		match := true
		for _, s := range e.selectors {
			match = match && have[s]
		}
		if !match {
			continue
		}
		key, err := x509.MarshalPKCS8PrivateKey(e.svid.PrivateKey)
		if err != nil {
			return nil, nil, err
		}
		var chain [][]byte
		for _, c := range e.svid.Certificates {
			chain = append(chain, c.Raw)
		}
		resp.X509Svids = append(resp.X509Svids, &delegatedidentityv1.X509SVIDWithKey{
			X509Svid:    &types.X509SVID{CertChain: chain, Id: &types.SPIFFEID{TrustDomain: e.id.TrustDomain().Name(), Path: e.id.Path()}, ExpiresAt: e.svid.Certificates[0].NotAfter.Unix()},
			X509SvidKey: key,
		})
	}
	return resp, f.changed, nil
}

func (f *fakeSPIRE) SubscribeToX509SVIDs(req *delegatedidentityv1.SubscribeToX509SVIDsRequest, stream delegatedidentityv1.DelegatedIdentity_SubscribeToX509SVIDsServer) error {
	f.mu.Lock()
	deny, empty := f.deny, f.empty > 0
	if empty {
		f.empty--
	}
	f.mu.Unlock()
	if deny {
		return status.Error(codes.PermissionDenied, "caller not configured as an authorized delegate")
	}
	if empty {
		// Nothing more until something changes, as a SPIRE agent still syncing.
		f.mu.Lock()
		changed := f.changed
		f.mu.Unlock()
		if err := stream.Send(&delegatedidentityv1.SubscribeToX509SVIDsResponse{}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
	for {
		resp, changed, err := f.answer(req.GetSelectors())
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (f *fakeSPIRE) SubscribeToX509Bundles(_ *delegatedidentityv1.SubscribeToX509BundlesRequest, stream delegatedidentityv1.DelegatedIdentity_SubscribeToX509BundlesServer) error {
	f.mu.Lock()
	deny := f.deny
	f.mu.Unlock()
	if deny {
		return status.Error(codes.PermissionDenied, "caller not configured as an authorized delegate")
	}
	b, err := f.ca.GetX509BundleForTrustDomain(td)
	if err != nil {
		return err
	}
	var der []byte
	for _, c := range b.X509Authorities() {
		der = append(der, c.Raw...)
	}
	if err := stream.Send(&delegatedidentityv1.SubscribeToX509BundlesResponse{CaCertificates: map[string][]byte{td.IDString(): der}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// serve runs f on a unix socket at path until the returned stop is called (or the test ends).
func (f *fakeSPIRE) serve(t *testing.T, path string) (stop func()) {
	t.Helper()
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	delegatedidentityv1.RegisterDelegatedIdentityServer(g, f)
	go g.Serve(l)
	stop = sync.OnceFunc(g.Stop)
	t.Cleanup(stop)
	return stop
}

func socketPath(t *testing.T) string {
	d, err := os.MkdirTemp("", "spire-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return filepath.Join(d, "admin.sock")
}

func newSource(t *testing.T, path string) *Source {
	t.Helper()
	s, err := New(context.Background(), Config{AdminSocket: path, StartTimeout: time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func subject(t *testing.T, uid, ns, sa string) identity.Subject {
	id, err := identity.WorkloadID(td, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return identity.Subject{ID: id, UID: uid, Name: uid, Namespace: ns, ServiceAccount: sa, Node: "node1"}
}

// eventually waits up to 5 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("not within 5 s: %s", what)
}

func serial(s *x509svid.SVID) string { return s.Certificates[0].SerialNumber.String() }

// TestSourceFollowsSPIRE: an SVID held from SPIRE, its rotations pushed (watchers told), its
// entry deleted (refused with the selectors named, the identity revoked) and created again.
func TestSourceFollowsSPIRE(t *testing.T) {
	f := newFake(t)
	path := socketPath(t)
	f.serve(t, path)
	web := subject(t, "web-1", "shop", "web")
	issued := f.set(t, "web", web.ID, "k8s:ns:shop", "k8s:sa:web")
	s := newSource(t, path)
	if err := s.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if _, err := s.GetX509BundleForTrustDomain(td); err != nil {
		t.Fatalf("bundle: %v", err)
	}
	revoked, stopRev := s.Revocations()
	defer stopRev()
	if err := s.Hold(context.Background(), web); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(web.ID); err != nil {
		t.Fatalf("Check: %v", err)
	}
	sv, err := s.SVID(context.Background(), web.ID)
	if err != nil || serial(sv) != serial(issued) {
		t.Fatalf("SVID = %v, %v; want serial %s", sv, err, serial(issued))
	}
	// A second pod of the account shares the subscription.
	if err := s.Hold(context.Background(), subject(t, "web-2", "shop", "web")); err != nil {
		t.Fatal(err)
	}
	if h := s.Held(); len(h) != 1 || h[0].Source != identity.SourceSPIRE || strings.Join(h[0].Selectors, ",") != "k8s:ns:shop,k8s:sa:web" {
		t.Fatalf("Held = %+v", h)
	}

	rotated, stopW := s.Watch(web.ID)
	defer stopW()
	next := f.set(t, "web", web.ID, "k8s:ns:shop", "k8s:sa:web")
	select {
	case <-rotated:
	case <-time.After(5 * time.Second):
		t.Fatal("no rotation notice")
	}
	if sv, _ := s.SVID(context.Background(), web.ID); serial(sv) != serial(next) {
		t.Fatalf("after rotation serial %s, want %s", serial(sv), serial(next))
	}

	f.set(t, "web", web.ID) // entry deleted
	eventually(t, "Check fails after the entry is deleted", func() bool { return s.Check(web.ID) != nil })
	err = s.Check(web.ID)
	if !errors.Is(err, ErrNoEntry) || !strings.Contains(err.Error(), "k8s:ns:shop,k8s:sa:web") {
		t.Fatalf("Check = %v, want ErrNoEntry naming the selectors", err)
	}
	select {
	case id := <-revoked:
		if id != web.ID {
			t.Fatalf("revoked %s, want %s", id, web.ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the identity was not revoked")
	}
	if _, err := s.SVID(context.Background(), web.ID); err == nil {
		t.Fatal("SVID after deletion: nil error")
	}

	again := f.set(t, "web", web.ID, "k8s:ns:shop", "k8s:sa:web")
	eventually(t, "the re-created entry's SVID", func() bool { return s.Check(web.ID) == nil })
	if sv, _ := s.SVID(context.Background(), web.ID); serial(sv) != serial(again) {
		t.Fatalf("serial %s, want %s", serial(sv), serial(again))
	}

	s.Release("web-1")
	if err := s.Check(web.ID); err != nil {
		t.Fatalf("Check after one of two holders left: %v", err)
	}
	s.Release("web-2")
	if err := s.Check(web.ID); err == nil {
		t.Fatal("Check after both holders left: nil")
	}
}

// TestSourceRefusesWhatSPIREDoesNotGive: no entry at enrollment (held, refused with the
// selectors named, then served when the entry appears), and an entry of another SPIFFE ID
// (refused, both IDs named).
func TestSourceRefusesWhatSPIREDoesNotGive(t *testing.T) {
	f := newFake(t)
	path := socketPath(t)
	f.serve(t, path)
	s := newSource(t, path)

	api := subject(t, "api-1", "shop", "api")
	if err := s.Hold(context.Background(), api); err != nil {
		t.Fatalf("Hold with no entry: %v (want held, refused by Check)", err)
	}
	if err := s.Check(api.ID); !errors.Is(err, ErrNoEntry) || !strings.Contains(err.Error(), "k8s:ns:shop,k8s:sa:api") {
		t.Fatalf("Check = %v, want ErrNoEntry naming the selectors", err)
	}
	f.set(t, "api", api.ID, "k8s:ns:shop", "k8s:sa:api")
	eventually(t, "the SVID of an entry created after the pod", func() bool { return s.Check(api.ID) == nil })

	db := subject(t, "db-1", "shop", "db")
	other := spiffeid.RequireFromString("spiffe://cluster.local/something/else")
	f.set(t, "db", other, "k8s:ns:shop", "k8s:sa:db")
	if err := s.Hold(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	err := s.Check(db.ID)
	if !errors.Is(err, ErrWrongID) || !strings.Contains(err.Error(), other.String()) || !strings.Contains(err.Error(), db.ID.String()) {
		t.Fatalf("Check = %v, want ErrWrongID naming %s and %s", err, other, db.ID)
	}
	if _, err := s.SVID(context.Background(), db.ID); err == nil {
		t.Fatal("SVID of the wrong ID handed out")
	}
}

// TestSourceNotDelegate: a SPIRE agent that refuses amesh as a delegate fails New, naming the
// setting to change.
func TestSourceNotDelegate(t *testing.T) {
	f := newFake(t)
	f.deny = true
	path := socketPath(t)
	f.serve(t, path)
	_, err := New(context.Background(), Config{AdminSocket: path, StartTimeout: 2 * time.Second})
	if !errors.Is(err, ErrNotDelegate) || !strings.Contains(err.Error(), "authorized_delegates") {
		t.Fatalf("New = %v, want ErrNotDelegate naming authorized_delegates", err)
	}

	// Refused later (the delegate's entry deleted): a workload enrolled then is held, and its
	// connections refused with the reason, rather than left out of the mesh.
	f.mu.Lock()
	f.deny = false
	f.mu.Unlock()
	s := newSource(t, path)
	f.mu.Lock()
	f.deny = true
	f.mu.Unlock()
	web := subject(t, "web-1", "shop", "web")
	f.set(t, "web", web.ID, "k8s:ns:shop", "k8s:sa:web")
	if err := s.Hold(context.Background(), web); err != nil {
		t.Fatalf("Hold while SPIRE refuses the delegate: %v, want held", err)
	}
	if err := s.Check(web.ID); !errors.Is(err, ErrNotDelegate) {
		t.Fatalf("Check = %v, want ErrNotDelegate", err)
	}
}

// TestSourceSurvivesSPIRE: a SPIRE agent not there at start (not Ready, saying so, then Ready
// when it comes), and one restarted (SVIDs held are kept, even across an empty first answer of
// the new stream; the streams are reopened and follow the new agent).
func TestSourceSurvivesSPIRE(t *testing.T) {
	f := newFake(t)
	path := socketPath(t)
	s := newSource(t, path)
	if err := s.Ready(); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Ready with no SPIRE agent = %v, want ErrUnreachable naming the socket", err)
	}
	web := subject(t, "web-1", "shop", "web")
	if err := s.Hold(context.Background(), web); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(web.ID); err == nil {
		t.Fatal("Check with no SPIRE agent: nil")
	}
	first := f.set(t, "web", web.ID, "k8s:ns:shop", "k8s:sa:web")
	stop := f.serve(t, path)
	eventually(t, "Ready once the SPIRE agent is up", func() bool { return s.Ready() == nil })
	eventually(t, "the SVID once the SPIRE agent is up", func() bool { return s.Check(web.ID) == nil })

	stop() // the SPIRE agent goes
	time.Sleep(100 * time.Millisecond)
	if err := s.Check(web.ID); err != nil {
		t.Fatalf("Check while the SPIRE agent is down: %v (want the SVID held)", err)
	}
	if err := s.Ready(); err != nil {
		t.Fatalf("Ready while the SPIRE agent is down, bundles held: %v", err)
	}
	f.mu.Lock()
	f.empty = 1 // the restarted agent's first answer comes before its first sync
	f.mu.Unlock()
	f.serve(t, path)
	time.Sleep(200 * time.Millisecond)
	if err := s.Check(web.ID); err != nil {
		t.Fatalf("Check after an empty first answer of the restarted agent: %v (want the SVID kept)", err)
	}
	if sv, _ := s.SVID(context.Background(), web.ID); serial(sv) != serial(first) {
		t.Fatalf("serial %s, want %s (the held one)", serial(sv), serial(first))
	}
	next := f.set(t, "web", web.ID, "k8s:ns:shop", "k8s:sa:web")
	eventually(t, "the restarted agent's rotation", func() bool {
		sv, err := s.SVID(context.Background(), web.ID)
		return err == nil && serial(sv) == serial(next)
	})
}
