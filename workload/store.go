package workload

import (
	"sync"
	"sync/atomic"
)

// Store holds the current State and tells subscribers when it is replaced.
//
// Load is lock-free: readers take one *State and use it for as long as one decision lasts, so a
// decision never mixes two snapshots. Replace swaps the pointer; it never blocks on a subscriber.
// A Store is made with NewStore.
type Store struct {
	cur atomic.Pointer[State]

	mu   sync.Mutex // orders Replace's sends and guards subs
	subs map[chan *State]struct{}
}

// NewStore returns a Store holding initial, or an empty State when initial is nil.
func NewStore(initial *State) *Store {
	s := &Store{subs: make(map[chan *State]struct{})}
	if initial == nil {
		initial = &State{}
	}
	s.cur.Store(initial)
	return s
}

// Load returns the current State; never nil.
func (s *Store) Load() *State { return s.cur.Load() }

// Replace makes next the current State and sends it to every subscriber. It panics if next is nil.
func (s *Store) Replace(next *State) {
	if next == nil {
		panic("workload: Store.Replace(nil)")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur.Store(next)
	for ch := range s.subs {
		offer(ch, next)
	}
}

// offer puts st in ch (capacity 1), dropping a state the reader has not taken yet: a slow reader
// skips intermediate states and always finds the newest. Callers hold Store.mu, so no other sender
// can fill the slot between the drain and the send.
func offer(ch chan *State, st *State) {
	select {
	case <-ch:
	default:
	}
	ch <- st
}

// Subscribe returns a channel that receives the current State at once and then every State passed
// to Replace, coalesced: if the reader falls behind it gets only the newest. cancel stops the
// deliveries and closes the channel; it may be called more than once.
func (s *Store) Subscribe() (updates <-chan *State, cancel func()) {
	ch := make(chan *State, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	ch <- s.cur.Load()
	s.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.subs, ch)
			close(ch)
			s.mu.Unlock()
		})
	}
}
