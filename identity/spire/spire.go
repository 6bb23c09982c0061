// Package spire is an identity.NodeSource on the node's SPIRE agent: amesh-agent, registered as
// an authorized delegate, asks the SPIRE agent's Delegated Identity API (its admin socket) for
// the X.509-SVIDs of the workloads it enrolls, by the selectors those workloads would have been
// attested with, and for the trust bundles (federated ones too). SPIRE pushes every change:
// rotations, a registration entry deleted or created, a bundle rotated.
//
// What it guarantees: an SVID is used only when its SPIFFE ID is the one amesh computed for the
// workload (else the workload is refused, the reason naming both IDs); SVIDs held survive a
// restart of the SPIRE agent (the streams are resubscribed with backoff, and the first answer
// of a new stream may not take away an SVID still valid); an entry deleted takes the SVID away
// and revokes the identity (identity.Revoker).
package spire

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	delegatedidentityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/amesh-dev/amesh/identity"
)

// DefaultSelectors ask for one SVID per namespace and service account, as the agent's identities
// are (spiffe://<td>/ns/<ns>/sa/<sa>), with the selectors SPIRE's k8s workload attestor gives.
var DefaultSelectors = []string{"k8s:ns:{namespace}", "k8s:sa:{serviceaccount}"}

// The placeholders a selector template may hold, and what of the workload each stands for.
var placeholders = map[string]func(identity.Subject) string{
	"{namespace}":      func(s identity.Subject) string { return s.Namespace },
	"{serviceaccount}": func(s identity.Subject) string { return s.ServiceAccount },
	"{pod-name}":       func(s identity.Subject) string { return s.Name },
	"{pod-uid}":        func(s identity.Subject) string { return s.UID },
	"{node}":           func(s identity.Subject) string { return s.Node },
}

// Errors a Source reports, to be matched with errors.Is.
var (
	// ErrNotDelegate: the SPIRE agent does not accept this process as a delegate.
	ErrNotDelegate = errors.New("spire: not an authorized delegate")
	// ErrUnreachable: the SPIRE agent's admin socket does not answer.
	ErrUnreachable = errors.New("spire: SPIRE agent unreachable")
	// ErrNoEntry: no registration entry matches the workload's selectors.
	ErrNoEntry = errors.New("spire: no registration entry")
	// ErrWrongID: SPIRE issued SVIDs for the selectors, none with the workload's SPIFFE ID.
	ErrWrongID = errors.New("spire: SVID of another SPIFFE ID")
	// ErrClosed: the Source was closed.
	ErrClosed = errors.New("spire: source closed")
)

// Config configures a Source.
type Config struct {
	// AdminSocket is the path of the SPIRE agent's admin socket (admin_socket_path in its
	// agent.conf).
	AdminSocket string
	// Selectors are the templates of the selectors each workload's SVID is asked with,
	// "type:value" with the placeholders {namespace}, {serviceaccount}, {pod-name}, {pod-uid}
	// and {node}; DefaultSelectors when empty.
	Selectors []string
	// StartTimeout bounds how long New waits for the SPIRE agent to accept amesh as a delegate;
	// 10 s when zero.
	StartTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a broken stream is opened again; 100 ms
	// and 10 s when zero (doubling in between).
	MinBackoff, MaxBackoff time.Duration
	// Logger receives what the Source does; none when nil.
	Logger *slog.Logger
}

// Source is an identity.NodeSource served by a SPIRE agent. Create it with New.
type Source struct {
	cfg    Config
	log    *slog.Logger
	conn   *grpc.ClientConn
	client delegatedidentityv1.DelegatedIdentityClient
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	now    func() time.Time

	mu          sync.Mutex
	closed      bool
	bundles     map[spiffeid.TrustDomain]*x509bundle.Bundle
	bundleErr   error         // why no bundle is held yet; nil once one is
	bundleFirst chan struct{} // closed at the bundle stream's first outcome
	subs        map[string]*subscription
	holders     map[string]*subscription // by workload UID
	watchers    map[spiffeid.ID]map[int]chan struct{}
	revokes     map[int]chan spiffeid.ID
	nextID      int
}

