package scale

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/amesh-dev/amesh/test/k8s"
	"github.com/amesh-dev/amesh/test/lab"
)

// peer is one bench/scale/watcher beside the agent, on node1 with the agent's kubeconfig: what
// watching the same events costs without amesh (-mode informer: stock client-go informers;
// -mode stream: the watch bytes alone).
type peer struct {
	mode    string
	proc    *lab.Proc
	logPath string
}

// peerModes are the watchers run beside the agent, in the order Result reports them.
var peerModes = []string{"informer", "stream"}

// startPeers starts one watcher per mode and waits until each watches (it prints "synced").
func startPeers(ctx context.Context, l *lab.Lab, bin, kubeconfig, dir string, tag int) ([]*peer, error) {
	var ps []*peer
	for _, mode := range peerModes {
		p := &peer{mode: mode, logPath: filepath.Join(dir, fmt.Sprintf("watcher-%s-%d.log", mode, tag))}
		proc, err := l.Start(ctx, l.Node("node1").Netns, p.logPath, bin, "-kubeconfig", kubeconfig, "-mode", mode)
		if err != nil {
			stopPeers(ps)
			return nil, err
		}
		p.proc = proc
		ps = append(ps, p)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for _, p := range ps {
		for {
			b, _ := os.ReadFile(p.logPath)
			if strings.Contains(string(b), "synced\n") {
				break
			}
			select {
			case <-p.proc.Done():
				stopPeers(ps)
				return nil, fmt.Errorf("scale: watcher -mode %s exited: %s", p.mode, k8s.TailFile(p.logPath, 10))
			case <-ctx.Done():
				stopPeers(ps)
				return nil, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				stopPeers(ps)
				return nil, fmt.Errorf("scale: watcher -mode %s not synced in 5 minutes: %s", p.mode, k8s.TailFile(p.logPath, 10))
			}
		}
	}
	return ps, nil
}

func (p *peer) pid() int { return p.proc.Cmd.Process.Pid }

// stop ends the watcher (SIGTERM) and returns the events it counted (-mode informer) and the
// bytes it read (-mode stream) since it synced.
func (p *peer) stop() (events, bytes int64, err error) {
	p.proc.Signal(syscall.SIGTERM)
	select {
	case <-p.proc.Done():
	case <-time.After(10 * time.Second):
		p.proc.Kill()
		<-p.proc.Done()
		return 0, 0, fmt.Errorf("scale: watcher -mode %s ignored SIGTERM: %s", p.mode, k8s.TailFile(p.logPath, 10))
	}
	if err := p.proc.Wait(); err != nil {
		return 0, 0, fmt.Errorf("scale: watcher -mode %s: %w: %s", p.mode, err, k8s.TailFile(p.logPath, 10))
	}
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return 0, 0, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if _, err := fmt.Sscanf(lines[len(lines)-1], "events %d bytes %d", &events, &bytes); err != nil {
		return 0, 0, fmt.Errorf("scale: watcher -mode %s: last line %q: %w", p.mode, lines[len(lines)-1], err)
	}
	return events, bytes, nil
}

// stopPeers stops what startPeers started, on its way out after an error.
func stopPeers(ps []*peer) {
	for _, p := range ps {
		p.stop()
	}
}
