//go:build !linux

package redirect

import (
	"errors"
	"net"
	"net/netip"
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
