package k8s

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func checkPlatform() error { return nil }

// procAttr gives a child a process group of its own (killGroup ends it and anything it forked)
// and has it killed when this process dies. Pdeathsig fires when the thread that forked exits,
// not the process (golang/go#27505); Go ends a thread only when a goroutine locked to it exits
// locked, which inNetns does only when it cannot switch the thread back, so this holds in
// practice.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup sends SIGKILL to the process group of p (its pid, see procAttr); a group already
// gone is not an error.
func killGroup(p *os.Process) error {
	if err := unix.Kill(-p.Pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// processAlive reports whether process pid exists (EPERM: it does, someone else's).
func processAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// lockFile takes an exclusive flock on path, waiting for it as long as ctx allows, and returns
// the function that releases it. The kernel releases it too when this process dies, so a killed
// build never leaves the lock held.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another process is building (waited): %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}
