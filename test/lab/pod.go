package lab

import (
	"context"
	"fmt"
	"net"
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

func listenIn(netns, addr string) (*net.TCPListener, error) {
	var l net.Listener
	err := inNetns(netns, func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		l, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: listen on %s in %s: %w", addr, netns, err)
	}
	return l.(*net.TCPListener), nil
}

func dialIn(ctx context.Context, netns, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(netns, func() error {
		var d net.Dialer
		d.SetMultipathTCP(false)
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: dial %s from %s: %w", addr, netns, err)
	}
	return c, nil
}
