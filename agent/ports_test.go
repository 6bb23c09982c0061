package agent

import (
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/amesh-dev/amesh/redirect"
	"github.com/amesh-dev/amesh/tunnel"
)

// TestPortsMatchBPF checks the one table of listener ports: the eBPF programs steer to the
// ports bpf/amesh.h defines, the agent listens on redirect's and tunnel's constants, and the
// two must be the same numbers.
func TestPortsMatchBPF(t *testing.T) {
	h, err := os.ReadFile("../bpf/amesh.h")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		define string
		want   int
	}{
		{"AMESH_OUTBOUND_PORT", redirect.OutboundPort},
		{"AMESH_INBOUND_PORT", redirect.PlaintextPort},
		{"AMESH_HBONE_PORT", tunnel.HBONEPort},
	} {
		m := regexp.MustCompile(`(?m)^#define ` + c.define + `\s+(\d+)\s*$`).FindSubmatch(h)
		if m == nil {
			t.Errorf("bpf/amesh.h has no #define %s", c.define)
			continue
		}
		if got, _ := strconv.Atoi(string(m[1])); got != c.want {
			t.Errorf("bpf/amesh.h: %s = %d, but the agent listens on %d", c.define, got, c.want)
		}
	}
}
