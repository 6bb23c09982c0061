package tunnel

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestProbeKernelTLS runs the probe on this kernel: it either passes, or fails saying which step
// the kernel refused (a kernel without CONFIG_TLS has no "tls" upper-layer protocol: ENOENT).
func TestProbeKernelTLS(t *testing.T) {
	err := ProbeKernelTLS()
	switch {
	case err == nil:
		t.Log("this kernel offers TLS 1.3 AES-GCM-128 kTLS")
	case errors.Is(err, unix.ENOENT):
		t.Logf("no kernel TLS here, as the probe says: %v", err)
	default:
		// Anything else is a probe bug (a malformed crypto_info would be EINVAL).
		t.Fatalf("probe: %v", err)
	}
}
