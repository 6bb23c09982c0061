//go:build !linux

package handoff

import (
	"errors"
	"net"
)

// checkPeer refuses every peer: the hand-off needs Linux's peer credentials.
func checkPeer(*net.UnixConn) error { return errors.New("handoff: needs Linux") }
