package spire

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// BinDirEnv overrides where the SPIRE binaries are looked for.
const BinDirEnv = "AMESH_SPIRE_BIN"

// BinDir is $AMESH_SPIRE_BIN, else $HOME/.cache/amesh/bin (where `make spire-bins` puts them).
func BinDir() string {
	if d := os.Getenv(BinDirEnv); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "amesh", "bin")
}

// Installed says whether spire-server and spire-agent are in dir, and if not, which is missing.
func Installed(dir string) error {
	for _, b := range []string{"spire-server", "spire-agent"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return fmt.Errorf("%s not built (make spire-bins): %w", b, err)
		}
	}
	return nil
}

// DelegatePath is the path of the SPIFFE ID each node's amesh agent gets from its SPIRE agent,
// the one listed in authorized_delegates.
const DelegatePath = "/amesh-agent"

// Server is a running SPIRE server.
type Server struct {
	TrustDomain string
	Dir         string
	bin         string
	socket      string
	port        int
	proc        *exec.Cmd
	done        chan struct{}
}

// StartServer runs a SPIRE server for trust domain td in dir and waits until it is healthy.
func StartServer(ctx context.Context, binDir, dir, td string) (*Server, error) {
	if err := Installed(binDir); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{TrustDomain: td, Dir: filepath.Join(dir, "server"), bin: binDir, port: port}
	s.socket = filepath.Join(s.Dir, "api.sock")
	if err := os.MkdirAll(filepath.Join(s.Dir, "data"), 0o700); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  KeyManager "disk" {
    plugin_data { keys_path = %q }
  }
  NodeAttestor "join_token" { plugin_data {} }
}
`, port, s.socket, td, filepath.Join(s.Dir, "data"), filepath.Join(s.Dir, "data", "datastore.sqlite3"), filepath.Join(s.Dir, "data", "keys.json"))
	confPath := filepath.Join(s.Dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	s.proc, s.done, err = start(filepath.Join(binDir, "spire-server"), filepath.Join(s.Dir, "server.log"), "run", "-config", confPath)
	if err != nil {
		return nil, err
	}
	if err := waitHealthy(ctx, s.done, filepath.Join(binDir, "spire-server"), "healthcheck", "-socketPath", s.socket); err != nil {
		s.Close()
		return nil, fmt.Errorf("spire-server: %w (log %s)", err, filepath.Join(s.Dir, "server.log"))
	}
	return s, nil
}

// ID is spiffe://<td><path>.
func (s *Server) ID(path string) string { return "spiffe://" + s.TrustDomain + path }

// cli runs a spire-server subcommand ("entry create", "bundle show", ...) against the server.
func (s *Server) cli(ctx context.Context, cmd string, args ...string) (string, error) {
	args = append(append(strings.Fields(cmd), "-socketPath", s.socket), args...)
	out, err := exec.CommandContext(ctx, filepath.Join(s.bin, "spire-server"), args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("spire-server %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Entry is a registration entry to create.
type Entry struct {
	ParentID, SPIFFEID string
	Selectors          []string
	// TTL is the X.509-SVID lifetime; the server's default (1 h) when zero.
	TTL time.Duration
}

var entryIDRe = regexp.MustCompile(`(?m)^Entry ID\s*:\s*(\S+)`)

// CreateEntry registers e and returns its entry ID.
func (s *Server) CreateEntry(ctx context.Context, e Entry) (string, error) {
	args := []string{"-parentID", e.ParentID, "-spiffeID", e.SPIFFEID}
	for _, sel := range e.Selectors {
		args = append(args, "-selector", sel)
	}
	if e.TTL > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(e.TTL.Seconds())))
	}
	out, err := s.cli(ctx, "entry create", args...)
	if err != nil {
		return "", err
	}
	m := entryIDRe.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("spire-server entry create: no entry ID in %q", out)
	}
	return m[1], nil
}

// DeleteEntry deletes the entry id.
func (s *Server) DeleteEntry(ctx context.Context, id string) error {
	_, err := s.cli(ctx, "entry delete", "-entryID", id)
	return err
}

// Bundle returns the server's X.509 authorities (its trust bundle).
func (s *Server) Bundle(ctx context.Context) (*x509.CertPool, []*x509.Certificate, error) {
	out, err := s.cli(ctx, "bundle show", "-format", "pem")
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	var certs []*x509.Certificate
	rest := []byte(out)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, nil, err
		}
		pool.AddCert(c)
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("spire-server bundle show: no certificate in %q", out)
	}
	return pool, certs, nil
}

// Close stops the server.
func (s *Server) Close() { stop(s.proc, s.done) }

// Agent is a running SPIRE agent: one node's.
type Agent struct {
	Name string
	// ID is the agent's own SPIFFE ID (spiffe://<td>/node/<name>), the parent of the entries of
	// its node's workloads; DelegateID is what its amesh agent gets, authorized as a delegate.
	ID, DelegateID string
	// AdminSocket serves the Delegated Identity API.
	AdminSocket string
	Dir         string
	srv         *Server
	confPath    string
	proc        *exec.Cmd
	done        chan struct{}
}

// AgentOptions change how StartAgent configures an agent.
type AgentOptions struct {
	// NoDelegate leaves authorized_delegates empty: the amesh agent is refused.
	NoDelegate bool
}

// AdminSocket is where the admin socket of node name's agent is (or will be) in a run's dir. It
// is not in the workload API socket's directory: SPIRE refuses that.
func AdminSocket(dir, name string) string {
	return filepath.Join(dir, "agent-"+name, "private", "admin.sock")
}

// StartAgent attests a new SPIRE agent for node name with a join token, registers the amesh
// agent of the node (any process of uid 0) as its delegate, and waits until it is healthy.
func (s *Server) StartAgent(ctx context.Context, name string, o AgentOptions) (*Agent, error) {
	dir := filepath.Dir(s.Dir)
	a := &Agent{Name: name, ID: s.ID("/node/" + name), DelegateID: s.ID(DelegatePath), srv: s, Dir: filepath.Join(dir, "agent-"+name), AdminSocket: AdminSocket(dir, name)}
	for _, d := range []string{"data", "public", "private"} {
		if err := os.MkdirAll(filepath.Join(a.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	out, err := s.cli(ctx, "token generate", "-spiffeID", a.ID, "-ttl", "600")
	if err != nil {
		return nil, err
	}
	token, ok := strings.CutPrefix(strings.TrimSpace(out), "Token: ")
	if !ok {
		return nil, fmt.Errorf("spire-server token generate: %q", out)
	}
	if _, err := s.CreateEntry(ctx, Entry{ParentID: a.ID, SPIFFEID: a.DelegateID, Selectors: []string{"unix:uid:0"}}); err != nil {
		return nil, err
	}
	delegates := fmt.Sprintf("[%q]", a.DelegateID)
	if o.NoDelegate {
		delegates = "[]"
	}
	conf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
  admin_socket_path = %q
  authorized_delegates = %s
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "disk" { plugin_data { directory = %q } }
  WorkloadAttestor "unix" { plugin_data {} }
}
`, filepath.Join(a.Dir, "data"), s.port, filepath.Join(a.Dir, "public", "api.sock"), s.TrustDomain, a.AdminSocket, delegates, filepath.Join(a.Dir, "data"))
	a.confPath = filepath.Join(a.Dir, "agent.conf")
	if err := os.WriteFile(a.confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if err := a.run(ctx, "-joinToken", token); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Agent) run(ctx context.Context, extra ...string) error {
	var err error
	args := append([]string{"run", "-config", a.confPath}, extra...)
	a.proc, a.done, err = start(filepath.Join(a.srv.bin, "spire-agent"), filepath.Join(a.Dir, "agent.log"), args...)
	if err != nil {
		return err
	}
	if err := waitHealthy(ctx, a.done, filepath.Join(a.srv.bin, "spire-agent"), "healthcheck", "-socketPath", filepath.Join(a.Dir, "public", "api.sock")); err != nil {
		a.Stop()
		return fmt.Errorf("spire-agent %s: %w (log %s)", a.Name, err, filepath.Join(a.Dir, "agent.log"))
	}
	return nil
}

// Stop stops the agent (SIGTERM, then SIGKILL after 5 s).
func (a *Agent) Stop() { stop(a.proc, a.done) }

// Restart stops the agent and starts it again from its data directory (its SVID and keys are
// on disk: no new join token).
func (a *Agent) Restart(ctx context.Context) error {
	a.Stop()
	return a.run(ctx)
}

// Log returns the agent's log.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(filepath.Join(a.Dir, "agent.log"))
	return string(b)
}

func start(bin, logPath string, args ...string) (*exec.Cmd, chan struct{}, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, nil, fmt.Errorf("%s: %w", bin, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	return cmd, done, nil
}

func stop(cmd *exec.Cmd, done chan struct{}) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// waitHealthy runs the healthcheck command until it passes (30 s at most), or the process exits.
func waitHealthy(ctx context.Context, done chan struct{}, bin string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last []byte
	for {
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err == nil {
			return nil
		}
		last = out
		select {
		case <-done:
			return errors.New("exited before it was healthy")
		case <-ctx.Done():
			return fmt.Errorf("not healthy in 30 s: %s", bytes.TrimSpace(last))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
