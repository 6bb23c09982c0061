package k8s

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/amesh-dev/amesh/netns"
)

// The authorization modes Config.Authorization may name.
const (
	// AuthorizationRBAC is the default and what a real cluster runs: use it for any test about
	// what a user may do, such as the agent's ClusterRole.
	AuthorizationRBAC = "RBAC"
	// AuthorizationAlwaysAllow lets every authenticated user do everything: only for tests that
	// are not about permissions.
	AuthorizationAlwaysAllow = "AlwaysAllow"
)

// AdminUser is the name of the user of AdminToken, a member of system:masters.
const AdminUser = "admin"

// DefaultReadyTimeout bounds how long Start and StartAPIServer wait for readiness when
// Config.ReadyTimeout is zero. A start takes 2 to 4 s.
const DefaultReadyTimeout = 60 * time.Second

// ErrPortTaken is wrapped by Start's error when etcd or kube-apiserver could not bind the port
// chosen for it, after Start gave up retrying with other ports, and by StartAPIServer's when
// something took the API server's port while it was stopped.
var ErrPortTaken = errors.New("k8s: port taken")

// User is a user of the static token file: the API server authenticates a bearer token of it as
// Name with Groups (system:authenticated is added by the API server anyway).
type User struct {
	Name   string
	Groups []string
}

// ServiceIP is the kubernetes Service's ClusterIP, the first of the service range
// (10.96.0.0/16). With Config.Nodes the control plane's namespace holds it on its loopback and
// the API server listens on its port 443, which is what kube-proxy would have routed it to: pods'
// in-cluster clients (KUBERNETES_SERVICE_HOST) then reach it wherever a route sends the address.
const ServiceIP = "10.96.0.1"

// NodeUser is the user a node's kubelet authenticates as, in group system:nodes, as the Node
// authorizer expects.
func NodeUser(node string) User {
	return User{Name: "system:node:" + node, Groups: []string{"system:nodes"}}
}

// ServiceAccountUser returns the user a token of ServiceAccount namespace/name authenticates as,
// with the groups the API server gives it, so that RBAC bindings to the ServiceAccount apply to
// it as they would to a projected token in a pod.
func ServiceAccountUser(namespace, name string) User {
	return User{
		Name:   "system:serviceaccount:" + namespace + ":" + name,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}
}

// Config configures Start. The zero value runs an RBAC control plane on 127.0.0.1 in the caller's
// network namespace with the binaries of EnsureBinaries.
type Config struct {
	// Netns is the path of the network namespace (such as /run/netns/x) to run etcd and
	// kube-apiserver in; empty is the caller's. The processes are started with `nsenter --net`,
	// not `ip netns exec`, which would also remount /sys.
	Netns string
	// BindIP is the address etcd and kube-apiserver listen on, inside Netns; default 127.0.0.1
	// (the namespace's loopback must then be up).
	BindIP string
	// Users get a bearer token each (see ControlPlane.Token); "admin" is taken.
	Users []User
	// Authorization is AuthorizationRBAC (default) or AuthorizationAlwaysAllow.
	Authorization string
	// Binaries to run; the zero value means EnsureBinaries.
	Binaries Binaries
	// Dir is where the per-run data directory is created; default os.TempDir().
	Dir string
	// ReadyTimeout bounds each wait for readiness; default DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// APIServerArgs are appended to kube-apiserver's flags (feature gates, say).
	APIServerArgs []string
	// Nodes are the names of the real nodes (test/node) that will register: each gets a kubelet
	// user (NodeUser) with a token, the API server authorizes them with the Node authorizer and
	// NodeRestriction, and the ServiceAccount admission plugin is on, since StartControllers
	// runs the controller that makes each namespace's default ServiceAccount. With Nodes the
	// API server also answers in-cluster clients at the kubernetes Service's address (see
	// ServiceIP): it listens on port 443 of every address of Netns, which must be set.
	Nodes []string
	// Logger receives the control plane's lifecycle (not the processes' logs, which go to files in
	// Dir); nil discards.
	Logger *slog.Logger
}

