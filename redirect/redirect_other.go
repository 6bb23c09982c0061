//go:build !linux

package redirect

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
)

// errNotLinux is what every entry point returns off Linux: redirection is eBPF.
var errNotLinux = errors.New("redirect: eBPF redirection needs Linux")

// Redirector is unavailable off Linux.
type Redirector struct{}

// Open fails off Linux.
func Open(Config) (*Redirector, error) { return nil, errNotLinux }

// Probe fails off Linux.
func Probe() error { return errNotLinux }

// Enroll fails off Linux.
func (*Redirector) Enroll(string, []netip.Addr) (Pod, error) { return Pod{}, errNotLinux }

// Unenroll fails off Linux.
func (*Redirector) Unenroll(uint64) error { return errNotLinux }

// RegisterListener fails off Linux.
func (*Redirector) RegisterListener(netip.Addr, Kind, *net.TCPListener) error { return errNotLinux }

// OriginalDst fails off Linux.
func (*Redirector) OriginalDst(uint64, netip.AddrPort) (netip.AddrPort, error) {
	return netip.AddrPort{}, errNotLinux
}

// Close does nothing off Linux.
func (*Redirector) Close() error { return nil }

// Pods returns nothing off Linux.
func (*Redirector) Pods() []Pod { return nil }

// Uninstall fails off Linux.
func (*Redirector) Uninstall() error { return errNotLinux }

// DialTransparent fails off Linux.
func (*Redirector) DialTransparent(context.Context, string, netip.Addr, netip.AddrPort) (net.Conn, error) {
	return nil, errNotLinux
}

// SetupTransparentRouting fails off Linux.
func SetupTransparentRouting(string) error { return errNotLinux }

// ConnEvent is the open or close of a short-circuited connection (Linux only).
type ConnEvent struct {
	Closed                   bool
	Cookie, Netns            uint64
	Src, Dst                 netip.AddrPort
	BytesSent, BytesReceived uint64
	MonotonicNanos           uint64
}

// Heartbeat fails off Linux.
func (*Redirector) Heartbeat() error { return errNotLinux }

// AllowKernelPath fails off Linux.
func (*Redirector) AllowKernelPath(uint64, netip.AddrPort) error { return errNotLinux }

// RevalidateKernelPaths fails off Linux.
func (*Redirector) RevalidateKernelPaths(func(uint64, netip.AddrPort) bool) (int, error) {
	return 0, errNotLinux
}

// ForgetKernelPath fails off Linux.
func (*Redirector) ForgetKernelPath(uint64, netip.AddrPort) error { return errNotLinux }

// FlushKernelPaths fails off Linux.
func (*Redirector) FlushKernelPaths() error { return errNotLinux }

// KernelEvents fails off Linux.
func (*Redirector) KernelEvents(context.Context, func(ConnEvent)) error { return errNotLinux }

// ProbeKernelPath fails off Linux.
func (*Redirector) ProbeKernelPath() error { return errNotLinux }

// SetProbeExemptions fails off Linux.
func (*Redirector) SetProbeExemptions(netip.Addr, []uint16) error { return errNotLinux }

// MarkControl fails off Linux.
func MarkControl(_, _ string, _ syscall.RawConn) error { return errNotLinux }

// AgentControl fails off Linux.
func (*Redirector) AgentControl(_, _ string, _ syscall.RawConn) error { return errNotLinux }

// Stats fails: eBPF needs Linux.
func (*Redirector) Stats() (map[string]uint64, error) { return nil, errNotLinux }

// MapUsage fails: eBPF needs Linux.
func (*Redirector) MapUsage() (entries, capacity map[string]int, err error) {
	return nil, nil, errNotLinux
}
