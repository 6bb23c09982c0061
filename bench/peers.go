package bench

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/amesh-dev/amesh/identity"
	"github.com/amesh-dev/amesh/test/lab"
)

// startPeers runs the L4 mTLS peers between c1 (node1) and s2 (node2), both out of the mesh:
// client proxy in c1 on 127.0.0.1, server proxy in s2 on its pod IP, target s2's echo/iperf3.
func startPeers(ctx context.Context, l *lab.Lab, ca *identity.CA, ghost string) ([]scenario, func(), error) {
	var procs []*lab.Proc
	stop := func() {
		for _, p := range procs {
			p.Kill()
		}
	}
	dir := filepath.Join(l.Dir, "peers")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, stop, err
	}
	s2 := l.Pod("s2").IP
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
		return p
	}
	issue := func(name, sa string, ips []net.IP) (string, string, string, error) {
		id := spiffeid.RequireFromString("spiffe://" + l.TrustDomain + "/ns/plain/sa/" + sa)
		s, err := ca.IssueWithIPs(ctx, id, ips)
		if err != nil {
			return "", "", "", err
		}
		key, err := x509.MarshalPKCS8PrivateKey(s.PrivateKey)
		if err != nil {
			return "", "", "", err
		}
		return write(name+".crt", "CERTIFICATE", s.Certificates[0].Raw), write(name+".key", "PRIVATE KEY", key), id.String(), nil
	}
	caFile := write("ca.crt", "CERTIFICATE", ca.Root().Raw)
	scrt, skey, _, err := issue("server", "server", []net.IP{s2.AsSlice()})
	if err != nil {
		return nil, stop, err
	}
	ccrt, ckey, cid, err := issue("client", "client", nil)
	if err != nil {
		return nil, stop, err
	}
	start := func(pod string, name string, args ...string) error {
		p, err := l.Start(ctx, l.Pod(pod).Netns, "", name, args...)
		if err == nil {
			procs = append(procs, p)
		}
		return err
	}
	var out []scenario
	// Ports: 7001/7002 echo, 7101/7102 iperf3 for ghostunnel; 8001/8002, 8101/8102 for stunnel.
	if _, err := os.Stat(ghost); err == nil {
		var echoPids []int
		for _, pp := range [][3]string{{"7001", "7002", "9000"}, {"7101", "7102", "5201"}} {
			if err := start("s2", ghost, "server", "--quiet=all", "--listen", s2.String()+":"+pp[1], "--target", "127.0.0.1:"+pp[2],
				"--cert", scrt, "--key", skey, "--cacert", caFile, "--allow-uri", cid); err != nil {
				return nil, stop, err
			}
			if err := start("c1", ghost, "client", "--quiet=all", "--listen", "127.0.0.1:"+pp[0], "--target", s2.String()+":"+pp[1],
				"--cert", ccrt, "--key", ckey, "--cacert", caFile, "--verify-uri", "spiffe://"+l.TrustDomain+"/ns/plain/sa/server"); err != nil {
				return nil, stop, err
			}
			if echoPids == nil {
				echoPids = []int{procs[1].Cmd.Process.Pid, procs[0].Cmd.Process.Pid} // client, server
			}
		}
		out = append(out, scenario{name: pathGhost, from: "c1", rrAddr: "127.0.0.1:7001", iperfAddr: "127.0.0.1:7101", iperfPod: "s2", base: crossDirect, pids: echoPids})
	} else {
		fmt.Fprintf(os.Stderr, "bench: no ghostunnel at %s (make peers builds it): scenario left out\n", ghost)
	}
	if path, err := exec.LookPath("stunnel4"); err == nil {
		conf := func(name, body string) string {
			p := filepath.Join(dir, name)
			os.WriteFile(p, []byte("foreground = yes\npid =\n"+body), 0o600)
			return p
		}
		srv := conf("stunnel-server.conf", fmt.Sprintf(`[echo]
accept = %[1]s:8002
connect = 127.0.0.1:9000
cert = %[2]s
key = %[3]s
CAfile = %[4]s
verifyChain = yes
requireCert = yes
[iperf]
accept = %[1]s:8102
connect = 127.0.0.1:5201
cert = %[2]s
key = %[3]s
CAfile = %[4]s
verifyChain = yes
requireCert = yes
`, s2, scrt, skey, caFile))
		cli := conf("stunnel-client.conf", fmt.Sprintf(`[echo]
client = yes
accept = 127.0.0.1:8001
connect = %[1]s:8002
cert = %[2]s
key = %[3]s
CAfile = %[4]s
verifyChain = yes
checkIP = %[1]s
[iperf]
client = yes
accept = 127.0.0.1:8101
connect = %[1]s:8102
cert = %[2]s
key = %[3]s
CAfile = %[4]s
verifyChain = yes
checkIP = %[1]s
`, s2, ccrt, ckey, caFile))
		if err := start("s2", path, srv); err != nil {
			return nil, stop, err
		}
		if err := start("c1", path, cli); err != nil {
			return nil, stop, err
		}
		out = append(out, scenario{name: "stunnel pair", from: "c1", rrAddr: "127.0.0.1:8001", iperfAddr: "127.0.0.1:8101", iperfPod: "s2", base: crossDirect})
	} else {
		fmt.Fprintln(os.Stderr, "bench: no stunnel4 (make peers installs it): scenario left out")
	}
	// Wait for the client proxies to listen.
	for _, s := range out {
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := l.Pod("c1").Dial(ctx, s.rrAddr)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				return nil, stop, fmt.Errorf("%s did not listen on %s", s.name, s.rrAddr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return out, stop, nil
}
