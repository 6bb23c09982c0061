package scale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/amesh-dev/amesh/test/lab"
)

// probeLimit bounds the wait for one change to be enforced; readyLimit the wait for the agent's
// first enforcement before the run (sync and enrollment, slower on a machine busy building).
const (
	probeLimit = 10 * time.Second
	readyLimit = 60 * time.Second
)

// prober measures enforcement on real traffic: pod a's connections to b (the policy probe) and
// to the probe service's VIP (the endpoint probe), through the agent.
type prober struct {
	c        *cluster
	from, to *lab.Pod
	vip      netip.AddrPort
}

// ready waits until the agent serves a → b and refuses a → the VIP (its slice is empty).
func (p *prober) ready(ctx context.Context) error {
	svc, err := p.c.cs.CoreV1().Services(probeNS).Get(ctx, probeService, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("probe service: %w", err)
	}
	vip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return fmt.Errorf("probe service's cluster ip %q: %w", svc.Spec.ClusterIP, err)
	}
	p.vip = netip.AddrPortFrom(vip, 80)
	direct := netip.AddrPortFrom(p.to.IP, 9000).String()
	if _, ok := p.await(ctx, direct, true, time.Now(), readyLimit); !ok {
		return errors.New("probe: a → b is not served before the run")
	}
	if _, ok := p.await(ctx, p.vip.String(), false, time.Now(), readyLimit); !ok {
		return errors.New("probe: a → the probe service is served before it has endpoints")
	}
	return nil
}

// served reports whether one connection from a to addr is served: connected and echoed. A
// connection the agent refuses is closed at once (or never connects).
func (p *prober) served(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	c, err := p.from.Dial(ctx, addr)
	if err != nil {
		return false
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return err == nil && string(buf) == "ping"
}

// await tries addr every 2 ms until served(addr) is want, and returns how long after t0 it
// first was; ok is false after limit.
func (p *prober) await(ctx context.Context, addr string, want bool, t0 time.Time, limit time.Duration) (time.Duration, bool) {
	for time.Since(t0) < limit && ctx.Err() == nil {
		if p.served(ctx, addr) == want {
			return time.Since(t0), true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(t0), false
}

// measure takes samples back to back until ctx ends: a DENY policy on b created (a → b refused)
// and deleted (served again); b added to the probe service's slice (a → the VIP served) and
// removed (refused). Each sample's clock starts before its API call.
func (p *prober) measure(ctx context.Context, lat *latencies, timeouts *int) error {
	direct := netip.AddrPortFrom(p.to.IP, 9000).String()
	pols := p.c.dyn.Resource(policies).Namespace(probeNS)
	// API writes are not cancelled with ctx: a change made is always undone.
	api := context.WithoutCancel(ctx)
	record := func(into *[]float64, d time.Duration, ok bool) {
		if ok {
			*into = append(*into, float64(d.Microseconds())/1000)
		} else {
			*timeouts++
		}
	}
	for ctx.Err() == nil {
		t0 := time.Now()
		if _, err := pols.Create(api, denyObject(probeNS, probeDeny, probeTarget), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("probe: deny policy: %w", err)
		}
		d, ok := p.await(api, direct, false, t0, probeLimit)
		record(&lat.policy, d, ok)
		t0 = time.Now()
		if err := pols.Delete(api, probeDeny, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("probe: delete deny policy: %w", err)
		}
		d, ok = p.await(api, direct, true, t0, probeLimit)
		record(&lat.policy, d, ok)
		if ctx.Err() != nil {
			break
		}
		t0 = time.Now()
		if err := p.c.setProbeEndpoints(api, true); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		d, ok = p.await(api, p.vip.String(), true, t0, probeLimit)
		record(&lat.endpoint, d, ok)
		t0 = time.Now()
		if err := p.c.setProbeEndpoints(api, false); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		d, ok = p.await(api, p.vip.String(), false, t0, probeLimit)
		record(&lat.endpoint, d, ok)
	}
	return nil
}