var _ identity.NodeSource = (*Source)(nil)

// subscription is one SubscribeToX509SVIDs stream: the SVID of want for one set of selectors,
// shared by the workloads of the node that ask alike. Fields after want are guarded by
// Source.mu.
type subscription struct {
	key       string
	selectors []*types.Selector
	names     []string // the selectors as "type:value"
	want      spiffeid.ID
	cancel    context.CancelFunc

	refs     int
	svid     *x509svid.SVID
	err      error         // why svid is nil (or, with svid set, what the stream last said)
	answered chan struct{} // closed at the first outcome (an answer or an error)
}

// New connects to the SPIRE agent at cfg.AdminSocket and subscribes to its trust bundles. It
// waits up to cfg.StartTimeout for the first answer: a SPIRE agent that refuses amesh as a
// delegate is an error (a setting to change, which it names); one that does not answer gives
// a Source that is not Ready and keeps trying, so that the node's agent can start before the
// SPIRE agent does.
func New(ctx context.Context, cfg Config) (*Source, error) {
	if cfg.AdminSocket == "" {
		return nil, errors.New("spire: no admin socket (--spire-admin-socket)")
	}
	if len(cfg.Selectors) == 0 {
		cfg.Selectors = DefaultSelectors
	}
	if err := checkTemplates(cfg.Selectors); err != nil {
		return nil, err
	}
	cfg.StartTimeout = cmp.Or(cfg.StartTimeout, 10*time.Second)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, 100*time.Millisecond)
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, 10*time.Second), cfg.MinBackoff)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The channel's own reconnection follows the same bounds (gRPC's default waits up to 120 s,
	// long after a restarted SPIRE agent is back).
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.Config{BaseDelay: cfg.MinBackoff, Multiplier: 2, Jitter: 0.2, MaxDelay: cfg.MaxBackoff}, MinConnectTimeout: time.Second}))
	if err != nil {
		return nil, fmt.Errorf("spire: admin socket %s: %w", cfg.AdminSocket, err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Source{
		cfg: cfg, log: log.With("identity", identity.SourceSPIRE), conn: conn, client: delegatedidentityv1.NewDelegatedIdentityClient(conn),
		ctx: sctx, cancel: cancel, now: time.Now,
		bundles: map[spiffeid.TrustDomain]*x509bundle.Bundle{}, bundleFirst: make(chan struct{}),
		bundleErr: fmt.Errorf("%w: no answer yet from %s", ErrUnreachable, cfg.AdminSocket),
		subs:      map[string]*subscription{}, holders: map[string]*subscription{},
		watchers: map[spiffeid.ID]map[int]chan struct{}{}, revokes: map[int]chan spiffeid.ID{},
	}
	s.wg.Add(1)
	go s.followBundles()
	// A refusal may be passing: a SPIRE agent that just started has not synced the entry that
	// makes amesh its delegate yet (it answers "no identity issued" for ~5 s). Only one that
	// lasts the whole StartTimeout is an error; an agent not answering at all is not waited for.
	deadline := time.Now().Add(cfg.StartTimeout)
	select {
	case <-s.bundleFirst:
	case <-time.After(cfg.StartTimeout):
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("spire: %w", ctx.Err())
	}
	for errors.Is(s.Ready(), ErrNotDelegate) && time.Now().Before(deadline) {
		if !backoff(ctx, 50*time.Millisecond) {
			s.Close()
			return nil, fmt.Errorf("spire: %w", ctx.Err())
		}
	}
	if err := s.Ready(); errors.Is(err, ErrNotDelegate) {
		s.Close()
		return nil, err
	} else if err != nil {
		s.log.Error("SPIRE agent not answering: not ready, retrying; pods' connections are refused until it does", "err", err)
	}
	return s, nil
}

// checkTemplates refuses a selector template that is not type:value or names an unknown
// placeholder.
func checkTemplates(tmpls []string) error {
	for _, t := range tmpls {
		typ, value, ok := strings.Cut(t, ":")
		if !ok || typ == "" || value == "" {
			return fmt.Errorf("spire: selector %q: want type:value, e.g. k8s:ns:{namespace}", t)
		}
		rest := value
		for ph := range placeholders {
			rest = strings.ReplaceAll(rest, ph, "")
		}
		if strings.ContainsAny(rest, "{}") {
			return fmt.Errorf("spire: selector %q: unknown placeholder (known: {namespace}, {serviceaccount}, {pod-name}, {pod-uid}, {node})", t)
		}
	}
	return nil
}

// Selectors expands templates for the workload s: the selectors its SVID is asked with, as
// SPIRE types and as "type:value" strings.
func Selectors(templates []string, s identity.Subject) ([]*types.Selector, []string, error) {
	if err := checkTemplates(templates); err != nil {
		return nil, nil, err
	}
	var sels []*types.Selector
	var names []string
	for _, t := range templates {
		typ, value, _ := strings.Cut(t, ":")
		for ph, of := range placeholders {
			if strings.Contains(value, ph) {
				v := of(s)
				if v == "" {
					return nil, nil, fmt.Errorf("spire: selector %q: the workload has no %s", t, strings.Trim(ph, "{}"))
				}
				value = strings.ReplaceAll(value, ph, v)
			}
		}
		sels = append(sels, &types.Selector{Type: typ, Value: value})
		names = append(names, typ+":"+value)
	}
	return sels, names, nil
}

// explain turns a gRPC error of the SPIRE agent into what an operator can act on.
func (s *Source) explain(err error) error {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.PermissionDenied:
		return fmt.Errorf("%w: the SPIRE agent at %s refuses amesh-agent (%s): add amesh-agent's SPIFFE ID to the SPIRE agent's authorized_delegates (agent.conf) and register that ID with an entry whose selectors match the amesh-agent process (e.g. unix:uid:0, or k8s:ns:amesh-system and k8s:sa:amesh-agent)",
			ErrNotDelegate, s.cfg.AdminSocket, st.Message())
	case codes.Unavailable:
		return fmt.Errorf("%w at %s (is it running, with its admin_socket_path mounted here?): %s", ErrUnreachable, s.cfg.AdminSocket, st.Message())
	}
	return fmt.Errorf("spire: SPIRE agent at %s: %w", s.cfg.AdminSocket, err)
}

