package tunnel

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// TestVictim: which handshake in progress a newcomer closes when the table is full.
func TestVictim(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	now := time.Now()
	type slot struct {
		from netip.Addr
		age  time.Duration
	}
	for _, tc := range []struct {
		name  string
		slots []slot
		from  netip.Addr
		want  int // index into slots, -1: none
	}{
		{"a source holding two more gives its oldest", []slot{{a, 10 * time.Millisecond}, {a, 30 * time.Millisecond}, {b, 2 * time.Second}}, c, 1},
		{"young handshakes one per source stay", []slot{{a, 10 * time.Millisecond}, {b, 20 * time.Millisecond}}, c, -1},
		{"one per source: the oldest once stalled", []slot{{a, 10 * time.Millisecond}, {b, 1500 * time.Millisecond}}, c, 1},
		{"one more than the newcomer is not enough", []slot{{a, 10 * time.Millisecond}, {a, 20 * time.Millisecond}, {c, 30 * time.Millisecond}}, c, -1},
		{"the newcomer's own source gets no share of its own", []slot{{a, 10 * time.Millisecond}, {a, 20 * time.Millisecond}, {a, 30 * time.Millisecond}}, a, -1},
		{"the newcomer's own stalled one is still the oldest", []slot{{a, 10 * time.Millisecond}, {a, 3 * time.Second}}, a, 1},
		{"empty table", nil, a, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{cfg: ServerConfig{HandshakeEvictAfter: time.Second}, inHandshake: map[net.Conn]handshakeSlot{}}
			conns := make([]net.Conn, len(tc.slots))
			for i, sl := range tc.slots {
				c1, c2 := net.Pipe()
				defer c1.Close()
				defer c2.Close()
				conns[i] = c1
				s.inHandshake[c1] = handshakeSlot{at: now.Add(-sl.age), from: sl.from}
			}
			got := s.victimLocked(tc.from, now)
			var want net.Conn
			if tc.want >= 0 {
				want = conns[tc.want]
			}
			if got != want {
				t.Errorf("victim %v, want slot %d", got, tc.want)
			}
		})
	}
}

// TestHandshakeRates: each source IP has its own bucket of HandshakeBurstPerPeer tokens refilled
// at HandshakeRatePerPeer, and the server keeps at most maxRateEntries of them: full buckets go
// first, and a source finding no room is not limited (the other budgets still bound it).
func TestHandshakeRates(t *testing.T) {
	now := time.Now()
	s := &Server{cfg: ServerConfig{HandshakeRatePerPeer: 10, HandshakeBurstPerPeer: 3}, rates: map[netip.Addr]*rate.Limiter{}}
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for i, want := range []bool{true, true, true, false, false} {
		if got := s.handshakeAllowedLocked(a, now); got != want {
			t.Errorf("a's handshake %d at once: allowed %v, want %v", i, got, want)
		}
	}
	if !s.handshakeAllowedLocked(b, now) {
		t.Error("another source's first handshake refused: buckets are per source")
	}
	if !s.handshakeAllowedLocked(a, now.Add(100*time.Millisecond)) || s.handshakeAllowedLocked(a, now.Add(100*time.Millisecond)) {
		t.Error("100 ms at 10 a second should give a back exactly one handshake")
	}

	// Fill the table: every bucket but one is full again a second later and goes to make room.
	for i := range maxRateEntries - len(s.rates) {
		s.handshakeAllowedLocked(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), now)
	}
	if len(s.rates) != maxRateEntries {
		t.Fatalf("%d buckets, want the table full (%d)", len(s.rates), maxRateEntries)
	}
	drained := netip.MustParseAddr("10.0.0.9")
	slow := rate.NewLimiter(rate.Every(time.Hour), 3)
	slow.AllowN(now, 3) // empty, and far from full a second later: not prunable
	s.rates[drained] = slow
	delete(s.rates, b)
	later := now.Add(time.Second)
	if !s.handshakeAllowedLocked(netip.MustParseAddr("10.9.9.9"), later) {
		t.Error("a new source refused with the table full")
	}
	if len(s.rates) > maxRateEntries {
		t.Errorf("%d buckets kept, bound %d", len(s.rates), maxRateEntries)
	}
	if _, kept := s.rates[drained]; !kept {
		t.Error("a bucket that is not full was pruned")
	}
}

// TestRefusalLog: each reason writes refusalLogBurst lines at once, then refusalLogRate a
// second, and its next line after a gap says how many it held back; reasons do not share.
func TestRefusalLog(t *testing.T) {
	var l refusalLog
	now := time.Now()
	for i := range refusalLogBurst {
		if ok, held := l.allow(ReasonHandshakeRate, now); !ok || held != 0 {
			t.Fatalf("line %d of the burst: allowed %v, held %d", i, ok, held)
		}
	}
	for range 5 {
		if ok, _ := l.allow(ReasonHandshakeRate, now); ok {
			t.Fatal("a line past the burst at once was allowed")
		}
	}
	if ok, held := l.allow(ReasonTooManyConns, now); !ok || held != 0 {
		t.Errorf("another reason's first line: allowed %v, held %d", ok, held)
	}
	if ok, held := l.allow(ReasonHandshakeRate, now.Add(time.Second/refusalLogRate)); !ok || held != 5 {
		t.Errorf("the line after a refill: allowed %v, held %d; want true, 5", ok, held)
	}
	if ok, held := l.allow(reasonCount, now); !ok || held != 0 {
		t.Errorf("an unknown reason: allowed %v, held %d; want always written", ok, held)
	}
}
