package agent

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// addrConn is a connection that only has addresses.
type addrConn struct {
	net.Conn
	local, remote net.Addr
}

func (c addrConn) LocalAddr() net.Addr  { return c.local }
func (c addrConn) RemoteAddr() net.Addr { return c.remote }

func tcp(s string) *net.TCPAddr { a, _ := net.ResolveTCPAddr("tcp", s); return a }

func TestEndpointSource(t *testing.T) {
	for _, tc := range []struct {
		local, remote string
		want          bool
	}{
		{"127.0.0.1:15021", "127.0.0.1:4000", true},
		{"[::1]:15021", "[::1]:4000", true},
		{"10.250.0.1:15021", "10.250.0.1:4000", true}, // the kubelet probing the node's address
		{"10.250.0.1:15021", "10.250.0.2:4000", false},
		{"10.250.0.1:15021", "10.20.1.5:4000", false}, // a pod
		{"[::ffff:10.250.0.1]:15021", "10.250.0.1:4000", true},
	} {
		_, got := source(addrConn{local: tcp(tc.local), remote: tcp(tc.remote)})
		if got != tc.want {
			t.Errorf("%s -> %s: local %v, want %v", tc.remote, tc.local, got, tc.want)
		}
	}
}

// TestEndpointBudget: one remote source gets endpointConnsPerSource connections, all remote
// sources endpointRemoteConns, the node itself endpointLocalConns apart from them; a closed
// connection gives its share back.
func TestEndpointBudget(t *testing.T) {
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r"}, []string{"endpoint", "reason"})
	l := &budgetListener{bySource: map[netip.Addr]int{},
		overSource: refused.WithLabelValues("e", "source_budget"), overTotal: refused.WithLabelValues("e", "total_budget")}
	from := func(remote string) net.Conn { return addrConn{local: tcp("10.250.0.1:15021"), remote: tcp(remote)} }
	var releases []func()
	admitN := func(n int, remote func(i int) string) (admitted int) {
		for i := range n {
			if r, ok := l.admit(from(remote(i))); ok {
				releases = append(releases, r)
				admitted++
			}
		}
		return admitted
	}
	one := func(int) string { return "10.20.1.5:4000" }
	if got := admitN(endpointConnsPerSource+5, one); got != endpointConnsPerSource {
		t.Errorf("one source: %d admitted, want %d", got, endpointConnsPerSource)
	}
	if got := testutil.ToFloat64(refused.WithLabelValues("e", "source_budget")); got != 5 {
		t.Errorf("source_budget refusals %v, want 5", got)
	}
	many := func(i int) string { return fmt.Sprintf("10.30.%d.%d:4000", i/250, i%250+1) }
	if got, want := admitN(endpointRemoteConns+10, many), endpointRemoteConns-endpointConnsPerSource; got != want {
		t.Errorf("many sources: %d admitted, want %d", got, want)
	}
	node := func(int) string { return "10.250.0.1:5000" }
	if got := admitN(endpointLocalConns+1, node); got != endpointLocalConns {
		t.Errorf("the node itself, with the remote budget spent: %d admitted, want %d", got, endpointLocalConns)
	}
	// 10 over the remote budget, the one source's 8 too many there, 1 over the node's own.
	if got, want := testutil.ToFloat64(refused.WithLabelValues("e", "total_budget")), float64(10+endpointConnsPerSource+1); got != want {
		t.Errorf("total_budget refusals %v, want %v", got, want)
	}
	for _, r := range releases {
		r()
	}
	if l.local != 0 || l.remote != 0 || len(l.bySource) != 0 {
		t.Errorf("after every close: local %d, remote %d, %d sources; want nothing charged", l.local, l.remote, len(l.bySource))
	}
	if got := admitN(1, one); got != 1 {
		t.Errorf("after every close: the first source is refused")
	}
}