// backoff waits before the next attempt; false when the source or ctx ended meanwhile.
func backoff(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// followBundles keeps the trust bundles SPIRE pushes, reopening the stream when it breaks.
func (s *Source) followBundles() {
	defer s.wg.Done()
	wait := s.cfg.MinBackoff
	first := true
	for s.ctx.Err() == nil {
		err := s.recvBundles(&wait, &first)
		if s.ctx.Err() != nil {
			return
		}
		err = s.explain(err)
		s.mu.Lock()
		held := len(s.bundles) > 0
		if !held {
			s.bundleErr = err
		}
		s.mu.Unlock()
		if first {
			first = false
			close(s.bundleFirst)
		}
		s.log.Warn("SPIRE bundle stream broken; trust bundles held are kept, retrying", "err", err, "retry_in", wait, "bundles_held", held)
		if !backoff(s.ctx, wait) {
			return
		}
		wait = min(wait*2, s.cfg.MaxBackoff)
	}
}

func (s *Source) recvBundles(wait *time.Duration, first *bool) error {
	stream, err := s.client.SubscribeToX509Bundles(s.ctx, &delegatedidentityv1.SubscribeToX509BundlesRequest{})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		bundles, err := parseBundles(resp.GetCaCertificates())
		if err != nil {
			s.log.Error("SPIRE sent trust bundles amesh cannot read: the ones held are kept", "err", err)
			continue
		}
		s.mu.Lock()
		s.bundles = bundles
		s.bundleErr = nil
		s.mu.Unlock()
		*wait = s.cfg.MinBackoff
		if *first {
			*first = false
			close(s.bundleFirst)
		}
		s.log.Info("trust bundles from SPIRE", "trust_domains", len(bundles))
	}
}

