package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/test/lab"
)

// revokingPolicies turn web away from the api pods, and let only web into perm: after they are
// written, web's open connections to api1 (same node, splice) and api2 (HBONE) and plain's
// plaintext one to perm must end.
const revokingPolicies = `
  - name: api-allow-web
    namespace: shop
    selector: {app: api}
    action: ALLOW
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/nosy"]}}]
  - name: perm-allow-web
    namespace: shop
    selector: {app: perm}
    action: ALLOW
    rules:
      - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
`

// TestRevokeOnPolicyChange: a policy change reaches connections already open (ztunnel#311): on
// each path the agent decides (HBONE inbound, splice, plaintext to a PERMISSIVE pod) an open
// connection the new policies deny is reset within a second, with an access line saying
// revoked and by which policy; a connection they still allow is untouched.
func TestRevokeOnPolicyChange(t *testing.T) {
	c := newCluster(t, "--same-node", "splice")
	open := func(from, to string) net.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := c.lab.Pod(from).Dial(ctx, net.JoinHostPort(c.lab.Pod(to).IP.String(), lab.EchoPort))
		if err != nil {
			t.Fatalf("%s -> %s: %v", from, to, err)
		}
		t.Cleanup(func() { conn.Close() })
		if err := roundTrip(conn); err != nil {
			t.Fatalf("%s -> %s before the change: %v", from, to, err)
		}
		return conn
	}
	conns := []struct {
		from, to, node, path string
		revoked              bool
		conn                 net.Conn
	}{
		{from: "web", to: "api2", node: "node2", path: "hbone", revoked: true},
		{from: "web", to: "api1", node: "node1", path: "splice", revoked: true},
		{from: "plain", to: "perm", node: "node2", path: "plaintext", revoked: true},
		{from: "web", to: "other", node: "node2", path: "hbone", revoked: false},
	}
	for i := range conns {
		conns[i].conn = open(conns[i].from, conns[i].to)
	}
	if err := c.lab.WriteState(c.state, services, revokingPolicies); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	for _, cc := range conns {
		name := fmt.Sprintf("%s -> %s (%s)", cc.from, cc.to, cc.path)
		if !cc.revoked {
			continue
		}
		// The reset reaches the client: a read fails (the echo has nothing to send).
		cc.conn.SetReadDeadline(changed.Add(3 * time.Second))
		_, err := cc.conn.Read(make([]byte, 1))
		took := time.Since(changed)
		if err == nil || errors.Is(err, io.EOF) || isTimeout(err) {
			t.Errorf("%s: read after the change: %v after %v, want a reset", name, err, took)
			continue
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: %v, want a reset (ECONNRESET)", name, err)
		}
		if took > time.Second+500*time.Millisecond {
			t.Errorf("%s: reset %v after the change, want within 1 s", name, took)
		}
		t.Logf("%s: reset %v after the change", name, took.Round(time.Millisecond))
		testenv.WaitFor(t, name+": its revoked access line", 5*time.Second, func() bool {
			for _, l := range c.accessLines(cc.node) {
				if l["result"] == "revoked" && l["path"] == cc.path && strings.Contains(fmt.Sprint(l["reason"]), "shop/") {
					return true
				}
			}
			return false
		})
	}
	// The allowed one still works, after every revocation was done.
	for _, cc := range conns {
		if !cc.revoked {
			if err := roundTrip(cc.conn); err != nil {
				t.Errorf("%s -> %s (still allowed): %v after the change", cc.from, cc.to, err)
			}
		}
	}
}

func roundTrip(conn net.Conn) error {
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	defer conn.SetDeadline(time.Time{})
	msg := []byte("ping")
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(conn, msg)
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
