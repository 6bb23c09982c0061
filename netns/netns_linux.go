package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Do runs fn with the calling goroutine's OS thread in the network namespace at path, as
// Istio's node agent does it: on a fresh goroutine locked to its thread, which is thrown away
// (left locked) if switching back fails, so no goroutine ever runs in the wrong namespace.
// Sockets fn creates belong to that namespace for good.
func Do(path string, fn func() error) error {
	target, err := vnetns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("netns: open %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := vnetns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: enter %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := vnetns.Set(orig); err != nil {
			// Stay locked: the runtime ends this thread with the goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("netns: return from %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// ListenTCP opens a TCP listener at addr inside the namespace at path, configured by lc (its
// Control, say, marks the socket). MPTCP is always off: Go ≥ 1.24 listens MPTCP by default, and
// amesh's eBPF (a SOCKHASH among it) refuses MPTCP sockets with EOPNOTSUPP.
func ListenTCP(path, addr string, lc net.ListenConfig) (*net.TCPListener, error) {
	lc.SetMultipathTCP(false)
	var l net.Listener
	err := Do(path, func() error {
		var err error
		l, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: listen on %s in %s: %w", addr, path, err)
	}
	return l.(*net.TCPListener), nil
}

// DialContext connects to addr from inside the namespace at path with d (MPTCP off, as for
// ListenTCP).
func DialContext(ctx context.Context, path, network, addr string, d net.Dialer) (net.Conn, error) {
	d.SetMultipathTCP(false)
	var c net.Conn
	err := Do(path, func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns: dial %s from %s: %w", addr, path, err)
	}
	return c, nil
}

// Cookie returns the cookie of the namespace at path: the kernel's id for it, which eBPF
// programs read with bpf_get_netns_cookie (SO_NETNS_COOKIE of a socket there).
func Cookie(path string) (uint64, error) {
	var cookie uint64
	err := Do(path, func() error {
		var err error
		cookie, err = SelfCookie()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("netns: cookie of %s: %w", path, err)
	}
	return cookie, nil
}

// SelfCookie returns the cookie of the calling thread's namespace (the process's, unless it
// runs inside Do).
func SelfCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns: socket for SO_NETNS_COOKIE: %w", err)
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns: SO_NETNS_COOKIE (Linux 5.14+): %w", err)
	}
	return v, nil
}

// Addrs returns the unicast, non-loopback interface addresses of the namespace at path, or of
// the calling process's namespace when path is "". IPv4-mapped addresses are unmapped.
func Addrs(path string) ([]netip.Addr, error) {
	var addrs []net.Addr
	read := func() error {
		var err error
		addrs, err = net.InterfaceAddrs()
		return err
	}
	var err error
	if path == "" {
		err = read()
	} else {
		err = Do(path, read)
	}
	if err != nil {
		return nil, fmt.Errorf("netns: interface addresses of %q: %w", path, err)
	}
	return unicast(addrs), nil
}

// unicast returns the IPs of interface addresses, unmapped, without loopback ones.
func unicast(addrs []net.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && !ip.Unmap().IsLoopback() {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}
