package lab

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

func checkPlatform() error { return nil }

// procAttr has the child killed when this process dies, and with group set gives it a process
// group of its own, for Kill. Pdeathsig fires when the thread that forked exits, not the process
// (golang/go#27505); Go ends a thread only with a goroutine locked to it, so this holds unless
// the caller of Command or Start runs locked to its thread and exits.
func procAttr(group bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: group}
}

// killGroup sends SIGKILL to the process group pgid; a group already gone is not an error.
func killGroup(pgid int) error {
	if err := unix.Kill(-pgid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// killNetnsPids kills every process in the named namespace but this one (a goroutine of ours
// may have the main thread there): a process left inside would keep the namespace, and its
// links, alive after `ip netns del`.
func killNetnsPids(name string) {
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}
