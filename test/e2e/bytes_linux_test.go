package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/test/lab"
)

// TestAccessLogBytes: on every path each access line counts exactly the bytes the application
// moved, both ways (issue 17: HBONE lines counted one direction only, the kernel path counted
// its SYN and FINs). Each connection echoes a payload of its own size, so its lines are found
// by their byte count.
func TestAccessLogBytes(t *testing.T) {
	c := newCluster(t, "--same-node", "kernel")
	tests := []struct {
		name, from, to string
		size           int
		lines          []struct{ node, direction, path string }
	}{
		{"splice (a pair's first connection)", "web", "api1", 1001, []struct{ node, direction, path string }{{"node1", "outbound", "splice"}}},
		{"kernel (the pair's next one)", "web", "api1", 1002, []struct{ node, direction, path string }{{"node1", "outbound", "kernel"}}},
		{"hbone", "web", "api2", 100003, []struct{ node, direction, path string }{{"node1", "outbound", "hbone"}, {"node2", "inbound", "hbone"}}},
		{"passthrough (to an unmeshed pod)", "web", "legacy", 1004, []struct{ node, direction, path string }{{"node1", "outbound", "passthrough"}}},
		{"plaintext (into a PERMISSIVE pod)", "plain", "perm", 1005, []struct{ node, direction, path string }{{"node2", "inbound_plaintext", "plaintext"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			echoSized(t, c.lab.Pod(tt.from), net.JoinHostPort(c.lab.Pod(tt.to).IP.String(), lab.EchoPort), tt.size)
			want := fmt.Sprint(tt.size)
			for _, l := range tt.lines {
				testenv.WaitFor(t, fmt.Sprintf("%s's %s %s line with %d bytes both ways", l.node, l.direction, l.path, tt.size), 3*time.Second, func() bool {
					for _, m := range c.accessLines(l.node) {
						if m["path"] == l.path && m["direction"] == l.direction && fmt.Sprint(m["bytes_sent"]) == want && fmt.Sprint(m["bytes_received"]) == want {
							// ztunnel's fields too, under its names.
							if m["src.workload"] != tt.from || m["dst.workload"] != tt.to || m["src.namespace"] == nil {
								t.Errorf("%s line: src.workload %v, dst.workload %v, src.namespace %v", l.path, m["src.workload"], m["dst.workload"], m["src.namespace"])
							}
							return true
						}
					}
					return false
				})
			}
		})
	}
	if t.Failed() {
		for _, n := range []string{"node1", "node2"} {
			for _, m := range c.accessLines(n) {
				t.Logf("%s: %s %s %v -> %v sent %v received %v", n, m["direction"], m["path"], m["src_addr"], m["dst_addr"], m["bytes_sent"], m["bytes_received"])
			}
		}
	}
}

// echoSized sends size bytes to the echo at addr from pod, reads them back, and closes.
func echoSized(t *testing.T, from *lab.Pod, addr string, size int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := from.Dial(ctx, addr)
	if err != nil {
		t.Fatalf("%s -> %s: %v", from.Name, addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	payload := bytes.Repeat([]byte{'a'}, size)
	go conn.Write(payload)
	got := make([]byte, size)
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("%s -> %s: echo of %d bytes: %v", from.Name, addr, size, err)
	}
}
