// Package handoff passes a running agent's listening sockets to its successor on the same node,
// so that an upgrade has no moment in which nobody accepts: the successor serves the very
// sockets the kernel already steers connections to (the same file, passed with SCM_RIGHTS over
// a unix socket), and the predecessor stops accepting only once the successor runs. Nothing is
// re-bound, so no SYN meets a closed port and no accept queue is dropped, and the eBPF maps that
// point at the sockets (the listener SOCKMAP) stay right without an update.
//
// The exchange, over one unix stream connection, each message a length-prefixed JSON frame:
//
//	successor → predecessor   {"op":"take","version":1,"owner":…}
//	predecessor → successor   {"op":"offer","names":[...]} then the sockets, in batches
//	successor → predecessor   {"op":"ready"}             (it serves them now)
//	predecessor → successor   {"op":"released","state":…} (it stopped accepting; its state)
//
// A successor that goes away before "ready" changes nothing: the predecessor keeps serving. Only
// the agent's own user may take part (the socket's directory is 0700, and both ends check the
// peer's credentials), since whoever holds the sockets serves every pod of the node.
package handoff

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the exchange's version; a predecessor refuses a successor that speaks another.
const Version = 1

// ErrNoPredecessor is returned by Take when no agent serves the hand-off socket.
var ErrNoPredecessor = errors.New("handoff: no running agent to take over from")

// Handler is the predecessor's side of a hand-over.
type Handler interface {
	// Offer returns the listening sockets to pass, by name (duplicates: the caller keeps its
	// own). The handler should change nothing it serves until Release or Abort.
	Offer() (map[string]*os.File, error)
	// Release is called once the successor serves the sockets: stop accepting on them and
	// return the state the successor needs (opaque JSON, nil for none).
	Release() (json.RawMessage, error)
	// Abort is called when an offer ends without a hand-over (the successor went away).
	Abort()
}

// Timeout bounds each step of an exchange, so a stuck peer cannot hold either side.
const Timeout = 10 * time.Second

// maxFrame bounds one JSON frame (the state of a busy node's kernel-path connections fits).
const maxFrame = 64 << 20

// batch is how many descriptors go in one message (the kernel's SCM_MAX_FD is 253).
const batch = 200

type frame struct {
	Op      string          `json:"op"`
	Version int             `json:"version,omitempty"`
	Owner   string          `json:"owner,omitempty"`
	Names   []string        `json:"names,omitempty"`
	State   json.RawMessage `json:"state,omitempty"`
	Error   string          `json:"error,omitempty"`
}

// Server offers this agent's sockets on a unix socket until one successor has taken them.
type Server struct {
	ln    *net.UnixListener
	path  string
	owner string
	once  sync.Once
}

// Listen binds the hand-off socket at path, replacing a stale one nobody serves. It fails when
// another agent serves path: there is one agent per node, and the one that wants to run must
// Take over first. owner names what the sockets serve (the agent's node and pin directory):
// only a successor that names the same may take them, so two agents that share a host, and a
// path by mistake, never take each other's pods.
func Listen(path, owner string) (*Server, error) {
	if err := secureDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("handoff: %s: another agent serves it (take over from it first)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("handoff: remove stale %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("handoff: listen: %w", err)
	}
	// The successor binds the same path once this server is gone: never unlink it on close.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("handoff: %w", err)
	}
	return &Server{ln: ln, path: path, owner: owner}, nil
}

// Serve answers successors until one takes the sockets over (it returns nil then, and serves no
// more), ctx ends, or Close is called. Exchanges that fail leave h serving and are logged
// through onError.
func (s *Server) Serve(ctx context.Context, h Handler, onError func(error)) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	defer s.Close()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("handoff: accept: %w", err)
		}
		done, err := s.exchange(c, h)
		c.Close()
		if err != nil && onError != nil {
			onError(err)
		}
		if done {
			return nil
		}
	}
}

// Close stops serving. It does not unlink the socket (see Listen).
func (s *Server) Close() error {
	var err error
	s.once.Do(func() { err = s.ln.Close() })
	return err
}

// exchange runs the predecessor's side of one hand-over; done reports that it released.
func (s *Server) exchange(c *net.UnixConn, h Handler) (done bool, err error) {
	if err := checkPeer(c); err != nil {
		return false, err
	}
	c.SetDeadline(time.Now().Add(Timeout))
	var req frame
	if err := readFrame(c, &req); err != nil {
		return false, fmt.Errorf("handoff: read request: %w", err)
	}
	if req.Op != "take" || req.Version != Version {
		writeFrame(c, frame{Op: "error", Error: fmt.Sprintf("want op take, version %d", Version)})
		return false, fmt.Errorf("handoff: refused request %q version %d (this agent speaks %d)", req.Op, req.Version, Version)
	}
	if req.Owner != s.owner {
		writeFrame(c, frame{Op: "error", Error: fmt.Sprintf("this agent serves %q, not %q", s.owner, req.Owner)})
		return false, fmt.Errorf("handoff: refused a successor for %q: this agent serves %q", req.Owner, s.owner)
	}
	files, err := h.Offer()
	if err != nil {
		writeFrame(c, frame{Op: "error", Error: err.Error()})
		h.Abort()
		return false, fmt.Errorf("handoff: offer: %w", err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	names := make([]string, 0, len(files))
	fds := make([]int, 0, len(files))
	for name, f := range files {
		// Not f.Fd(): it puts the descriptor in blocking mode, and with it the socket the
		// caller still accepts on (one open file, shared by the duplicates).
		fd, err := rawFd(f)
		if err != nil {
			h.Abort()
			return false, fmt.Errorf("handoff: offer %s: %w", name, err)
		}
		names = append(names, name)
		fds = append(fds, fd)
	}
	if err := writeFrame(c, frame{Op: "offer", Names: names}); err != nil {
		h.Abort()
		return false, fmt.Errorf("handoff: offer: %w", err)
	}
	for i := 0; i < len(fds); i += batch {
		part := fds[i:min(i+batch, len(fds))]
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(part)))
		if _, _, err := c.WriteMsgUnix(n[:], unix.UnixRights(part...), nil); err != nil {
			h.Abort()
			return false, fmt.Errorf("handoff: pass sockets: %w", err)
		}
	}
	var ready frame
	if err := readFrame(c, &ready); err != nil || ready.Op != "ready" {
		h.Abort()
		return false, fmt.Errorf("handoff: the successor did not take the sockets (%q): %w", ready.Op, err)
	}
	state, err := h.Release()
	// Released either way: the successor serves the sockets now, and this agent does not. Stop
	// serving the hand-off socket before saying so, so the successor finds it free for its own.
	s.Close()
	reply := frame{Op: "released", State: state}
	if err != nil {
		reply = frame{Op: "released", Error: err.Error()}
	}
	c.SetDeadline(time.Now().Add(Timeout))
	if werr := writeFrame(c, reply); werr != nil {
		return true, fmt.Errorf("handoff: released, but could not tell the successor: %w", werr)
	}
	return true, err
}

