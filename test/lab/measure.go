package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Iperf runs a real iperf3 server in pod srv and a client in pod from that connects to addr
// (host:port, the server's port being 5201 unless a proxy in between forwards to it), with
// streams parallel streams for d (whole seconds, at least one), and returns the receiver's Gbit/s.
// The client retries while the server comes up, bounded by the context and 50 attempts.
func (l *Lab) Iperf(ctx context.Context, from, srv *Pod, addr string, streams int, d time.Duration) (float64, error) {
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	server, err := l.Start(cctx, srv.Netns, "", "iperf3", "-s", "-p", "5201")
	if err != nil {
		return 0, err
	}
	defer func() { server.Kill() }()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("lab: iperf3 address: %w", err)
	}
	secs := max(1, int(d/time.Second))
	var lastErr error
	for range 50 {
		out, err := l.Command(cctx, from.Netns, "iperf3", "-c", host, "-p", port, "-P", strconv.Itoa(streams),
			"-t", strconv.Itoa(secs), "-J").Output()
		var res struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err == nil && json.Unmarshal(out, &res) == nil && res.Error == "" && res.End.SumReceived.BitsPerSecond > 0 {
			return res.End.SumReceived.BitsPerSecond / 1e9, nil
		}
		lastErr = fmt.Errorf("%v %s", err, res.Error)
		if cctx.Err() != nil {
			break
		}
		select {
		case <-server.Done():
			// The server died (it does after some client errors): say why, and start another.
			log, _ := os.ReadFile(server.LogPath)
			lastErr = fmt.Errorf("%w (server exited: %v; its log: %q)", lastErr, server.Wait(), log)
			if server, err = l.Start(cctx, srv.Netns, "", "iperf3", "-s", "-p", "5201"); err != nil {
				return 0, err
			}
		default:
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("lab: iperf3 %s -> %s: %w", from.Name, addr, lastErr)
}

// RSSMiB returns the resident memory of process pid.
func RSSMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("lab: rss of %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("lab: no VmRSS for %d", pid)
}

// CPUSeconds is the user+system CPU seconds process pid has used (0 when it is gone).
func CPUSeconds(pid int) float64 {
	user, kernel := cpuTimes(pid)
	return user + kernel
}

// cpuTimes is the user and system CPU seconds of process pid, every thread (0, 0 when it is
// gone).
func cpuTimes(pid int) (user, kernel float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return ut / 100, st / 100 // USER_HZ
}

// Activity is what a process has done so far, as the kernel counts it: the CPU seconds it used
// and, of them, those in the kernel (utime + stime and stime of /proc/PID/stat, every thread), its read- and write-like system calls
// (syscr + syscw of /proc/PID/io, every thread) and the context switches of its threads alive
// now (voluntary + involuntary, /proc/PID/task/*/status). All are zero for a process that is
// gone.
type Activity struct {
	CPUSeconds    float64
	KernelSeconds float64
	IOSyscalls    float64
	CtxSwitches   float64
}

// ActivityOf reads pid's Activity.
func ActivityOf(pid int) Activity {
	user, kernel := cpuTimes(pid)
	a := Activity{CPUSeconds: user + kernel, KernelSeconds: kernel,
		IOSyscalls: sumFields(fmt.Sprintf("/proc/%d/io", pid), "syscr", "syscw")}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		a.CtxSwitches += sumFields(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()), "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
	}
	return a
}

// sumFields adds the numbers of the "key: number" lines of the file at path whose key is one of
// keys (0 when the file is gone).
func sumFields(path string, keys ...string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	total := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && slices.Contains(keys, k) {
			n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			total += n
		}
	}
	return total
}

// SettledRSS is each pid's RSS (MiB) once their sum stopped moving (a second apart within 1 %,
// at most ten tries): connections just opened, or a heap just grown, are still settling.
func SettledRSS(pids []int) []float64 {
	var last []float64
	sum := func(v []float64) (t float64) {
		for _, x := range v {
			t += x
		}
		return t
	}
	for range 10 {
		now := make([]float64, len(pids))
		for i, pid := range pids {
			now[i], _ = RSSMiB(pid)
		}
		if last != nil && sum(now) >= sum(last)*0.99 && sum(now) <= sum(last)*1.01 {
			return now
		}
		last = now
		time.Sleep(time.Second)
	}
	return last
}
