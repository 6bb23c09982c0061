package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrClosed is returned by a Cache after Close.
var ErrClosed = errors.New("identity: cache closed")

// issueTimeout bounds one background renewal so a stuck issuer cannot stall rotation forever.
const issueTimeout = 30 * time.Second

// Cache is a Source over an Issuer. It issues an identity's SVID on first request (one issuance
// per identity, however many callers wait), keeps it, and renews it at half its remaining
// lifetime, retrying on failure until it expires. Holders of the old SVID are not disturbed:
// open TLS sessions keep the keys they negotiated, new handshakes read the new SVID.
//
// Invariants: entries holds at most one entry per ID; an entry's ready channel is closed exactly
// once, after svid or err is set; renewal timers run only for entries still in the map.
type Cache struct {
	issuer Issuer
	log    *slog.Logger
	now    func() time.Time
	ctx    context.Context // lifecycle: cancelled by Close
	cancel context.CancelFunc

	mu      sync.Mutex
	entries map[spiffeid.ID]*cacheEntry
	holders map[string]spiffeid.ID // by workload UID: what Hold took and Release gives back
	closed  bool

	issuances atomic.Uint64
	failures  atomic.Uint64
}

type cacheEntry struct {
	id    spiffeid.ID
	ready chan struct{}
	err   error // first issuance error, set before ready is closed
	svid  atomic.Pointer[x509svid.SVID]
	timer *time.Timer // guarded by Cache.mu

	watchers map[int]chan struct{} // guarded by Cache.mu
	nextW    int
}

// NewCache returns a Cache over issuer. log may be nil.
func NewCache(issuer Issuer, log *slog.Logger) *Cache {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Cache{issuer: issuer, log: log, now: time.Now, ctx: ctx, cancel: cancel, entries: map[spiffeid.ID]*cacheEntry{}, holders: map[string]spiffeid.ID{}}
}

// SVID returns the current SVID of id, issuing it first if needed.
func (c *Cache) SVID(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	e, ok := c.entries[id]
	if !ok {
		e = &cacheEntry{id: id, ready: make(chan struct{}), watchers: map[int]chan struct{}{}}
		c.entries[id] = e
		go c.first(e)
	}
	c.mu.Unlock()

	select {
	case <-e.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("identity: svid %s: %w", id, ctx.Err())
	}
	if s := e.svid.Load(); s != nil {
		return s, nil
	}
	return nil, e.err
}

// Warm issues the SVID of id now, so that the first connection does not wait for it.
func (c *Cache) Warm(ctx context.Context, id spiffeid.ID) error {
	_, err := c.SVID(ctx, id)
	return err
}

func (c *Cache) first(e *cacheEntry) {
	s, err := c.issue(e.id)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		// Forget the failed entry so that the next caller tries again.
		e.err = err
		if c.entries[e.id] == e {
			delete(c.entries, e.id)
		}
		close(e.ready)
		return
	}
	e.svid.Store(s)
	close(e.ready)
	if c.entries[e.id] == e && !c.closed {
		c.scheduleLocked(e, renewAfter(c.now(), s))
	}
}

// issue asks the issuer for id's SVID, within issueTimeout and the cache's life, and checks
// that it is id's. first and renew both come here, outside c.mu: issuing may take a while.
func (c *Cache) issue(id spiffeid.ID) (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(c.ctx, issueTimeout)
	defer cancel()
	s, err := c.issuer.Issue(ctx, id)
	if err != nil {
		c.failures.Add(1)
		return nil, fmt.Errorf("identity: issue %s: %w", id, err)
	}
	if s.ID != id || len(s.Certificates) == 0 {
		c.failures.Add(1)
		return nil, fmt.Errorf("identity: issuer returned an SVID for %s, asked for %s", s.ID, id)
	}
	c.issuances.Add(1)
	return s, nil
}

// renewAfter is half of what is left of the SVID's life, counted from now.
func renewAfter(now time.Time, s *x509svid.SVID) time.Duration {
	left := s.Certificates[0].NotAfter.Sub(now)
	return max(left/2, 0)
}

func (c *Cache) scheduleLocked(e *cacheEntry, d time.Duration) {
	e.timer = time.AfterFunc(d, func() { c.renew(e) })
}

