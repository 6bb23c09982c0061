package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/amesh-dev/amesh/netns"
	"golang.org/x/sys/unix"
)

// markControl sets SO_MARK on a socket before it connects.
func markControl(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, Mark)
	})
	if err != nil {
		return err
	}
	return serr
}

// MarkControl is the net.Dialer Control function that marks the agent's sockets.
var MarkControl = markControl

// hostNetnsCookies are the namespaces never enrolled: the agent's own (the node's, for a
// hostNetwork agent) and, where this process may see it, PID 1's.
func hostNetnsCookies() ([]uint64, error) {
	self, err := netns.SelfCookie()
	if err != nil {
		return nil, fmt.Errorf("redirect: own netns cookie: %w", err)
	}
	out := []uint64{self}
	if c, err := netns.Cookie("/proc/1/ns/net"); err == nil {
		out = append(out, c)
	}
	return out, nil
}

// CgroupV2Root finds the cgroup v2 mount (on hybrid hosts /sys/fs/cgroup/unified).
func CgroupV2Root() (string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", fmt.Errorf("redirect: find cgroup2: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1], nil
		}
	}
	return "", errors.New("redirect: no cgroup2 filesystem mounted: amesh needs cgroup v2 for its connect programs")
}
