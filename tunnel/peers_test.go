package tunnel

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ghostunnelBin is where `make bench` builds the ghostunnel peer (outside the repo).
func ghostunnelBin() string {
	if p := os.Getenv("AMESH_GHOSTUNNEL"); p != "" {
		return p
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "amesh", "bin", "ghostunnel")
}

// relayListener is the amesh outbound path without the eBPF capture: an app's plain TCP
// connection accepted locally (the agent's :15001) and relayed into an HBONE stream.
func relayListener(b *testing.B, e *env) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				st, err := e.client.Dial(context.Background(), e.target())
				if err != nil {
					c.Close()
					return
				}
				Relay(c, st)
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// ghostunnelPair starts a ghostunnel client → server pair in front of backend with SVIDs from
// e's CA (the peer users would otherwise deploy for L4 mTLS) and returns the client's address,
// or "" when the binary is not built.
func ghostunnelPair(b *testing.B, e *env, backend string) string {
	bin := ghostunnelBin()
	if _, err := os.Stat(bin); err != nil {
		return ""
	}
	dir := b.TempDir()
	writePEM := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			b.Fatal(err)
		}
		return p
	}
	pair := func(name string, s *x509svid.SVID) (string, string) {
		key, err := x509.MarshalPKCS8PrivateKey(s.PrivateKey)
		if err != nil {
			b.Fatal(err)
		}
		return writePEM(name+".crt", "CERTIFICATE", s.Certificates[0].Raw), writePEM(name+".key", "PRIVATE KEY", key)
	}
	ca := writePEM("ca.crt", "CERTIFICATE", e.ca.Root().Raw)
	// ghostunnel's client checks the server's host name as well as its URI SAN.
	ssvid, err := e.ca.IssueWithIPs(context.Background(), serverID, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	csvid, err := e.ca.Issue(context.Background(), clientID)
	if err != nil {
		b.Fatal(err)
	}
	scrt, skey := pair("server", ssvid)
	ccrt, ckey := pair("client", csvid)
	sAddr, cAddr := freeAddr(b), freeAddr(b)
	start := func(args ...string) {
		cmd := exec.Command(bin, args...)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
	start("server", "--quiet=all", "--listen", sAddr, "--target", backend, "--cert", scrt, "--key", skey,
		"--cacert", ca, "--allow-uri", clientID.String())
	start("client", "--quiet=all", "--listen", cAddr, "--target", sAddr, "--cert", ccrt, "--key", ckey,
		"--cacert", ca, "--verify-uri", serverID.String())
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range []string{sAddr, cAddr} {
		for {
			c, err := net.Dial("tcp", a)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("ghostunnel did not listen on %s", a)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return cAddr
}

func freeAddr(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
