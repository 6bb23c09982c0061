package lab

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// EchoPort is the port RR dials: where the demo, the e2e cluster and the bench suite run Echo in
// every pod.
const EchoPort = "9000"

// Echo serves ln until it is closed: it writes back every byte of each connection it accepts, and
// closes the connection once the peer has half-closed or closed it. accepted, when not nil, is
// called with each connection before its echo starts (a test that checks the peer's address uses
// it). Echo returns once ln is closed and every connection it accepted is done, so it is run in
// its own goroutine: go lab.Echo(ln, nil).
func Echo(ln net.Listener, accepted func(net.Conn)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			if accepted != nil {
				accepted(c)
			}
			io.Copy(c, c)
		})
	}
}

// RROptions says how many round trips RR times and how fast it sends them.
type RROptions struct {
	Requests int // round trips to time, at least one
	Rate     int // requests per second; 0 sends each one as soon as the previous echo is back
}

// RR times 1 KiB request/response round trips from pod from to the Echo on EchoPort of pod to,
// all on one connection, each request written once the previous echo is read in full, and
// returns the p50 and p99. ctx bounds the dial and, when it has a deadline, the whole run.
func RR(ctx context.Context, from, to *Pod, o RROptions) (p50, p99 time.Duration, err error) {
	if o.Requests < 1 {
		return 0, 0, errors.New("lab: rr: no requests")
	}
	c, err := from.Dial(ctx, net.JoinHostPort(to.IP.String(), EchoPort))
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	var tick <-chan time.Time
	if o.Rate > 0 {
		t := time.NewTicker(time.Second / time.Duration(o.Rate))
		defer t.Stop()
		tick = t.C
	}
	msg, buf := make([]byte, 1024), make([]byte, 1024)
	lat := make([]time.Duration, 0, o.Requests)
	for range o.Requests {
		if tick != nil {
			<-tick
		}
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, 0, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}
