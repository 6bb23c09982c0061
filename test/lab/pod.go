package lab

import (
	"context"
	"fmt"
	"net"

	"github.com/amesh-dev/amesh/netns"
)

// Listen opens a TCP listener on addr ("10.20.1.2:8080", ":8080") inside the pod's namespace.
// It is plain TCP: Go listens with MPTCP by default since 1.24, and amesh's sockmap refuses
// MPTCP sockets.
func (p *Pod) Listen(addr string) (*net.TCPListener, error) {
	return listenIn(p.Netns, addr)
}

// Dial opens a TCP connection to addr from inside the pod's namespace.
func (p *Pod) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return dialIn(ctx, p.Netns, addr)
}

// Listen opens a plain TCP listener on addr inside the node's namespace (see Pod.Listen).
func (n *Node) Listen(addr string) (*net.TCPListener, error) {
	return listenIn(n.Netns, addr)
}

// Dial opens a TCP connection to addr from inside the node's namespace.
func (n *Node) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return dialIn(ctx, n.Netns, addr)
}

func listenIn(path, addr string) (*net.TCPListener, error) {
	l, err := netns.ListenTCP(path, addr, net.ListenConfig{})
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	return l, nil
}

func dialIn(ctx context.Context, path, addr string) (net.Conn, error) {
	c, err := netns.DialContext(ctx, path, "tcp", addr, nil)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	return c, nil
}
