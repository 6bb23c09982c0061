package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/internal/testenv"
	"github.com/amesh-dev/amesh/test/lab"
	"github.com/amesh-dev/amesh/test/spire"
)

// spireInLab, among a cluster's agent flags, points each node's agent at the admin socket of
// its node's SPIRE agent in the lab's directory.
const spireInLab = "--spire-admin-socket=lab"

func (c *cluster) spireDir() string { return filepath.Join(c.lab.Dir, "spire") }

// spireCert is what the admin dump says of one certificate.
type spireCert struct {
	Identity  string   `json:"identity"`
	Source    string   `json:"source"`
	State     string   `json:"state"`
	Detail    string   `json:"detail"`
	Selectors []string `json:"selectors"`
	CertChain []struct {
		PEM          string `json:"pem"`
		SerialNumber string `json:"serialNumber"`
	} `json:"certChain"`
}

func (c *cluster) certificate(t *testing.T, node, id string) spireCert {
	t.Helper()
	var d struct {
		Certificates []spireCert `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(adminDo(t, c.lab.Node(node), "GET", "/config_dump")), &d); err != nil {
		t.Fatal(err)
	}
	for _, x := range d.Certificates {
		if x.Identity == id {
			return x
		}
	}
	return spireCert{}
}

// served reports whether one connection from pod from to to's echo port round-trips.
func (c *cluster) served(from, to string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := c.lab.Pod(from).Dial(ctx, net.JoinHostPort(c.lab.Pod(to).IP.String(), lab.EchoPort))
	if err != nil {
		return err
	}
	defer conn.Close()
	return roundTrip(conn)
}

// awaitRefusal waits (3 s at most: the line follows the reset) for node's outbound access line
// saying from's connection to to was refused with a reason holding want, and fails the test
// with the reasons seen otherwise.
func (c *cluster) awaitRefusal(t *testing.T, node, from, to, want string) {
	t.Helper()
	var seen []string
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		seen = seen[:0]
		for _, m := range c.accessLines(node) {
			if src := fmt.Sprint(m["src_addr"]); m["direction"] == "outbound" && (src == c.lab.Pod(from).IP.String() || strings.HasPrefix(src, c.lab.Pod(from).IP.String()+":")) &&
				strings.HasPrefix(fmt.Sprint(m["dst_addr"]), c.lab.Pod(to).IP.String()+":") && m["result"] != "ok" {
				r := fmt.Sprint(m["reason"])
				if strings.Contains(r, want) {
					return
				}
				seen = append(seen, r)
			}
		}
	}
	t.Errorf("%s -> %s: no refusal saying %q in %s's access log (refusals seen: %q)", from, to, want, node, seen)
}

// TestSPIREIdentity: the agents take their workloads' identities from real SPIRE agents (one per
// node, as their authorized delegates), and the failure cases behave as a security boundary
// must: SPIRE not there at start (not ready, nothing passes), a workload with no entry (refused,
// naming the selectors), an entry deleted and re-created, a SPIRE agent restarted under load and
// SVIDs of a 2-minute TTL rotating under load (0 failed requests), and a SPIRE agent that does
// not authorize amesh as a delegate (a start-up error naming authorized_delegates).
func TestSPIREIdentity(t *testing.T) {
	testenv.RequireRoot(t)
	bins := spire.BinDir()
	if err := spire.Installed(bins); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("SPIRE is required under CI: %v", err)
		}
		t.Skipf("SKIPPED (SPIRE not built): %v", err)
	}
	ctx := context.Background()
	c := startCluster(t, e2eNodes, "--identity=spire", spireInLab, "--same-node", "splice", "--health-addr", "127.0.0.1:15021", "--admin-addr", adminAddr)

	// SPIRE is not running yet: the agents are not ready and say why; the pods are enrolled
	// and their connections refused, not passed in plaintext.
	testenv.WaitFor(t, "node1 to say its SPIRE agent is unreachable", 15*time.Second, func() bool {
		r := c.readiness("node1")
		return strings.Contains(r, "SPIRE agent unreachable") && strings.Contains(r, spire.AdminSocket(c.spireDir(), "node1")) && !strings.HasSuffix(r, " 200")
	})
	c.waitReady()
	if err := c.served("web", "api2"); err == nil {
		t.Fatal("web -> api2 served with no SPIRE agent to issue SVIDs")
	}
	c.awaitRefusal(t, "node1", "web", "api2", "SPIRE agent unreachable")

	srv, err := spire.StartServer(ctx, bins, c.spireDir(), "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	agents := map[string]*spire.Agent{}
	for _, n := range []string{"node1", "node2"} {
		a, err := srv.StartAgent(ctx, n, spire.AgentOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Stop)
		agents[n] = a
	}
	defer func() {
		if t.Failed() {
			for n, a := range agents {
				t.Logf("SPIRE agent %s log:\n%s", n, tail([]byte(a.Log()), 30))
			}
		}
	}()
	entry := func(node, ns, sa string, ttl time.Duration) string {
		t.Helper()
		id, err := srv.CreateEntry(ctx, spire.Entry{ParentID: agents[node].ID, SPIFFEID: srv.ID("/ns/" + ns + "/sa/" + sa),
			Selectors: []string{"k8s:ns:" + ns, "k8s:sa:" + sa}, TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	// 2-minute SVIDs for the pair under load: SPIRE rotates them at half-life, during the test.
	issued := time.Now()
	entry("node1", "shop", "web", 2*time.Minute)
	entry("node2", "shop", "api", 2*time.Minute)
	entry("node2", "shop", "other", 0)
	for _, n := range []string{"node1", "node2"} {
		testenv.WaitFor(t, n+" ready once SPIRE is up", 30*time.Second, func() bool { return strings.HasSuffix(c.readiness(n), " 200") })
	}
	testenv.WaitFor(t, "web -> api2 served with SPIRE's SVIDs", 30*time.Second, func() bool { return c.served("web", "api2") == nil })

	// The SVIDs are SPIRE's: chained to the SPIRE server's bundle; the peer's access line names
	// the SPIRE-issued identity.
	webID := "spiffe://cluster.local/ns/shop/sa/web"
	pool, _, err := srv.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := c.certificate(t, "node1", webID)
	if first.Source != "spire" || first.State != "Available" || len(first.CertChain) == 0 || strings.Join(first.Selectors, ",") != "k8s:ns:shop,k8s:sa:web" {
		t.Fatalf("node1's certificate of web: %+v", first)
	}
	block, _ := pem.Decode([]byte(first.CertChain[0].PEM))
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("web's SVID does not chain to the SPIRE server's bundle: %v", err)
	}
	if got := leaf.URIs; len(got) != 1 || got[0].String() != webID {
		t.Fatalf("web's SVID names %v", got)
	}
	found := false
	for _, m := range c.accessLines("node2") {
		found = found || (m["direction"] == "inbound" && m["src_id"] == webID && m["dst_id"] == "spiffe://cluster.local/ns/shop/sa/api")
	}
	if !found {
		t.Error("node2 logged no inbound access line from web's SPIRE identity to api's")
	}
	if !c.hasAccess("node1", map[string]string{"direction": "outbound", "path": "hbone", "result": "ok", "src_id": webID, "dst_id": "spiffe://cluster.local/ns/shop/sa/api"}) {
		t.Error("node1 logged no outbound access line from web to api's SPIRE identity")
	}

	// Load on the pair for the rest of the test: one long-lived connection and a new
	// connection every 100 ms, each request checked.
	var reqs, fails atomic.Int64
	var failMu sync.Mutex
	var failures []string
	fail := func(what string, err error) {
		fails.Add(1)
		failMu.Lock()
		if len(failures) < 10 {
			failures = append(failures, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), what, err))
		}
		failMu.Unlock()
	}
	stopLoad := make(chan struct{})
	var load sync.WaitGroup
	load.Add(2)
	go func() {
		defer load.Done()
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := c.lab.Pod("web").Dial(dctx, net.JoinHostPort(c.lab.Pod("api2").IP.String(), lab.EchoPort))
		cancel()
		if err != nil {
			fail("long-lived dial", err)
			return
		}
		defer conn.Close()
		for i := 0; i < 20000; i++ { // bounded: ~7 minutes at most
			select {
			case <-stopLoad:
				return
			case <-time.After(20 * time.Millisecond):
			}
			reqs.Add(1)
			if err := roundTrip(conn); err != nil {
				fail("long-lived", err)
				return
			}
		}
	}()
	go func() {
		defer load.Done()
		for i := 0; i < 4000; i++ {
			select {
			case <-stopLoad:
				return
			case <-time.After(100 * time.Millisecond):
			}
			reqs.Add(1)
			if err := c.served("web", "api2"); err != nil {
				fail("new connection", err)
			}
		}
	}()
	defer func() {
		select {
		case <-stopLoad:
		default:
			close(stopLoad)
		}
		load.Wait()
	}()

	// A workload with no entry: refused, the reason naming its selectors. Its entry created:
	// served; deleted: refused again; re-created: served.
	if err := c.served("nosy", "other"); err == nil {
		t.Fatal("nosy -> other served with no registration entry for nosy")
	}
	c.awaitRefusal(t, "node1", "nosy", "other", "no registration entry matches selectors k8s:ns:shop,k8s:sa:nosy")
	nosy := entry("node1", "shop", "nosy", 0)
	testenv.WaitFor(t, "nosy -> other served once its entry exists", 30*time.Second, func() bool { return c.served("nosy", "other") == nil })
	if err := srv.DeleteEntry(ctx, nosy); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	testenv.WaitFor(t, "nosy -> other refused once its entry is deleted", 30*time.Second, func() bool { return c.served("nosy", "other") != nil })
	t.Logf("entry deleted -> refused in %v", time.Since(deleted).Round(time.Millisecond))
	c.awaitRefusal(t, "node1", "nosy", "other", "no registration entry")
	nosy2 := entry("node1", "shop", "nosy", 0)
	testenv.WaitFor(t, "nosy -> other served once its entry is re-created", 30*time.Second, func() bool { return c.served("nosy", "other") == nil })

	// The 2-minute SVID of web rotates (SPIRE renews at half-life) under load.
	testenv.WaitFor(t, "web's SVID rotated by SPIRE", time.Until(issued.Add(100*time.Second)), func() bool {
		time.Sleep(time.Second) // the admin API's connection budget is not for a busy loop
		x := c.certificate(t, "node1", webID)
		return len(x.CertChain) > 0 && x.CertChain[0].SerialNumber != first.CertChain[0].SerialNumber
	})
	t.Logf("web's SVID rotated %v after its entry was created", time.Since(issued).Round(time.Second))
	time.Sleep(2 * time.Second) // new connections on the rotated SVID

	// node1's SPIRE agent restarted under load: the SVIDs held carry on, and the streams
	// follow the restarted agent.
	if err := agents["node1"].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	nosyID := "spiffe://cluster.local/ns/shop/sa/nosy"
	before := c.certificate(t, "node1", nosyID)
	if err := srv.DeleteEntry(ctx, nosy2); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "node1 to follow its restarted SPIRE agent (an entry deleted after the restart)", 30*time.Second, func() bool {
		return c.served("nosy", "other") != nil
	})
	if before.State != "Available" {
		t.Errorf("nosy's certificate across the SPIRE agent's restart: %+v", before)
	}
	time.Sleep(2 * time.Second) // new connections on the rotated SVID
	close(stopLoad)
	load.Wait()
	t.Logf("load across the SPIRE agent's restart and the rotation: %d requests, %d failed", reqs.Load(), fails.Load())
	if fails.Load() > 0 || reqs.Load() < 500 {
		t.Errorf("%d of %d requests failed (want 0 of at least 500): %v", fails.Load(), reqs.Load(), failures)
	}

	// A SPIRE agent that does not authorize amesh as a delegate: the agent does not start, and
	// says which setting to change.
	deny, err := srv.StartAgent(ctx, "node3", spire.AgentOptions{NoDelegate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(deny.Stop)
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(actx, c.bin, "--node", "node1", "--state", c.state, "--pin-dir", filepath.Join(c.lab.Dir, "pins-denied"),
		"--identity=spire", "--spire-admin-socket="+deny.AdminSocket).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "authorized_delegates") {
		t.Errorf("agent with a SPIRE agent that refuses it: err %v, output:\n%s\nwant a start-up error naming authorized_delegates", err, out)
	}
}
