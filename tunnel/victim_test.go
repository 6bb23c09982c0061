package tunnel

import (
	"net"
	"net/netip"
	"testing"
	"time"
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