// ControlPlane is a running etcd and kube-apiserver. Its methods are safe for concurrent use.
//
// Its data directory (Dir) holds owner.pid (this process's pid), etcd/ (etcd's data), certs/
// (kube-apiserver's --cert-dir, with the self-signed apiserver.crt it writes), sa.key and sa.pub
// (the service-account key pair), tokens.csv, kubeconfig files, kubectl's discovery cache, and
// the processes' output in etcd.log and kube-apiserver.log (appended to across restarts).
type ControlPlane struct {
	log        *slog.Logger
	bin        Binaries
	netns      string
	bindIP     string
	dir        string
	server     string // https://BindIP:port
	etcdURL    string
	adminToken string
	tokens     map[string]string // user name -> token
	apiArgs    []string
	timeout    time.Duration

	mu          sync.Mutex
	etcd, api   *proc
	controllers []*proc           // kube-controller-manager, kube-scheduler (StartControllers)
	caData      []byte            // PEM the server's certificate verifies against; nil: not verified
	kubeconfigs map[string]string // token -> kubeconfig path written for it
	stopped     bool
	stopErr     error
}

// Start starts etcd and then kube-apiserver, and returns once /readyz answers ok. ctx bounds the
// start only: the processes run until Stop. Ports are chosen free in the namespace; if another
// process takes one before etcd or kube-apiserver binds it, Start tries again with other ports.
// On failure the error carries the tail of the failing process's log, and everything started is
// stopped and removed.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if err := checkPlatform(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.BindIP == "" {
		cfg.BindIP = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(cfg.BindIP)
	if err != nil || ip.IsUnspecified() || ip.IsMulticast() || ip.Zone() != "" {
		return nil, fmt.Errorf("k8s: BindIP %q: want one unicast IP address, the one clients connect to", cfg.BindIP)
	}
	switch cfg.Authorization {
	case "":
		cfg.Authorization = AuthorizationRBAC
	case AuthorizationRBAC, AuthorizationAlwaysAllow:
	default:
		return nil, fmt.Errorf("k8s: Authorization %q: want %s or %s", cfg.Authorization, AuthorizationRBAC, AuthorizationAlwaysAllow)
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	seen := map[string]bool{AdminUser: true}
	for _, u := range cfg.Users {
		if u.Name == "" || seen[u.Name] {
			return nil, fmt.Errorf("k8s: user %q: names must be non-empty and unique (%q is taken)", u.Name, AdminUser)
		}
		seen[u.Name] = true
		for _, g := range u.Groups {
			if g == "" || strings.Contains(g, ",") {
				return nil, fmt.Errorf("k8s: user %q: group %q: the token file separates groups with commas", u.Name, g)
			}
		}
	}
	if cfg.Netns != "" {
		if _, err := os.Stat(cfg.Netns); err != nil {
			return nil, fmt.Errorf("k8s: netns: %w", err)
		}
		if _, err := exec.LookPath("nsenter"); err != nil {
			return nil, fmt.Errorf("k8s: running in netns %s needs nsenter (util-linux): %w", cfg.Netns, err)
		}
	}
	if len(cfg.Nodes) > 0 {
		if cfg.Netns == "" {
			return nil, errors.New("k8s: Nodes needs Netns: the API server takes port 443 and the Service address there")
		}
		if cfg.Authorization != AuthorizationRBAC {
			return nil, errors.New("k8s: Nodes needs RBAC authorization (with the Node authorizer before it)")
		}
		for _, n := range cfg.Nodes {
			if seen[NodeUser(n).Name] {
				return nil, fmt.Errorf("k8s: node %q: a user of that name is configured already", n)
			}
			seen[NodeUser(n).Name] = true
		}
	}
	if cfg.Binaries == (Binaries{}) {
		want := tools
		if len(cfg.Nodes) > 0 {
			want = append(slices.Clone(tools), nodeTools...)
		}
		if cfg.Binaries, err = ensureBinaries(ctx, log, want); err != nil {
			return nil, err
		}
	}
	const attempts = 3
	for i := 1; ; i++ {
		cp, err := start(ctx, cfg, log)
		if err == nil {
			return cp, nil
		}
		if !errors.Is(err, ErrPortTaken) || i == attempts || ctx.Err() != nil {
			return nil, err
		}
		log.Warn("a chosen port was taken; retrying with other ports", "err", err, "attempt", i)
	}
}

// dataDirPrefix starts the name of every data directory; ownerFile in it holds the pid of the
// process that owns it.
const (
	dataDirPrefix = "amesh-k8s-"
	ownerFile     = "owner.pid"
)