// rawFd returns f's descriptor without changing its mode; it is valid while f is open.
func rawFd(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var fd int
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return 0, err
	}
	return fd, nil
}

// Taking is a hand-over in progress on the successor's side: it holds the predecessor's sockets,
// which it must start serving before it calls Finish.
type Taking struct {
	// Files are the sockets, by the predecessor's names. The caller owns them.
	Files map[string]*os.File
	c     *net.UnixConn
}

// Take asks the agent serving path for the sockets it serves for owner (see Listen). It returns
// ErrNoPredecessor when nobody serves path (no socket there, or a stale one).
func Take(ctx context.Context, path, owner string) (*Taking, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, ErrNoPredecessor
		}
		return nil, fmt.Errorf("handoff: connect %s: %w", path, err)
	}
	c := nc.(*net.UnixConn)
	t, err := take(ctx, c, owner)
	if err != nil {
		c.Close()
		return nil, err
	}
	return t, nil
}

func take(ctx context.Context, c *net.UnixConn, owner string) (*Taking, error) {
	if err := checkPeer(c); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	if err := writeFrame(c, frame{Op: "take", Version: Version, Owner: owner}); err != nil {
		return nil, fmt.Errorf("handoff: request: %w", err)
	}
	var offer frame
	if err := readFrame(c, &offer); err != nil {
		return nil, fmt.Errorf("handoff: read offer: %w", err)
	}
	if offer.Op != "offer" {
		return nil, fmt.Errorf("handoff: the running agent refused: %s", offer.Error)
	}
	t := &Taking{Files: map[string]*os.File{}, c: c}
	var fds []int
	oob := make([]byte, unix.CmsgSpace(batch*4))
	for len(fds) < len(offer.Names) {
		var n [4]byte
		k, oobn, _, _, err := c.ReadMsgUnix(n[:], oob)
		if err == nil && k != len(n) {
			err = fmt.Errorf("short header (%d bytes)", k)
		}
		var got []int
		if err == nil {
			got, err = parseRights(oob[:oobn])
		}
		fds = append(fds, got...)
		if err == nil && len(got) != int(binary.BigEndian.Uint32(n[:])) {
			err = fmt.Errorf("%d sockets in a batch announced as %d", len(got), binary.BigEndian.Uint32(n[:]))
		}
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return nil, fmt.Errorf("handoff: receive sockets: %w", err)
		}
	}
	for i, fd := range fds {
		if i >= len(offer.Names) {
			unix.Close(fd)
			continue
		}
		unix.CloseOnExec(fd)
		t.Files[offer.Names[i]] = os.NewFile(uintptr(fd), offer.Names[i])
	}
	return t, nil
}

// parseRights returns the descriptors of the SCM_RIGHTS messages in oob.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return nil, err
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// Finish tells the predecessor that this agent serves the sockets now, waits until it stopped
// accepting on them, and returns the state it handed over.
func (t *Taking) Finish() (json.RawMessage, error) {
	defer t.c.Close()
	t.c.SetDeadline(time.Now().Add(Timeout))
	if err := writeFrame(t.c, frame{Op: "ready"}); err != nil {
		return nil, fmt.Errorf("handoff: ready: %w", err)
	}
	var rel frame
	if err := readFrame(t.c, &rel); err != nil {
		return nil, fmt.Errorf("handoff: wait for release: %w", err)
	}
	if rel.Op != "released" {
		return nil, fmt.Errorf("handoff: unexpected %q", rel.Op)
	}
	if rel.Error != "" {
		return nil, fmt.Errorf("handoff: the predecessor released with an error: %s", rel.Error)
	}
	return rel.State, nil
}

// Abort ends the hand-over without taking over: the predecessor keeps serving. The caller
// closes the Files it did not keep.
func (t *Taking) Abort() { t.c.Close() }

func writeFrame(w io.Writer, f frame) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return err
}

// readFrame reads exactly one frame, byte-exact (no buffering: descriptor batches follow
// frames on the same connection and must be read with their control messages).
func readFrame(r io.Reader, f *frame) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxFrame {
		return fmt.Errorf("frame of %d bytes (at most %d)", size, maxFrame)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return json.Unmarshal(b, f)
}

// secureDir makes dir, owner-only (an existing one too: a hostPath the runtime made is 0755).
func secureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	return nil
}
