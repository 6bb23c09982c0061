//go:build !linux

package lab

import (
	"errors"
	"syscall"
)

// errNotLinux is what New, Capture and CleanupStale return off Linux.
var errNotLinux = errors.New("lab: needs Linux (network namespaces, veth, AF_PACKET)")

func checkPlatform() error               { return errNotLinux }
func procAttr(bool) *syscall.SysProcAttr { return nil }
func killGroup(int) error                { return errNotLinux }
func killNetnsPids(string)               {}
