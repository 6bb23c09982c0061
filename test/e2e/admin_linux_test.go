package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/amesh-dev/amesh/test/lab"
)

// adminAddr is where the lab's agents serve the admin API, inside their node's netns.
const adminAddr = "127.0.0.1:15000"

// ztunnelDump is /config_dump as a tool written for ztunnel's reads it: its field names, not
// amesh's own types.
type ztunnelDump struct {
	Workloads []struct {
		UID            string   `json:"uid"`
		WorkloadIPs    []string `json:"workloadIps"`
		Protocol       string   `json:"protocol"`
		Name           string   `json:"name"`
		Namespace      string   `json:"namespace"`
		ServiceAccount string   `json:"serviceAccount"`
		Node           string   `json:"node"`
		TrustDomain    string   `json:"trustDomain"`
	} `json:"workloads"`
	Services []struct {
		Name     string            `json:"name"`
		Hostname string            `json:"hostname"`
		VIPs     []string          `json:"vips"`
		Ports    map[string]uint16 `json:"ports"`
	} `json:"services"`
	Policies []struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
		Action    string `json:"action"`
	} `json:"policies"`
	Certificates []struct {
		Identity  string `json:"identity"`
		State     string `json:"state"`
		CertChain []struct {
			PEM            string `json:"pem"`
			SerialNumber   string `json:"serialNumber"`
			ValidFrom      string `json:"validFrom"`
			ExpirationTime string `json:"expirationTime"`
		} `json:"certChain"`
		RootCerts []struct {
			PEM string `json:"pem"`
		} `json:"rootCerts"`
	} `json:"certificates"`
}

// TestAdmin: the admin API on the node's loopback: /config_dump parses as ztunnel's and holds
// the node's certificates, /logging changes the level at run time, pprof answers, it is out of
// reach of pods and other nodes, and /quitquitquit stops the agent.
func TestAdmin(t *testing.T) {
	c := newCluster(t, "--admin-addr", adminAddr)
	node1 := c.lab.Node("node1")
	resp := adminDo(t, node1, "GET", "/config_dump")
	var d ztunnelDump
	if err := json.Unmarshal([]byte(resp), &d); err != nil {
		t.Fatalf("config_dump: %v\n%s", err, resp)
	}
	found := map[string]bool{}
	for _, w := range d.Workloads {
		found[w.Namespace+"/"+w.Name] = true
		if w.Name == "web" && (w.Protocol != "HBONE" || w.ServiceAccount != "web" || w.Node != "node1" || len(w.WorkloadIPs) != 1 || w.TrustDomain != "cluster.local") {
			t.Errorf("web in config_dump: %+v", w)
		}
		if w.Name == "plain" && w.Protocol != "TCP" {
			t.Errorf("plain (not in the mesh) has protocol %q, want TCP", w.Protocol)
		}
	}
	if !found["shop/web"] || !found["shop/api2"] {
		t.Errorf("config_dump workloads %v: want every workload of the cluster", found)
	}
	if len(d.Policies) == 0 || d.Policies[0].Name != "api-allow-web" || d.Policies[0].Action != "Allow" {
		t.Errorf("config_dump policies %+v", d.Policies)
	}
	certs := map[string]bool{}
	for _, cert := range d.Certificates {
		certs[cert.Identity] = true
		if cert.State != "Available" || len(cert.CertChain) == 0 || len(cert.RootCerts) == 0 {
			t.Errorf("certificate %s: state %s, %d in chain, %d roots", cert.Identity, cert.State, len(cert.CertChain), len(cert.RootCerts))
			continue
		}
		b, _ := pem.Decode([]byte(cert.CertChain[0].PEM))
		if b == nil {
			t.Errorf("certificate %s: no PEM", cert.Identity)
			continue
		}
		x, err := x509.ParseCertificate(b.Bytes)
		if err != nil || len(x.URIs) != 1 || x.URIs[0].String() != cert.Identity || x.SerialNumber.String() != cert.CertChain[0].SerialNumber {
			t.Errorf("certificate %s: %v, URIs %v, serial %s vs %s", cert.Identity, err, x.URIs, x.SerialNumber, cert.CertChain[0].SerialNumber)
		}
		if _, err := time.Parse(time.RFC3339, cert.CertChain[0].ExpirationTime); err != nil {
			t.Errorf("certificate %s: expirationTime %q: %v", cert.Identity, cert.CertChain[0].ExpirationTime, err)
		}
	}
	if !certs["spiffe://cluster.local/ns/shop/sa/web"] || certs["spiffe://cluster.local/ns/shop/sa/other"] {
		t.Errorf("node1's certificates %v: want its own pods' identities only", certs)
	}

	if out := adminDo(t, node1, "POST", "/logging?level=debug"); !strings.Contains(out, "DEBUG") {
		t.Errorf("/logging?level=debug: %q", out)
	}
	if out := adminDo(t, node1, "GET", "/logging"); !strings.Contains(out, "DEBUG") {
		t.Errorf("/logging after the change: %q", out)
	}
	if out := adminDo(t, node1, "GET", "/debug/pprof/"); !strings.Contains(out, "goroutine") {
		t.Errorf("/debug/pprof/: %q", out)
	}

	// Out of reach: from a pod of the node (to the node's address) and from the other node.
	for _, from := range []interface {
		Dial(context.Context, string) (net.Conn, error)
	}{c.lab.Pod("web"), c.lab.Node("node2")} {
		// A pod's connect is captured (it succeeds to the agent), so reachable means answered.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := from.Dial(ctx, net.JoinHostPort(node1.IP.String(), "15000"))
		cancel()
		if err != nil {
			continue
		}
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		io.WriteString(conn, "GET /config_dump HTTP/1.0\r\n\r\n")
		b, _ := io.ReadAll(conn)
		conn.Close()
		if strings.HasPrefix(string(b), "HTTP/") {
			t.Errorf("the admin API of node1 answered at %s:15000, outside the node's loopback: %.40q", node1.IP, b)
		}
	}

	adminDo(t, node1, "POST", "/quitquitquit")
	select {
	case <-c.agents["node1"].Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not stop after /quitquitquit")
	}
	delete(c.agents, "node1")
}

// adminDo sends method path to node's admin API and returns the body of a 200 answer.
func adminDo(t *testing.T, n *lab.Node, method, path string) string {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return n.Dial(ctx, adminAddr) },
	}}
	req, err := http.NewRequest(method, "http://"+adminAddr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	return string(b)
}
