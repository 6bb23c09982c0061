//go:build !linux

package k8s

import (
	"context"
	"errors"
	"os"
	"syscall"
)

var errNotLinux = errors.New("k8s: the test control plane runs on Linux only")

func checkPlatform() error { return errNotLinux }

func procAttr() *syscall.SysProcAttr { return nil }

func killGroup(p *os.Process) error { return p.Kill() }

func processAlive(int) bool { return true }

func lockFile(context.Context, string) (func(), error) { return nil, errNotLinux }
