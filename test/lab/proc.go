package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrClosed is returned by Start once the lab is closed.
var ErrClosed = errors.New("lab: closed")

// nsName is the name `ip netns` knows the namespace at path by.
func nsName(path string) string { return filepath.Base(path) }

// Command returns a command that runs name with args inside the namespace at netnsPath (a path
// under /run/netns, or a bare name there), through `nsenter --net`, which execs in place: the
// command's process is the program's. Not `ip netns exec`: that also remounts /sys for the
// namespace, which hides the bpffs at /sys/fs/bpf the agents pin to. Any other path makes the
// command fail to start. The program is killed when ctx is done, or if this process dies first.
func (l *Lab) Command(ctx context.Context, netnsPath, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + filepath.Join(netnsDir, nsName(netnsPath)), "--", name}, args...)...)
	cmd.SysProcAttr = procAttr(false)
	if dir := filepath.Dir(netnsPath); dir != "." && dir != netnsDir {
		cmd.Err = fmt.Errorf("lab: run %s in %s: `ip netns exec` knows only namespaces under %s", name, netnsPath, netnsDir)
	}
	return cmd
}

// Proc is a long-running process started by Lab.Start. Close kills it, if it still runs.
type Proc struct {
	// Cmd is the running command; read Cmd.Process.Pid, do not Wait on it.
	Cmd *exec.Cmd
	// LogPath is the file its stdout and stderr are appended to.
	LogPath string

	done chan struct{} // closed when Wait has returned
	err  error         // Wait's, set before done is closed
}

// Start starts name with args in the namespace at netnsPath (see Command), in a process group of
// its own, with stdout and stderr appended to logPath. A relative logPath is taken inside l.Dir;
// an empty one becomes <netns>.<program>.<n>.log there. The process is killed, with its group,
// when ctx is done, when Kill is called, or by Close.
func (l *Lab) Start(ctx context.Context, netnsPath, logPath, name string, args ...string) (*Proc, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	if logPath == "" {
		l.logSeq++
		logPath = fmt.Sprintf("%s.%s.%d.log", nsName(netnsPath), filepath.Base(name), l.logSeq)
	}
	if !filepath.IsAbs(logPath) {
		logPath = filepath.Join(l.Dir, logPath)
	}
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: start %s: %w", name, err)
	}
	// The child has its own copy of the file; ours is not needed once it started.
	defer f.Close()
	cmd := l.Command(ctx, netnsPath, name, args...)
	cmd.SysProcAttr = procAttr(true)
	cmd.Stdout, cmd.Stderr = f, f
	p := &Proc{Cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	cmd.Cancel = p.Kill
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: start %s in %s: %w", name, netnsPath, err)
	}
	l.procs[p] = struct{}{}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		l.mu.Lock()
		delete(l.procs, p) // a no-op once Close took the map
		l.mu.Unlock()
	}()
	return p, nil
}

// Signal sends sig to the process (not its group), for a graceful stop with SIGTERM, say.
func (p *Proc) Signal(sig os.Signal) error {
	if err := p.Cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("lab: signal %s: %w", p.name(), err)
	}
	return nil
}

// Kill kills the process and its group with SIGKILL, and returns at once (Wait waits). It
// returns nil if the process has already exited.
func (p *Proc) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	// The group first, while the unreaped leader still holds the group's id (a pid is not reused
	// while a process or a group has it).
	gerr := killGroup(p.Cmd.Process.Pid)
	if err := p.Cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("lab: kill %s: %w", p.name(), err)
	}
	if gerr != nil {
		return fmt.Errorf("lab: kill group of %s: %w", p.name(), gerr)
	}
	return nil
}

// Wait waits for the process to exit and returns what exec.Cmd.Wait returned. It may be called
// any number of times, from any goroutine.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

func (p *Proc) name() string {
	// Args are ip netns exec <netns> <name> <args>...
	return fmt.Sprintf("%q in %s (pid %d)", strings.Join(p.Cmd.Args[4:], " "), p.Cmd.Args[3], p.Cmd.Process.Pid)
}
