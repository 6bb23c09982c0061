package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
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
	out := map[string]float64{"qps": res.ActualQPS}
	for _, p := range res.DurationHistogram.Percentiles {
		out["p"+strconv.FormatFloat(p.Percentile, 'f', -1, 64)] = p.Value * 1e6
	}
	json.NewEncoder(os.Stdout).Encode(out)
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
