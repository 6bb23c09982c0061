package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/amesh-dev/amesh/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// transparentTable is the routing table, inside a pod's netns, that delivers the app's TCP
// replies locally, to the agent's IP_TRANSPARENT socket, instead of out to the client's IP.
const transparentTable = 100

// SetupTransparentRouting installs, in the pod netns at path, the policy routing that lets the
// agent connect to the app from the client's own IP (DESIGN §2, no iptables). The agent's
// transparent sockets carry TransparentMark; with tcp_fwmark_accept the app's accepted socket
// inherits it from the SYN, and a rule sends packets with that mark to table 100, where every
// destination is local: the app's replies come back to the agent instead of leaving for the
// client's IP. Everything else routes as before.
//
// This departs from the first recipe (`ipproto tcp lookup 100`): that rule also matched the
// reverse-path check of every TCP packet arriving from outside, whose source then looked local,
// so inbound HBONE to the pod was dropped as martian. Keying on a mark only the agent's own
// connections carry leaves other traffic, kubelet probes included, untouched. Idempotent.
func SetupTransparentRouting(path string) error {
	return netns.Do(path, func() error {
		if err := setFwmarkAccept(); err != nil {
			return err
		}
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		for _, fam := range []struct {
			family int
			all    *net.IPNet
		}{
			{netlink.FAMILY_V4, &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}},
			{netlink.FAMILY_V6, &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
		} {
			rule := netlink.NewRule()
			rule.Family, rule.Priority, rule.Mark, rule.Table = fam.family, 100, TransparentMark, transparentTable
			mask := uint32(0xffffffff)
			rule.Mask = &mask
			if err := h.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add rule fwmark %#x lookup %d: %w", TransparentMark, transparentTable, err)
			}
			route := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: fam.all, Table: transparentTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Family: fam.family}
			if err := h.RouteReplace(route); err != nil {
				return fmt.Errorf("add local route in table %d: %w", transparentTable, err)
			}
		}
		return nil
	})
}

// DialTransparent connects, inside the pod netns at path, from the client's address src (any
// port) to the app at dst, with TransparentMark so the app's replies come back to it, and lets
// exactly that connection past the pod's sk_lookup. The app sees src as its peer, as with Istio
// ambient. SetupTransparentRouting must have run in that netns.
func (r *Redirector) DialTransparent(ctx context.Context, path string, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	var release func()
	control := func(network, address string, rc syscall.RawConn) error {
		var cerr error
		err := rc.Control(func(fd uintptr) {
			cerr = func() error {
				level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
				if src.Is6() && !src.Is4In6() {
					level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
				}
				if err := unix.SetsockoptInt(int(fd), level, opt, 1); err != nil {
					return fmt.Errorf("IP_TRANSPARENT: %w", err)
				}
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, TransparentMark); err != nil {
					return fmt.Errorf("SO_MARK: %w", err)
				}
				var sa unix.Sockaddr
				if src.Is4() || src.Is4In6() {
					sa = &unix.SockaddrInet4{Addr: src.Unmap().As4()}
				} else {
					sa = &unix.SockaddrInet6{Addr: src.As16()}
				}
				if err := unix.Bind(int(fd), sa); err != nil {
					return fmt.Errorf("bind %s: %w", src, err)
				}
				bound, err := unix.Getsockname(int(fd))
				if err != nil {
					return err
				}
				var port int
				switch b := bound.(type) {
				case *unix.SockaddrInet4:
					port = b.Port
				case *unix.SockaddrInet6:
					port = b.Port
				}
				release, err = r.allowPassthrough(netip.AddrPortFrom(src.Unmap(), uint16(port)), dst)
				return err
			}()
		})
		if err != nil {
			return err
		}
		return cerr
	}
	network := "tcp4"
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		network = "tcp6"
	}
	c, err := netns.DialContext(ctx, path, network, dst.String(), control)
	if release != nil {
		release()
	}
	if err != nil {
		return nil, fmt.Errorf("redirect: connect %s -> %s in %s: %w", src, dst, path, err)
	}
	return c, nil
}

// HostProcEnv names the environment variable with the path, inside a container, under which
// the node's /proc/sys/net is mounted as <path>/sys/net (the DaemonSet mounts only that
// directory, at /host/proc/sys/net; /host/proc is the default).
const HostProcEnv = "AMESH_HOST_PROC"

// fwmarkAcceptKey is tcp_fwmark_accept's path below a procfs.
const fwmarkAcceptKey = "sys/net/ipv4/tcp_fwmark_accept"

// setFwmarkAccept sets net.ipv4.tcp_fwmark_accept and fwmark_reflect in the calling thread's netns. A container's
// own /proc/sys is read-only, so on failure it writes through the node's /proc/sys/net mounted
// under $AMESH_HOST_PROC: /proc/sys/net shows the netns of the thread that opens it, whichever
// mount of it the path goes through (TestNetSysctlThroughBindMount).
func setFwmarkAccept() error {
	hostProc := os.Getenv(HostProcEnv)
	if hostProc == "" {
		hostProc = "/host/proc"
	}
	if err := writeNetSysctl("/proc/"+fwmarkAcceptKey, hostProc+"/"+fwmarkAcceptKey, "1"); err != nil {
		return err
	}
	// The kernel's own answers to the agent's transparent connects (the RST of a port nobody
	// listens on) must carry the mark too, or they route out to the client's IP, and the agent
	// waits out its dial timeout for a refusal that went elsewhere.
	if err := writeNetSysctl("/proc/"+fwmarkReflect4Key, hostProc+"/"+fwmarkReflect4Key, "1"); err != nil {
		return err
	}
	if _, err := os.Stat("/proc/" + fwmarkReflect6Key); err == nil { // absent without IPv6
		return writeNetSysctl("/proc/"+fwmarkReflect6Key, hostProc+"/"+fwmarkReflect6Key, "1")
	}
	return nil
}

// fwmark_reflect's paths below a procfs: replies the kernel makes (RST, ICMP) carry the mark of
// the packet they answer.
const (
	fwmarkReflect4Key = "sys/net/ipv4/fwmark_reflect"
	fwmarkReflect6Key = "sys/net/ipv6/fwmark_reflect"
)

// writeNetSysctl writes value to the per-netns sysctl at path, or, when that fails (read-only),
// at fallback.
func writeNetSysctl(path, fallback, value string) error {
	err := os.WriteFile(path, []byte(value), 0o644)
	if err == nil {
		return nil
	}
	if _, serr := os.Stat(fallback); serr != nil {
		return fmt.Errorf("set %s: %w (and no node /proc/sys/net at %s: mount it there or set %s)", path, err, filepath.Dir(filepath.Dir(fallback)), HostProcEnv)
	}
	if err2 := os.WriteFile(fallback, []byte(value), 0o644); err2 != nil {
		return fmt.Errorf("set %s: %w; through %s: %w", path, err, fallback, err2)
	}
	return nil
}