// parseBundles reads the bundles of a SubscribeToX509Bundles answer: trust domain (name or
// spiffe:// ID) to its X.509 authorities, DER concatenated.
func parseBundles(in map[string][]byte) (map[spiffeid.TrustDomain]*x509bundle.Bundle, error) {
	out := make(map[spiffeid.TrustDomain]*x509bundle.Bundle, len(in))
	for name, der := range in {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("spire: bundle of %q: %w", name, err)
		}
		b, err := x509bundle.ParseRaw(td, der)
		if err != nil {
			return nil, fmt.Errorf("spire: bundle of %s: %w", td, err)
		}
		out[td] = b
	}
	return out, nil
}

// Ready is nil once SPIRE sent the trust bundles, else why it has not.
func (s *Source) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.bundleErr
}

// GetX509BundleForTrustDomain returns the bundle of td that SPIRE sent last.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.bundles[td]; ok {
		return b, nil
	}
	if s.bundleErr != nil {
		return nil, fmt.Errorf("spire: no bundle for trust domain %s: %w", td, s.bundleErr)
	}
	return nil, fmt.Errorf("spire: SPIRE holds no bundle for trust domain %s (not this trust domain, nor federated with it)", td)
}

// Hold subscribes to the SVID of s (or joins the subscription of a workload asking alike) and
// waits, within ctx, for SPIRE's first answer. With no entry for it, none for its SPIFFE ID, or
// no answer, it is held all the same and Check says why: SPIRE pushes the SVID when it can. It
// fails only for selectors the workload cannot fill, or a closed Source.
func (s *Source) Hold(ctx context.Context, subj identity.Subject) error {
	sels, names, err := Selectors(s.cfg.Selectors, subj)
	if err != nil {
		return err
	}
	key := subj.ID.String() + "|" + strings.Join(slices.Sorted(slices.Values(names)), ",")
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if old, ok := s.holders[subj.UID]; ok {
		if old.key == key {
			s.mu.Unlock()
			return nil
		}
		s.releaseLocked(subj.UID)
	}
	sub, ok := s.subs[key]
	if !ok {
		sctx, cancel := context.WithCancel(s.ctx)
		sub = &subscription{key: key, selectors: sels, names: names, want: subj.ID, cancel: cancel, answered: make(chan struct{})}
		s.subs[key] = sub
		s.wg.Add(1)
		go s.follow(sctx, sub)
	}
	sub.refs++
	s.holders[subj.UID] = sub
	s.mu.Unlock()

	select {
	case <-sub.answered:
	case <-ctx.Done():
		// Still held: the answer lands later, and Check says it has not yet.
	}
	// Whatever SPIRE answered (no entry, not a delegate yet, not there), the workload is held
	// and enrolled: its connections are refused with Check's reason until an SVID arrives. Failing
	// the enrollment instead would leave a running pod's traffic uncaptured, in plaintext.
	return nil
}

// Release stops holding for the workload uid; the subscription ends with its last holder.
func (s *Source) Release(uid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(uid)
}

func (s *Source) releaseLocked(uid string) {
	sub, ok := s.holders[uid]
	if !ok {
		return
	}
	delete(s.holders, uid)
	sub.refs--
	if sub.refs == 0 {
		sub.cancel()
		delete(s.subs, sub.key)
	}
}

