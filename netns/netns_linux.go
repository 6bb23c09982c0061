package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
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

// DialContext connects to addr (an IP literal and port) from inside the namespace at path.
// control, when set, configures the socket before it connects, as net.Dialer.Control does
// (a mark, a transparent bind). The connection is plain TCP (no MPTCP) with keep-alives on, as
// a net.Dialer's.
//
// Only the socket is made on a thread inside the namespace (a socket belongs to the namespace
// it was created in, for good); the connect itself runs on an ordinary goroutine, waiting in
// the netpoller. A dial that hangs for its whole timeout, to a black-holed address, say, so
// costs a goroutine and a socket, never a locked OS thread: a thousand of them cannot push
// the process towards the Go runtime's 10,000-thread limit.
func DialContext(ctx context.Context, path, network, addr string, control func(network, address string, c syscall.RawConn) error) (net.Conn, error) {
	c, err := dial(ctx, path, network, addr, control)
	if err != nil {
		return nil, fmt.Errorf("netns: dial %s from %s: %w", addr, path, err)
	}
	return c, nil
}

func dial(ctx context.Context, path, network, addr string, control func(string, string, syscall.RawConn) error) (net.Conn, error) {
	dst, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	family, sa := unix.AF_INET, unix.Sockaddr(&unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().Unmap().As4()})
	if network == "tcp6" || (network != "tcp4" && dst.Addr().Is6() && !dst.Addr().Is4In6()) {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
	}
	if network == "tcp4" && dst.Addr().Is6() && !dst.Addr().Is4In6() {
		return nil, fmt.Errorf("%s is not an IPv4 address", dst.Addr())
	}
	// A slot bounds how many dials are inside a namespace at once: each holds a locked OS
	// thread there, and a burst of dials (a pod opening hundreds at once) would otherwise make
	// the runtime start a thread for each of them, threads it then keeps.
	select {
	case switchSlots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var f *os.File
	err = Do(path, func() error {
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		// A non-blocking descriptor: os.NewFile puts it in the netpoller.
		f = os.NewFile(uintptr(fd), "tcp:"+addr)
		if control == nil {
			return nil
		}
		rc, err := f.SyscallConn()
		if err != nil {
			return err
		}
		return control(network, addr, rc)
	})
	<-switchSlots
	if err != nil {
		if f != nil {
			f.Close()
		}
		return nil, err
	}
	defer f.Close() // net.FileConn holds a duplicate
	if err := connect(ctx, f, sa); err != nil {
		return nil, err
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("not a TCP connection: %T", c)
	}
	_ = tc.SetKeepAlive(true)
	return tc, nil
}

// switchSlots holds one token per dial that is inside a namespace making its socket. The
// section is a few system calls long, so a handful of slots keeps up with any dial rate while
// the threads a burst can add stay a handful too.
var switchSlots = make(chan struct{}, 8)

// aLongTimeAgo is a deadline in the past, to wake a connect when its context ends.
var aLongTimeAgo = time.Unix(1, 0)

// connect connects the non-blocking socket f to sa, waiting in the netpoller until it is
// connected, refused, or ctx ends.
func connect(ctx context.Context, f *os.File, sa unix.Sockaddr) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = unix.Connect(int(fd), sa) }); err != nil {
		return err
	}
	switch cerr {
	case nil:
		return nil
	case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
	default:
		return os.NewSyscallError("connect", cerr)
	}
	if d, ok := ctx.Deadline(); ok {
		_ = f.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(aLongTimeAgo) })
	defer stop()
	werr := rc.Write(func(fd uintptr) bool {
		// Writable means connected or failed; SO_ERROR says which. While the handshake is
		// still on, SO_ERROR is 0 and the socket has no peer yet (as Go's net checks).
		soerr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			cerr = os.NewSyscallError("getsockopt", err)
			return true
		case soerr != 0 && unix.Errno(soerr) != unix.EINPROGRESS && unix.Errno(soerr) != unix.EALREADY && unix.Errno(soerr) != unix.EINTR:
			cerr = os.NewSyscallError("connect", unix.Errno(soerr))
			return true
		}
		if _, err := unix.Getpeername(int(fd)); err == nil {
			cerr = nil
			return true
		} else if err != unix.ENOTCONN {
			cerr = os.NewSyscallError("getpeername", err)
			return true
		}
		return false
	})
	if werr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(werr, os.ErrDeadlineExceeded) {
			return context.DeadlineExceeded
		}
		return werr
	}
	return cerr
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
	var ips []netip.Addr
	read := func() error {
		var err error
		ips, err = localAddrs()
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
	return ips, nil
}

// localAddrs is Addrs for the calling thread's namespace.
func localAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
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

// DestroyTCP aborts the TCP socket local → remote of the namespace at path, as `ss -K` does
// (SOCK_DESTROY over sock_diag; the kernel needs CONFIG_INET_DIAG_DESTROY): the socket's owner
// sees ECONNABORTED and the peer a RST. It is how the agent ends a connection it is not in the
// data path of.
func DestroyTCP(path string, local, remote netip.AddrPort) error {
	err := Do(path, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_INET_DIAG)
		if err != nil {
			return err
		}
		defer h.Close()
		return h.SocketDestroy(net.TCPAddrFromAddrPort(local), net.TCPAddrFromAddrPort(remote))
	})
	if err != nil {
		return fmt.Errorf("netns: destroy %s -> %s in %s: %w", local, remote, path, err)
	}
	return nil
}

// ProbeDestroy checks that DestroyTCP works on this kernel: it aborts a loopback connection of
// its own in the caller's namespace and sees it end. Without it (a kernel built without
// CONFIG_INET_DIAG_DESTROY, or sock_diag denied) the agent cannot revoke connections it is not
// in the data path of.
func ProbeDestroy() error {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("netns: probe SOCK_DESTROY: %w", err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		return fmt.Errorf("netns: probe SOCK_DESTROY: %w", err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("netns: probe SOCK_DESTROY: %w", err)
	}
	defer s.Close()
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	if err := DestroyTCP("/proc/self/ns/net", local, remote); err != nil {
		return fmt.Errorf("netns: probe SOCK_DESTROY (the kernel needs CONFIG_INET_DIAG_DESTROY): %w", err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNABORTED) {
		return fmt.Errorf("netns: probe SOCK_DESTROY: the destroyed socket read %v, want ECONNABORTED", err)
	}
	return nil
}
