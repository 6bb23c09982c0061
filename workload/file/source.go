package file

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/amesh-dev/amesh/workload"
)

// DefaultInterval is how often a Source polls its file when Interval is zero.
const DefaultInterval = 250 * time.Millisecond

// Source feeds a workload.Store from a state file (local mode). It polls the file by path and
// compares the content's hash, so any way of updating the file works, including editors and tools
// that write a new file and rename it over the old one (the atomic way, recommended). A change is
// applied once the content has been the same on two polls in a row: a file caught in the middle of
// an in-place rewrite is not parsed half-written, since a truncated file can be valid YAML that
// silently drops workloads or DENY policies.
//
// An invalid file is rejected whole: the last good state stays in force.
type Source struct {
	// Path of the state file.
	Path string
	// Interval between polls; DefaultInterval when zero.
	Interval time.Duration
	// Logger receives a Warn line per rejected version (with every problem and its line) and an
	// Info line per applied one; nil discards.
	Logger *slog.Logger

	rejected atomic.Uint64
	builds   atomic.Uint64
	loaded   atomic.Pointer[[sha256.Size]byte] // hash of what Load last parsed
}

// Load reads and parses the file once. A Run that follows does not apply the same content again:
// a reload that changes nothing must not look like a change to subscribers.
func (f *Source) Load() (*workload.State, error) {
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, fmt.Errorf("workload: read state file: %w", err)
	}
	st, err := Parse(f.Path, data)
	if err == nil {
		h := sha256.Sum256(data)
		f.loaded.Store(&h)
		f.builds.Add(1)
	}
	return st, err
}

// Builds returns how many States were built from the file (each one from all of it).
func (f *Source) Builds() uint64 { return f.builds.Load() }

// Rejected returns how many versions of the file Run has rejected as invalid.
func (f *Source) Rejected() uint64 { return f.rejected.Load() }

// Run polls the file and calls store.Replace with each new valid version, the first one included
// unless it is what Load last returned, until ctx is done; it then returns ctx.Err(). A version that does not parse is logged, counted
// (Rejected) and otherwise ignored; so is, once per distinct error, a file that cannot be read.
func (f *Source) Run(ctx context.Context, store *workload.Store) error {
	if store == nil {
		return errors.New("workload: FileSource.Run: nil store")
	}
	interval := f.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	log := f.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("path", f.Path)

	t := time.NewTicker(interval)
	defer t.Stop()
	var p poller
	if h := f.loaded.Load(); h != nil {
		p.seen, p.haveSeen = *h, true
	}
	for {
		p.poll(f, store, log)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// poller is Run's memory between polls.
type poller struct {
	seen        [sha256.Size]byte // last content parsed, valid or not
	haveSeen    bool
	pending     [sha256.Size]byte // changed content waiting to be seen twice
	havePending bool
	readErr     string // last read error logged
}

func (p *poller) poll(f *Source, store *workload.Store, log *slog.Logger) {
	data, err := os.ReadFile(f.Path)
	if err != nil {
		if msg := err.Error(); msg != p.readErr {
			p.readErr = msg
			log.Warn("state file unreadable, keeping the last good state", "err", err)
		}
		p.havePending = false
		return
	}
	p.readErr = ""
	h := sha256.Sum256(data)
	if p.haveSeen && h == p.seen {
		p.havePending = false
		return
	}
	if !p.havePending || h != p.pending {
		p.pending, p.havePending = h, true
		return
	}
	p.havePending = false
	p.seen, p.haveSeen = h, true

	st, err := Parse(f.Path, data)
	if err != nil {
		n := f.rejected.Add(1)
		log.Warn("state file rejected, keeping the last good state", "err", err, "rejected", n)
		return
	}
	f.builds.Add(1)
	store.Replace(st)
	log.Info("state file applied", "nodes", len(st.Nodes()), "workloads", len(st.Workloads()),
		"services", len(st.Services()), "policies", len(st.PolicySet()))
}