func start(ctx context.Context, cfg Config, log *slog.Logger) (_ *ControlPlane, err error) {
	removeStale(cfg.Dir, log)
	dir, err := os.MkdirTemp(cfg.Dir, dataDirPrefix)
	if err != nil {
		return nil, fmt.Errorf("k8s: data dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("k8s: data dir: %w", err)
	}
	cp := &ControlPlane{
		log: log, bin: cfg.Binaries, netns: cfg.Netns, bindIP: cfg.BindIP, dir: dir,
		tokens: map[string]string{}, kubeconfigs: map[string]string{}, timeout: cfg.ReadyTimeout,
	}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	ports, err := cp.freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	bindAPI := cfg.BindIP
	if len(cfg.Nodes) > 0 {
		// Every address of the namespace, so ServiceIP:443 as well as BindIP:443.
		apiPort, bindAPI = 443, "0.0.0.0"
		if out, err := exec.CommandContext(ctx, "ip", "-n", filepath.Base(cfg.Netns), "addr", "replace", ServiceIP+"/32", "dev", "lo").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("k8s: %s on the loopback of %s: %w: %s", ServiceIP, cfg.Netns, err, out)
		}
	}
	cp.etcdURL = "http://" + net.JoinHostPort(cfg.BindIP, strconv.Itoa(etcdClient))
	cp.server = "https://" + net.JoinHostPort(cfg.BindIP, strconv.Itoa(apiPort))
	users := cfg.Users
	for _, n := range cfg.Nodes {
		users = append(users, NodeUser(n))
	}
	if err := cp.writeSecrets(users); err != nil {
		return nil, err
	}

	peerURL := "http://" + net.JoinHostPort(cfg.BindIP, strconv.Itoa(etcdPeer))
	etcdArgs := []string{
		"--name", "default",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", cp.etcdURL, "--advertise-client-urls", cp.etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default=" + peerURL,
		// The data is thrown away with the run: no need to wait for the disk.
		"--unsafe-no-fsync",
	}
	p, err := cp.startProc("etcd", cp.bin.Etcd, etcdArgs)
	if err != nil {
		return nil, err
	}
	cp.mu.Lock()
	cp.etcd = p
	cp.mu.Unlock()
	if err := cp.waitReady(ctx, p, cp.etcdURL+"/health", nil, false); err != nil {
		return nil, err
	}
	log.Debug("etcd ready", "url", cp.etcdURL)

	admission := []string{
		// The ServiceAccount admission plugin waits for each namespace's "default"
		// ServiceAccount, which only the controller manager creates: off without one.
		"--disable-admission-plugins", "ServiceAccount",
	}
	authorization := cfg.Authorization
	if len(cfg.Nodes) > 0 {
		admission = []string{"--enable-admission-plugins", "NodeRestriction",
			// kubectl logs/exec reach kubelet at the node's address: no DNS knows node names.
			"--kubelet-preferred-address-types", "InternalIP"}
		authorization = "Node," + authorization
	}
	cp.apiArgs = append([]string{
		"--etcd-servers", cp.etcdURL,
		"--bind-address", bindAPI, "--advertise-address", cfg.BindIP,
		"--secure-port", strconv.Itoa(apiPort),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", authorization,
		// No controllers keep the kubernetes Service's endpoints: do not write any.
		"--endpoint-reconciler-type", "none",
		"--allow-privileged",
	}, append(admission, cfg.APIServerArgs...)...)
	if err := cp.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	if err := cp.verifyCA(ctx); err != nil {
		return nil, err
	}
	if _, err := cp.kubeconfig(""); err != nil {
		return nil, err
	}
	log.Info("control plane ready", "server", cp.server, "netns", cp.netns, "dir", dir, "ca_verified", cp.caData != nil)
	return cp, nil
}

// removeStale removes the data directories under parent (os.TempDir() when empty) that a killed
// process left: Stop never ran for them, but their etcd and kube-apiserver died with their owner
// (see procAttr). A directory whose owner lives, or that has no owner file yet, is left alone.
func removeStale(parent string, log *slog.Logger) {
	if parent == "" {
		parent = os.TempDir()
	}
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), dataDirPrefix) {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		if err := os.RemoveAll(dir); err == nil {
			log.Info("removed the data dir of a killed run", "dir", dir, "owner_pid", pid)
		}
	}
}

