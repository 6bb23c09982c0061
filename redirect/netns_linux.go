package redirect

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// InNetns runs fn with the calling goroutine's OS thread in the network namespace at path, as
// Istio's node agent does it: on a fresh goroutine locked to its thread, which is thrown away
// (left locked) if switching back fails, so no goroutine ever runs in the wrong namespace.
// Sockets fn creates belong to that namespace for good.
func InNetns(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("redirect: open netns %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("redirect: current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("redirect: enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the runtime ends this thread with the goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("redirect: return from netns %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// ListenTCP opens one of the agent's TCP listeners at addr inside the netns at path: without
// MPTCP (Go ≥ 1.24 listens MPTCP by default, and a SOCKHASH refuses MPTCP sockets with
// EOPNOTSUPP), and marked, so accepted connections (which inherit the mark) send their replies
// by the main table, not the transparent-proxy table.
func ListenTCP(path, addr string) (*net.TCPListener, error) {
	var l net.Listener
	err := InNetns(path, func() error {
		lc := net.ListenConfig{Control: markControl}
		lc.SetMultipathTCP(false)
		var err error
		l, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redirect: listen on %s in %s: %w", addr, path, err)
	}
	return l.(*net.TCPListener), nil
}

// DialContext dials from inside the netns at path with the agent's socket mark, so the capture
// skips the connection (HBONE out of a source pod, or the agent's own upstream dials).
func DialContext(ctx context.Context, path, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNetns(path, func() error {
		d := net.Dialer{Control: markControl}
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redirect: dial %s from %s: %w", addr, path, err)
	}
	return c, nil
}

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

// NetnsCookie returns the cookie of the netns at path (a socket's SO_NETNS_COOKIE there).
func NetnsCookie(path string) (uint64, error) {
	var cookie uint64
	err := InNetns(path, func() error {
		var err error
		cookie, err = socketNetnsCookie()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("redirect: netns cookie of %s: %w", path, err)
	}
	return cookie, nil
}

func socketNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("SO_NETNS_COOKIE (Linux 5.14+): %w", err)
	}
	return v, nil
}

// hostNetnsCookies are the namespaces never enrolled: the agent's own (the node's, for a
// hostNetwork agent) and, where this process may see it, PID 1's.
func hostNetnsCookies() ([]uint64, error) {
	self, err := socketNetnsCookie()
	if err != nil {
		return nil, fmt.Errorf("redirect: own netns cookie: %w", err)
	}
	out := []uint64{self}
	if c, err := NetnsCookie("/proc/1/ns/net"); err == nil {
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
