//go:build !linux

package netns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
)

// errNotLinux is what every entry point returns off Linux: network namespaces are Linux's.
var errNotLinux = errors.New("netns: network namespaces need Linux")

// Do fails off Linux.
func Do(string, func() error) error { return errNotLinux }

// ListenTCP fails off Linux.
func ListenTCP(string, string, net.ListenConfig) (*net.TCPListener, error) { return nil, errNotLinux }

// DialContext fails off Linux.
func DialContext(context.Context, string, string, string, func(string, string, syscall.RawConn) error) (net.Conn, error) {
	return nil, errNotLinux
}

// Cookie fails off Linux.
func Cookie(string) (uint64, error) { return 0, errNotLinux }

// SelfCookie fails off Linux.
func SelfCookie() (uint64, error) { return 0, errNotLinux }

// Addrs fails off Linux.
func Addrs(string) ([]netip.Addr, error) { return nil, errNotLinux }

// Scanner finds nothing off Linux.
type Scanner struct {
	// Home is the namespace pods' links lead to (unused off Linux).
	Home string
}

// Find finds nothing off Linux.
func (*Scanner) Find([]netip.Addr) string { return "" }

// Ambiguous finds nothing off Linux.
func (*Scanner) Ambiguous([]netip.Addr) []string { return nil }

// DestroyTCP fails off Linux.
func DestroyTCP(string, netip.AddrPort, netip.AddrPort) error { return errNotLinux }

// ProbeDestroy fails: DestroyTCP needs Linux.
func ProbeDestroy() error { return errNotLinux }
