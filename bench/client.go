package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"fortio.org/fortio/periodic"
	"fortio.org/fortio/tcprunner"

	"github.com/amesh-dev/amesh/test/lab"
)

// runClient re-executes the suite's command inside the pod's netns as a load client.
func runClient(ctx context.Context, l *lab.Lab, self []string, pod, mode string, args ...string) (map[string]float64, error) {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	argv := append(append(slices.Clone(self[1:]), mode), args...)
	out, err := l.Command(cctx, l.Pod(pod).Netns, self[0], argv...).Output()
	if err != nil {
		return nil, fmt.Errorf("%s client in %s: %v %s", mode, pod, err, out)
	}
	var m map[string]float64
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("%s client output %q: %w", mode, out, err)
	}
	return m, nil
}

// clientRR is `bench rr`: fortio's TCP echo runner at a QPS (-1: max) on one connection.
func clientRR(args []string) int {
	fs := flag.NewFlagSet("rr", flag.ExitOnError)
	dest := fs.String("dest", "", "echo server host:port")
	qps := fs.Float64("qps", 1000, "requests per second (-1 for max)")
	d := fs.Duration("duration", 3*time.Second, "duration")
	fs.Parse(args)
	o := tcprunner.RunnerOptions{
		RunnerOptions: periodic.RunnerOptions{QPS: *qps, Duration: *d, NumThreads: 1, Percentiles: []float64{50, 90, 99, 99.9}, Resolution: 1e-6, Out: io.Discard},
		TCPOptions:    tcprunner.TCPOptions{Destination: *dest, Payload: make([]byte, 1024), ReqTimeout: 5 * time.Second},
	}
	res, err := tcprunner.RunTCPTest(&o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if res.RetCodes[tcprunner.TCPStatusOK] == 0 || len(res.RetCodes) > 1 {
		fmt.Fprintf(os.Stderr, "rr: results %v\n", res.RetCodes)
		return 1
	}
	printResult(&res.RunnerResults)
	return 0
}

// clientCPS is `bench cps`: new connections per second, each a 1 KiB echo then close.
func clientCPS(args []string) int {
	fs := flag.NewFlagSet("cps", flag.ExitOnError)
	dest := fs.String("dest", "", "echo server host:port")
	d := fs.Duration("duration", 3*time.Second, "duration")
	fs.Parse(args)
	msg, buf := make([]byte, 1024), make([]byte, 1024)
	n, start := 0, time.Now()
	for time.Since(start) < *d {
		c, err := net.DialTimeout("tcp", *dest, 5*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Write(msg)
		if err == nil {
			_, err = io.ReadFull(c, buf)
		}
		c.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		n++
	}
	json.NewEncoder(os.Stdout).Encode(map[string]float64{"cps": float64(n) / time.Since(start).Seconds()})
	return 0
}

// clientHTTP is `bench http`: GETs of a URL answering 1 KiB, over one keep-alive connection, at
// a QPS (-1: max) for a duration, scheduled and measured by fortio's periodic runner as the rr
// mode's are, so the two report the same percentiles. Each request is bounded by a 5s timeout, the
// run by its duration (it ends after duration + 5s at the latest) and by maxHTTPRequests.
func clientHTTP(args []string) int {
	fs := flag.NewFlagSet("http", flag.ExitOnError)
	url := fs.String("url", "", "URL to GET, e.g. http://10.96.0.10:80/")
	qps := fs.Float64("qps", 1000, "requests per second (-1 for max)")
	d := fs.Duration("duration", 3*time.Second, "duration")
	fs.Parse(args)
	g := &httpGetter{url: *url, limit: maxHTTPRequests, client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 1,
		MaxConnsPerHost:     1, // one connection, as the rr mode uses: a second one would be a bug
	}}}
	defer g.client.CloseIdleConnections()
	// The first request opens the connection (and makes the agents decide the pair), outside the
	// measured run as fortio's TCP runner does with its first echo.
	if err := g.get(); err != nil {
		fmt.Fprintln(os.Stderr, "http:", err)
		return 1
	}
	o := periodic.RunnerOptions{QPS: *qps, Duration: *d, NumThreads: 1, Percentiles: []float64{50, 90, 99, 99.9}, Resolution: 1e-6, Out: io.Discard}
	r := periodic.NewPeriodicRunner(&o)
	defer r.Options().Abort()
	r.Options().Runners[0] = g // after NewPeriodicRunner, which resets them (as tcprunner does it)
	g.abort = r.Options().Abort
	res := r.Run()
	if n := g.failed.Load(); n > 0 || res.DurationHistogram.Count == 0 {
		fmt.Fprintf(os.Stderr, "http: %d of %d requests failed, first: %v\n", n, res.DurationHistogram.Count, g.firstErr.Load())
		return 1
	}
	printResult(&res)
	return 0
}

// printResult writes a run's rate and percentiles (µs) as the one JSON line the suite reads.
func printResult(res *periodic.RunnerResults) {
	out := map[string]float64{"qps": res.ActualQPS}
	for _, p := range res.DurationHistogram.Percentiles {
		out["p"+strconv.FormatFloat(p.Percentile, 'f', -1, 64)] = p.Value * 1e6
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

// maxHTTPRequests bounds a max-rate run of clientHTTP in count as well as in time.
const maxHTTPRequests = 2_000_000

// httpGetter is the periodic runner's Runnable for clientHTTP: one GET per Run.
type httpGetter struct {
	url      string
	client   *http.Client
	limit    int64  // requests after which abort ends the run
	abort    func() // the runner's; set before it runs
	done     atomic.Int64
	failed   atomic.Int64
	firstErr atomic.Value // error: the first failure, for the report
}

// Run makes one request; a failure is counted and fails the run.
func (g *httpGetter) Run(context.Context, periodic.ThreadID) (bool, string) {
	if g.done.Add(1) == g.limit {
		g.abort()
	}
	if err := g.get(); err != nil {
		if g.failed.Add(1) == 1 {
			g.firstErr.Store(err)
		}
		return false, err.Error()
	}
	return true, ""
}

// get GETs the URL and reads the whole body: 200 and 1 KiB, or an error.
func (g *httpGetter) get() error {
	resp, err := g.client.Get(g.url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: read body: %w", g.url, err)
	}
	if resp.StatusCode != http.StatusOK || n != 1024 {
		return fmt.Errorf("GET %s: %s with %d bytes, want 200 with 1024", g.url, resp.Status, n)
	}
	return nil
}