// follow keeps sub's SVID as SPIRE pushes it, reopening the stream with backoff when it breaks.
func (s *Source) follow(ctx context.Context, sub *subscription) {
	defer s.wg.Done()
	defer func() { // released or closed before any answer: nobody may wait for one
		s.mu.Lock()
		defer s.mu.Unlock()
		select {
		case <-sub.answered:
		default:
			close(sub.answered)
		}
	}()
	wait := s.cfg.MinBackoff
	for ctx.Err() == nil {
		stream, err := s.client.SubscribeToX509SVIDs(ctx, &delegatedidentityv1.SubscribeToX509SVIDsRequest{Selectors: sub.selectors})
		fresh := true // the first answer of this stream
		for err == nil {
			var resp *delegatedidentityv1.SubscribeToX509SVIDsResponse
			if resp, err = stream.Recv(); err == nil {
				s.apply(sub, resp, fresh)
				fresh = false
				wait = s.cfg.MinBackoff
			}
		}
		if ctx.Err() != nil {
			return
		}
		err = s.explain(err)
		s.mu.Lock()
		sub.err = err
		held := sub.svid != nil
		select {
		case <-sub.answered:
		default:
			close(sub.answered)
		}
		s.mu.Unlock()
		s.log.Warn("SPIRE SVID stream broken; the SVID held is kept until it expires, retrying", "id", sub.want.String(), "selectors", sub.names, "err", err, "retry_in", wait, "svid_held", held)
		if !backoff(ctx, wait) {
			return
		}
		wait = min(wait*2, s.cfg.MaxBackoff)
	}
}

// apply takes one answer of sub's stream: the SVID of sub.want among those SPIRE issued for
// the selectors, or why there is none. fresh is the first answer of a (re)opened stream: a
// restarted SPIRE agent may answer before it synced its entries, so an empty first answer
// does not take away an SVID that is still valid; a later one does (the entry was deleted).
func (s *Source) apply(sub *subscription, resp *delegatedidentityv1.SubscribeToX509SVIDsResponse, fresh bool) {
	var found *x509svid.SVID
	var others []string
	var bad error
	for _, x := range resp.GetX509Svids() {
		sv, err := parseSVID(x)
		if err != nil {
			bad = err
			continue
		}
		if sv.ID == sub.want {
			found = sv
			break
		}
		others = append(others, sv.ID.String())
	}
	var why error
	switch {
	case found != nil:
	case len(others) > 0:
		why = fmt.Errorf("%w: SPIRE issued %s for selectors %s, amesh expects %s for this workload: the registration entry's SPIFFE ID must be %s",
			ErrWrongID, strings.Join(others, ", "), strings.Join(sub.names, ","), sub.want, sub.want)
	case bad != nil:
		why = fmt.Errorf("spire: SVID for selectors %s unreadable: %w", strings.Join(sub.names, ","), bad)
	default:
		why = fmt.Errorf("%w matches selectors %s (for %s, parented to this node's SPIRE agent)", ErrNoEntry, strings.Join(sub.names, ","), sub.want)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		select {
		case <-sub.answered:
		default:
			close(sub.answered)
		}
	}()
	if s.subs[sub.key] != sub {
		return // released meanwhile
	}
	if found != nil {
		rotated := sub.svid == nil || !sub.svid.Certificates[0].Equal(found.Certificates[0])
		sub.svid, sub.err = found, nil
		if rotated {
			s.log.Info("SVID from SPIRE", "id", found.ID.String(), "serial", found.Certificates[0].SerialNumber.String(), "expires", found.Certificates[0].NotAfter)
			s.notifyLocked(sub.want)
		}
		return
	}
	if fresh && sub.svid != nil && s.now().Before(sub.svid.Certificates[0].NotAfter) {
		sub.err = why
		s.log.Warn("SPIRE's first answer after reconnecting has no SVID for the workload: the one held is kept until SPIRE says so again", "id", sub.want.String(), "why", why)
		return
	}
	had := sub.svid != nil
	sub.svid, sub.err = nil, why
	s.log.Warn("no SVID from SPIRE: the workload's connections are refused", "id", sub.want.String(), "why", why)
	if had && s.checkLocked(sub.want) != nil {
		s.revokeLocked(sub.want)
	}
}

// parseSVID reads one SVID of a SubscribeToX509SVIDs answer: the chain leaf first, the key in
// PKCS#8.
func parseSVID(x *delegatedidentityv1.X509SVIDWithKey) (*x509svid.SVID, error) {
	var chain []byte
	for _, c := range x.GetX509Svid().GetCertChain() {
		chain = append(chain, c...)
	}
	sv, err := x509svid.ParseRaw(chain, x.GetX509SvidKey())
	if err != nil {
		return nil, fmt.Errorf("spire: SVID %v: %w", x.GetX509Svid().GetId(), err)
	}
	return sv, nil
}

