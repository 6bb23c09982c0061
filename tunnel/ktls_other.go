//go:build !linux

package tunnel

import "errors"

// ProbeKernelTLS fails: kernel TLS is probed on Linux only.
func ProbeKernelTLS() error { return errors.New("tunnel: kernel TLS: not on Linux") }
