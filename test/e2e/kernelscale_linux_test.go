package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/test/lab"
)

// TestKernelVerdictsAtScale is issue 16 §2's acceptance: 1,000 same-node pod pairs cached on
// the kernel path (web -> api1 and nosy -> web, on 500 ports each) keep their verdicts, every
// one, over 100 state changes elsewhere in the cluster (a pod of another node replaced each
// time); then a change that denies one pair withdraws exactly that pair's verdict.
func TestKernelVerdictsAtScale(t *testing.T) {
	const ports, changes, base = 500, 100, 20000
	c := newCluster(t, "--same-node", "kernel", "--state-poll", "20ms")
	pairs := []struct{ from, to string }{{"web", "api1"}, {"nosy", "web"}}
	for _, pr := range pairs {
		to := c.lab.Pod(pr.to)
		for i := range ports {
			ln, err := to.Listen(fmt.Sprintf("%s:%d", to.IP, base+i))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go lab.Echo(ln, nil)
		}
	}
	// The first connection of each pair goes through the agent, which caches its verdict.
	var wg sync.WaitGroup
	errs := make(chan error, len(pairs)*ports)
	for _, pr := range pairs {
		for i := range ports {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				addr := net.JoinHostPort(c.lab.Pod(pr.to).IP.String(), fmt.Sprint(base+i))
				conn, err := c.lab.Pod(pr.from).Dial(ctx, addr)
				if err == nil {
					err = roundTrip(conn)
					conn.Close()
				}
				if err != nil {
					errs <- fmt.Errorf("%s -> %s: %w", pr.from, addr, err)
				}
			})
		}
		wg.Wait()
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	verdicts := func() map[string]bool { return readVerdicts(t, c.pinDir("node1")) }
	testenv.WaitFor(t, "1,000 cached verdicts", 5*time.Second, func() bool { return len(verdicts()) >= 2*ports })
	before := verdicts()

	// Changes elsewhere: a pod of node3 (a node with no agent here) replaced, one per change.
	for i := range changes {
		ghost := func(b []byte) []byte {
			b = bytes.Replace(b, []byte("workloads:\n"), []byte("  - {name: \"node3\", ip: 10.99.3.1}\nworkloads:\n"), 1)
			return fmt.Appendf(b, "  - {name: \"ghost-%d\", namespace: \"shop\", serviceAccount: \"ghost\", node: \"node3\", ips: [10.99.3.%d], mode: \"\", inboundMode: \"\"}\n", i, 2+i%200)
		}
		applied := c.logCount("node1", "state file applied")
		if err := c.lab.WriteStateWith(c.state, ghost, services, policies); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, fmt.Sprintf("node1 to apply change %d", i), 5*time.Second, func() bool {
			return c.logCount("node1", "state file applied") > applied
		})
	}
	after := verdicts()
	lost := 0
	for k := range before {
		if !after[k] {
			lost++
		}
	}
	t.Logf("%d verdicts cached; after %d unrelated changes %d of them remain", len(before), changes, len(before)-lost)
	if lost > 0 {
		t.Fatalf("%d of %d cached verdicts were withdrawn by %d changes that concern none of them", lost, len(before), changes)
	}

	// A change denying one pair: nosy -> web on one port.
	const denied = base + 7
	deny := policies + fmt.Sprintf(`
  - name: web-deny-nosy
    namespace: shop
    selector: {app: web}
    action: DENY
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/nosy"]}}]
        to: [{operation: {ports: ["%d"]}}]
`, denied)
	if err := c.lab.WriteState(c.state, services, deny); err != nil {
		t.Fatal(err)
	}
	key := verdictDst(netip.AddrPortFrom(c.lab.Pod("web").IP, denied))
	testenv.WaitFor(t, "the denied pair's verdict withdrawn", 5*time.Second, func() bool {
		for k := range verdicts() {
			if strings.HasSuffix(k, key) {
				return false
			}
		}
		return true
	})
	final := verdicts()
	var gone []string
	for k := range after {
		if !final[k] {
			gone = append(gone, k)
		}
	}
	if len(gone) != 1 || !strings.HasSuffix(gone[0], key) {
		t.Errorf("the denying change withdrew %d verdicts, want exactly the one of nosy -> web:%d", len(gone), denied)
	}
}

// readVerdicts returns the keys of node's pinned kernel-path verdicts, as hex: the client's
// netns cookie, then verdictDst of the destination.
func readVerdicts(t *testing.T, pinDir string) map[string]bool {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "local_verdicts"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	out := map[string]bool{}
	key, val := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&key, &val) {
		out[fmt.Sprintf("%x|%x", key[:8], key[8:26])] = true
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// verdictDst is the destination part of a verdict key (bpf/amesh.h struct verdict_key): the
// address as 16 bytes and the port in network order.
func verdictDst(dst netip.AddrPort) string {
	a := dst.Addr().As16()
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], dst.Port())
	return fmt.Sprintf("%x%x", a[:], p[:])
}