// freePorts returns n distinct ports that were free on BindIP in the namespace a moment ago.
func (cp *ControlPlane) freePorts(n int) ([]int, error) {
	var ports []int
	pick := func() error {
		var ls []net.Listener
		defer func() {
			for _, l := range ls {
				l.Close()
			}
		}()
		for range n {
			l, err := net.Listen("tcp", net.JoinHostPort(cp.bindIP, "0"))
			if err != nil {
				return err
			}
			ls = append(ls, l)
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		return nil
	}
	var err error
	if cp.netns == "" {
		err = pick()
	} else {
		err = netns.Do(cp.netns, pick)
	}
	if err != nil {
		return nil, fmt.Errorf("k8s: pick free ports on %s (netns %q; is the address there and the link, lo for 127.0.0.1, up?): %w", cp.bindIP, cp.netns, err)
	}
	return ports, nil
}

// writeSecrets writes the service-account key pair and the token file.
func (cp *ControlPlane) writeSecrets(users []User) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("k8s: service-account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("k8s: service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("k8s: service-account key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(cp.dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("k8s: write service-account key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(cp.dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return fmt.Errorf("k8s: write service-account key: %w", err)
	}

	// tokens.csv: token,user,uid,"group1,group2" (csv quotes the group list).
	var b strings.Builder
	w := csv.NewWriter(&b)
	cp.adminToken = rand.Text()
	cp.tokens[AdminUser] = cp.adminToken
	w.Write([]string{cp.adminToken, AdminUser, AdminUser, "system:masters"})
	for _, u := range users {
		tok := rand.Text()
		cp.tokens[u.Name] = tok
		w.Write([]string{tok, u.Name, u.Name, strings.Join(u.Groups, ",")})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return fmt.Errorf("k8s: token file: %w", err)
	}
	if err := os.WriteFile(filepath.Join(cp.dir, "tokens.csv"), []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("k8s: write token file: %w", err)
	}
	return nil
}

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) with the same port, flags,
// certificates and tokens, and waits for its readiness. It fails if the API server is running.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	cp.mu.Lock()
	if cp.stopped {
		cp.mu.Unlock()
		return errors.New("k8s: start kube-apiserver: control plane stopped")
	}
	if cp.api != nil {
		cp.mu.Unlock()
		return errors.New("k8s: start kube-apiserver: already running")
	}
	p, err := cp.startProc("kube-apiserver", cp.bin.APIServer, cp.apiArgs)
	if err != nil {
		cp.mu.Unlock()
		return err
	}
	cp.api = p
	cp.mu.Unlock()

	if err := cp.waitReady(ctx, p, cp.server+"/readyz", cp.tlsConfig(), true); err != nil {
		cp.mu.Lock()
		if cp.api == p {
			cp.api = nil
		}
		cp.mu.Unlock()
		p.stop()
		return err
	}
	cp.log.Info("kube-apiserver ready", "server", cp.server)
	return nil
}

// StopAPIServer kills kube-apiserver (SIGKILL, as a crash would) and waits for it to exit; etcd
// keeps running. Clients see refused connections until StartAPIServer. Stopping a stopped API
// server does nothing.
func (cp *ControlPlane) StopAPIServer() error {
	cp.mu.Lock()
	p := cp.api
	cp.api = nil
	cp.mu.Unlock()
	if p == nil {
		return nil
	}
	cp.log.Info("stopping kube-apiserver", "server", cp.server)
	return p.stop()
}

// RestartAPIServer stops kube-apiserver and starts it again on the same port (StopAPIServer, then
// StartAPIServer): the objects stay in etcd, the certificates and tokens stay valid, watches
// break and clients reconnect.
func (cp *ControlPlane) RestartAPIServer(ctx context.Context) error {
	if err := cp.StopAPIServer(); err != nil {
		return err
	}
	return cp.StartAPIServer(ctx)
}

// Stop kills kube-apiserver and etcd (their whole process groups), waits for them and removes
// Dir. It is idempotent: later calls return the first call's result.
func (cp *ControlPlane) Stop() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.stopped {
		return cp.stopErr
	}
	cp.stopped = true
	var errs []error
	for _, p := range append(cp.controllers, cp.api, cp.etcd) {
		if p != nil {
			errs = append(errs, p.stop())
		}
	}
	cp.api, cp.etcd, cp.controllers = nil, nil, nil
	if err := os.RemoveAll(cp.dir); err != nil {
		errs = append(errs, fmt.Errorf("k8s: remove %s: %w", cp.dir, err))
	}
	cp.stopErr = errors.Join(errs...)
	cp.log.Info("control plane stopped", "server", cp.server, "err", cp.stopErr)
	return cp.stopErr
}

