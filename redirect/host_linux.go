package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/amesh-dev/amesh/netns"
	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// markControl sets SO_MARK on a socket before it connects or listens.
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

// MarkControl is the net.ListenConfig Control function of the agent's listeners in pods: the
// mark routes their accepted connections' replies by the main table. It does not make a dial
// skip the capture; AgentControl does.
var MarkControl = markControl

// AgentControl is the Control function of the agent's own dials from inside an enrolled pod's
// netns (HBONE out of the pod, passthrough): it marks the socket and registers its cookie in
// agent_socks, so the capture lets exactly this socket's connect() through. A mark alone would
// not do: any pod with CAP_NET_RAW (containerd's default) can set one.
func (r *Redirector) AgentControl(network, address string, rc syscall.RawConn) error {
	if err := markControl(network, address, rc); err != nil {
		return fmt.Errorf("redirect: mark: %w", err)
	}
	var cookie uint64
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cookie, cerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("redirect: SO_COOKIE: %w", cerr)
	}
	if err := r.objs.AgentSocks.Update(&cookie, uint8(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("redirect: register the agent's socket: %w", err)
	}
	return nil
}

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