// Check is nil when a current SVID of id is held.
func (s *Source) Check(id spiffeid.ID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.checkLocked(id)
}

func (s *Source) checkLocked(id spiffeid.ID) error {
	if s.closed {
		return ErrClosed
	}
	var why error
	for _, sub := range s.subs {
		if sub.want != id {
			continue
		}
		if sub.svid != nil {
			if end := sub.svid.Certificates[0].NotAfter; s.now().Before(end) {
				return nil
			} else if why == nil {
				why = fmt.Errorf("spire: the SVID of %s expired at %s and SPIRE sent no new one (%v)", id, end.UTC().Format(time.RFC3339), sub.err)
			}
			continue
		}
		if why == nil {
			why = cmp.Or(sub.err, fmt.Errorf("spire: waiting for the SPIRE agent's answer for selectors %s", strings.Join(sub.names, ",")))
		}
	}
	return cmp.Or(why, fmt.Errorf("spire: no workload of this node holds %s", id))
}

// SVID returns the current SVID of id, waiting within ctx for SPIRE's first answer.
func (s *Source) SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	for {
		s.mu.Lock()
		var best *x509svid.SVID
		var pending chan struct{}
		for _, sub := range s.subs {
			if sub.want != id {
				continue
			}
			if sub.svid != nil && s.now().Before(sub.svid.Certificates[0].NotAfter) &&
				(best == nil || sub.svid.Certificates[0].NotAfter.After(best.Certificates[0].NotAfter)) {
				best = sub.svid
			}
			select {
			case <-sub.answered:
			default:
				pending = sub.answered
			}
		}
		err := s.checkLocked(id)
		s.mu.Unlock()
		switch {
		case best != nil:
			return best, nil
		case pending == nil:
			return nil, err
		}
		select {
		case <-pending:
		case <-ctx.Done():
			return nil, fmt.Errorf("spire: SVID of %s: %w (%v)", id, ctx.Err(), err)
		}
	}
}

// Watch notifies each time a new SVID of id arrives (a rotation SPIRE pushed).
func (s *Source) Watch(id spiffeid.ID) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watchers[id] == nil {
		s.watchers[id] = map[int]chan struct{}{}
	}
	k := s.nextID
	s.nextID++
	s.watchers[id][k] = ch
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.watchers[id], k)
		if len(s.watchers[id]) == 0 {
			delete(s.watchers, id)
		}
	}
}

func (s *Source) notifyLocked(id spiffeid.ID) {
	for _, w := range s.watchers[id] {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

// Revocations delivers each identity whose SVID SPIRE took away (its entry deleted, or its
// SPIFFE ID changed) while no other holder of it has one.
func (s *Source) Revocations() (<-chan spiffeid.ID, func()) {
	ch := make(chan spiffeid.ID, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.nextID
	s.nextID++
	s.revokes[k] = ch
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.revokes, k)
	}
}

func (s *Source) revokeLocked(id spiffeid.ID) {
	for _, ch := range s.revokes {
		select {
		case ch <- id:
		default:
			s.log.Error("revocation dropped: the subscriber is behind; open connections of the identity stay until they end", "id", id.String())
		}
	}
}

// Held describes every subscription: its identity, SVID or why none, and selectors.
func (s *Source) Held() []identity.Held {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]identity.Held, 0, len(s.subs))
	for _, sub := range s.subs {
		h := identity.Held{ID: sub.want, Source: identity.SourceSPIRE, SVID: sub.svid, Selectors: slices.Clone(sub.names), Err: sub.err}
		if sub.svid == nil && h.Err == nil {
			h.Err = s.checkLocked(sub.want)
		}
		out = append(out, h)
	}
	return out
}

// Close ends every stream and drops every SVID.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.subs, s.holders = map[string]*subscription{}, map[string]*subscription{}
	s.mu.Unlock()
	s.cancel()
	err := s.conn.Close()
	s.wg.Wait()
	return err
}