// Server returns the API server's URL, https://BindIP:port.
func (cp *ControlPlane) Server() string { return cp.server }

// Dir returns the run's data directory (see ControlPlane), removed by Stop.
func (cp *ControlPlane) Dir() string { return cp.dir }

// Netns returns Config.Netns, the namespace the control plane runs in ("" for the caller's).
func (cp *ControlPlane) Netns() string { return cp.netns }

// Binaries returns the binaries the control plane runs.
func (cp *ControlPlane) Binaries() Binaries { return cp.bin }

// AdminToken returns the bearer token of AdminUser (group system:masters).
func (cp *ControlPlane) AdminToken() string { return cp.adminToken }

// Token returns the bearer token of a user of Config.Users (or of AdminUser). An unknown name is
// an error, not an empty token: an empty token means the admin to this package's clients, and a
// typo must not turn a permission test into an admin one.
func (cp *ControlPlane) Token(user string) (string, error) {
	if t, ok := cp.tokens[user]; ok {
		return t, nil
	}
	return "", fmt.Errorf("k8s: no user %q: add it to Config.Users", user)
}

// CAData returns the PEM certificates that verify the API server (its self-signed
// certs/apiserver.crt), or nil if that did not verify and clients skip verification.
func (cp *ControlPlane) CAData() []byte {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.caData
}

// DialContext dials addr, an IP literal and port, from inside the control plane's network
// namespace (from the caller's when Config.Netns is empty). It is what RESTConfig's clients dial
// with. A hostname is refused: Go's resolver would send its queries from other threads, outside
// the namespace.
func (cp *ControlPlane) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if cp.netns == "" {
		return d.DialContext(ctx, network, addr)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("k8s: dial %s: %w", addr, err)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return nil, fmt.Errorf("k8s: dial %s in netns %s: want an IP address, not a name", addr, cp.netns)
	}
	var c net.Conn
	err = netns.Do(cp.netns, func() error {
		var err error
		// One address, so the dial runs on this goroutine (no Happy Eyeballs racers on other
		// threads) and the socket is created in the namespace.
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("k8s: dial %s in netns %s: %w", addr, cp.netns, err)
	}
	return c, nil
}

// verifyCA checks that certs/apiserver.crt, written by kube-apiserver at its first start,
// verifies the running server for BindIP, and keeps it for the clients if it does. It does with
// this version (the file holds the serving certificate and the self-signed CA that signed it, for
// BindIP); should a later version change that, clients fall back to skipping verification, which
// is harmless for a server only reachable on loopback or in a test's own namespace.
func (cp *ControlPlane) verifyCA(ctx context.Context) error {
	path := filepath.Join(cp.dir, "certs", "apiserver.crt")
	pemData, err := os.ReadFile(path)
	if err != nil {
		cp.log.Warn("no apiserver.crt: clients skip TLS verification", "err", err)
		return nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		cp.log.Warn("apiserver.crt has no certificate: clients skip TLS verification", "path", path)
		return nil
	}
	hc := cp.httpClient(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cp.server+"/readyz", nil)
	if err != nil {
		return fmt.Errorf("k8s: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+cp.adminToken)
	resp, err := hc.Do(req)
	if err != nil {
		cp.log.Warn("apiserver.crt does not verify the server: clients skip TLS verification", "err", err)
		return nil
	}
	resp.Body.Close()
	cp.mu.Lock()
	cp.caData = pemData
	cp.mu.Unlock()
	return nil
}

// tlsConfig verifies the server with CAData, or skips verification while there is none.
func (cp *ControlPlane) tlsConfig() *tls.Config {
	if ca := cp.CAData(); ca != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	// Before the first start there is no certificate yet to verify against.
	return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // loopback or a test netns only
}

// httpClient dials in the namespace, never through a proxy of the environment.
func (cp *ControlPlane) httpClient(tc *tls.Config) *http.Client {
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			DialContext:       cp.DialContext,
			TLSClientConfig:   tc,
			DisableKeepAlives: true,
		},
	}
}