func (c *Cache) renew(e *cacheEntry) {
	s, err := c.issue(e.id)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.entries[e.id] != e {
		return
	}
	old := e.svid.Load()
	if err != nil {
		left := old.Certificates[0].NotAfter.Sub(c.now())
		retry := min(max(left/4, 100*time.Millisecond), 30*time.Second)
		c.log.Warn("svid renewal failed; retrying", "id", e.id.String(), "err", err, "retry_in", retry, "expires_in", left)
		c.scheduleLocked(e, retry)
		return
	}
	e.svid.Store(s)
	c.log.Debug("svid rotated", "id", e.id.String(), "not_after", s.Certificates[0].NotAfter)
	for _, w := range e.watchers {
		select {
		case w <- struct{}{}:
		default:
		}
	}
	c.scheduleLocked(e, renewAfter(c.now(), s))
}

// Watch notifies on every rotation of id's SVID. Watching an identity the cache does not hold yet
// starts holding it: its SVID is issued in the background.
func (c *Cache) Watch(id spiffeid.ID) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok || c.closed {
		e = &cacheEntry{id: id, ready: make(chan struct{}), watchers: map[int]chan struct{}{}}
		if c.closed {
			return ch, func() {}
		}
		c.entries[id] = e
		go c.first(e)
	}
	k := e.nextW
	e.nextW++
	e.watchers[k] = ch
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(e.watchers, k)
	}
}

// Forget drops the SVID of id (its workload left this node) and stops its rotation.
func (c *Cache) Forget(id spiffeid.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[id]; ok {
		if e.timer != nil {
			e.timer.Stop()
		}
		delete(c.entries, id)
	}
}

// Hold issues the SVID of s's identity (unless held already) and keeps it until every
// workload holding it is released. The built-in CA serves any identity, so a failure here is
// the CA's (enrollment fails and is retried).
func (c *Cache) Hold(ctx context.Context, s Subject) error {
	if err := c.Warm(ctx, s.ID); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	c.holders[s.UID] = s.ID
	return nil
}

// Release drops uid's hold; the SVID goes when no other workload of this node holds its identity.
func (c *Cache) Release(uid string) {
	c.mu.Lock()
	id, ok := c.holders[uid]
	delete(c.holders, uid)
	shared := false
	for _, other := range c.holders {
		shared = shared || other == id
	}
	c.mu.Unlock()
	if ok && !shared {
		c.Forget(id) // the agent holds keys only for workloads on its node
	}
}

// Check is nil when an unexpired SVID of id is held.
func (c *Cache) Check(id spiffeid.ID) error {
	c.mu.Lock()
	e, ok := c.entries[id]
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("identity: no SVID of %s is held on this node", id)
	}
	s := e.svid.Load()
	if s == nil {
		return fmt.Errorf("identity: the SVID of %s is being issued", id)
	}
	if end := s.Certificates[0].NotAfter; !c.now().Before(end) {
		return fmt.Errorf("identity: the SVID of %s expired at %s and was not renewed", id, end.UTC().Format(time.RFC3339))
	}
	return nil
}

// Held returns the identities whose SVIDs the cache holds or is issuing.
func (c *Cache) Held() []Held {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Held, 0, len(c.entries))
	for id, e := range c.entries {
		h := Held{ID: id, Source: SourceBuiltin, SVID: e.svid.Load()}
		if h.SVID == nil {
			h.Err = errors.New("being issued")
		}
		out = append(out, h)
	}
	return out
}

// Ready is nil until the cache is closed: the built-in CA is in the process.
func (c *Cache) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	return nil
}

// Issuances returns how many SVIDs the cache obtained from its issuer, and how many attempts failed.
func (c *Cache) Issuances() (ok, failed uint64) { return c.issuances.Load(), c.failures.Load() }

// GetX509BundleForTrustDomain returns the issuer's bundle for td.
func (c *Cache) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return c.issuer.GetX509BundleForTrustDomain(td)
}

// Close stops all renewals and drops every held key. SVID returns ErrClosed afterwards.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.cancel()
	for id, e := range c.entries {
		if e.timer != nil {
			e.timer.Stop()
		}
		delete(c.entries, id)
	}
	return nil
}

// Revocations forwards the issuer's revocations when it can revoke (it is a Revoker); otherwise
// it returns a nil channel, which never delivers.
func (c *Cache) Revocations() (<-chan spiffeid.ID, func()) {
	if r, ok := c.issuer.(Revoker); ok {
		return r.Revocations()
	}
	return nil, func() {}
}
