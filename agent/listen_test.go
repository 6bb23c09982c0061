package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/workload"
)

// flakyListener fails its first accepts with the errors of a process out of file descriptors,
// then accepts from a real listener.
type flakyListener struct {
	*net.TCPListener
	fails atomic.Int32
}

func (l *flakyListener) AcceptTCP() (*net.TCPConn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.TCPListener.AcceptTCP()
}

// TestServeSurvivesAcceptErrors: an accept error (EMFILE when a peer has used up the file
// descriptors) must not end a pod's listener for good; only closing it does.
func TestServeSurvivesAcceptErrors(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{TCPListener: ln}
	fl.fails.Store(5)
	a := &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	handled := make(chan struct{}, 1)
	served := make(chan struct{})
	go func() {
		defer close(served)
		a.serve(context.Background(), &pod{w: &workload.Workload{UID: "u1"}}, fl, func(_ context.Context, _ *pod, c *net.TCPConn) {
			c.Close()
			handled <- struct{}{}
		})
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-handled:
	case <-served:
		t.Fatal("serve returned after accept errors: the listener is dead for good")
	case <-time.After(5 * time.Second):
		t.Fatal("the connection after the accept errors was never handled")
	}
	if got := a.acceptErrors.Load(); got != 5 {
		t.Fatalf("accept errors counted %d, want 5", got)
	}
	ln.Close()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after its listener closed")
	}
}

// TestPodDialBudget: a pod's dials in flight are bounded, and a refused one leaves the budget
// as it was.
func TestPodDialBudget(t *testing.T) {
	p := &pod{dials: make(chan struct{}, maxPodDials)}
	var releases []func()
	for range maxPodDials {
		r, err := p.acquireDial()
		if err != nil {
			t.Fatalf("dial %d of %d refused: %v", len(releases)+1, maxPodDials, err)
		}
		releases = append(releases, r)
	}
	if _, err := p.acquireDial(); !errors.Is(err, errDialBudget) {
		t.Fatalf("dial over the budget: %v, want errDialBudget", err)
	}
	releases[0]()
	r, err := p.acquireDial()
	if err != nil {
		t.Fatalf("a dial after one finished was refused: %v", err)
	}
	r()
	for _, r := range releases[1:] {
		r()
	}
	if len(p.dials) != 0 {
		t.Fatalf("%d tokens held after every dial finished", len(p.dials))
	}
}