// waitReady polls url until it answers 200, p exits, ctx ends or the ready timeout passes. tc is
// for an https url; withToken sends the admin's token.
func (cp *ControlPlane) waitReady(ctx context.Context, p *proc, url string, tc *tls.Config, withToken bool) error {
	ctx, cancel := context.WithTimeout(ctx, cp.timeout)
	defer cancel()
	// A probe in flight ends when p does: something else may hold the port and accept the probe
	// without ever answering it.
	probeCtx, cancelProbe := context.WithCancel(ctx)
	defer cancelProbe()
	go func() {
		select {
		case <-p.done:
			cancelProbe()
		case <-probeCtx.Done():
		}
	}()
	hc := cp.httpClient(tc)
	defer hc.CloseIdleConnections()
	last := "no answer yet"
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(probeCtx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("k8s: %w", err)
		}
		if withToken {
			req.Header.Set("Authorization", "Bearer "+cp.adminToken)
		}
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, Tail(body, 10))
		} else if probeCtx.Err() == nil {
			last = err.Error()
		}
		select {
		case <-p.done:
			return p.startError(url, last)
		case <-ctx.Done():
			select {
			case <-p.done: // it exited: that is the news, not the timeout
				return p.startError(url, last)
			default:
			}
			return fmt.Errorf("k8s: %s not ready after %s (%w); last probe of %s: %s; tail of %s:\n%s",
				p.name, cp.timeout, ctx.Err(), url, last, p.logPath, TailFile(p.logPath, 30))
		case <-tick.C:
		}
	}
}

// startError describes p's exit during its start, with the tail of its log; a bind failure
// (the log's line for it is quoted) wraps ErrPortTaken.
func (p *proc) startError(url, last string) error {
	err := fmt.Errorf("k8s: %s exited while starting (%v); last probe of %s: %s; tail of %s:\n%s",
		p.name, p.err, url, last, p.logPath, TailFile(p.logPath, 30))
	for _, line := range strings.Split(TailFile(p.logPath, 300), "\n") {
		if strings.Contains(line, "address already in use") {
			return fmt.Errorf("%w (%s): %w", ErrPortTaken, strings.TrimSpace(line), err)
		}
	}
	return err
}

// proc is one process of the control plane.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	logFile *os.File
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's result, set before done is closed
}

// startProc starts bin with args (inside the namespace with nsenter), its output appended to
// <dir>/<name>.log.
func (cp *ControlPlane) startProc(name, bin string, args []string) (*proc, error) {
	logPath := filepath.Join(cp.dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("k8s: %s log: %w", name, err)
	}
	fmt.Fprintf(f, "--- amesh test/k8s: starting %s at %s\n", name, time.Now().Format(time.RFC3339Nano))
	var cmd *exec.Cmd
	if cp.netns == "" {
		cmd = exec.Command(bin, args...)
	} else {
		// nsenter without --fork execs bin in its own process: the pid (and group) is bin's.
		cmd = exec.Command("nsenter", append([]string{"--net=" + cp.netns, "--", bin}, args...)...)
	}
	cmd.Dir = cp.dir
	cmd.Env = ProcessEnv()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("k8s: start %s: %w", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, logFile: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	cp.log.Debug("started", "process", name, "pid", cmd.Process.Pid, "log", logPath)
	return p, nil
}

// stop kills p's process group and waits for p to exit. A process already reaped is not
// signalled: its pid may belong to someone else by now.
func (p *proc) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := killGroup(p.cmd.Process); err != nil {
		return fmt.Errorf("k8s: kill %s (pid %d): %w", p.name, p.cmd.Process.Pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("k8s: %s (pid %d) did not exit 10 s after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// ProcessEnv is this process's environment without what would redirect the control plane's or
// kubectl's connections: proxies (the server may be on a non-loopback address of a test netns),
// KUBECONFIG, kubectl's preferences file (KUBERC=off), and etcd's ETCD_* settings.
func ProcessEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch u := strings.ToUpper(k); {
		case u == "HTTP_PROXY", u == "HTTPS_PROXY", u == "NO_PROXY", u == "ALL_PROXY",
			u == "KUBECONFIG", u == "KUBERC", strings.HasPrefix(u, "ETCD_"):
			continue
		}
		env = append(env, kv)
	}
	return append(env, "KUBERC=off")
}
