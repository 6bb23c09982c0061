package tunnel

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// directSink says whether the read loop may write DATA straight to a relay's TCP socket.
const directSink = true

// nbWriter writes as much of a payload to a socket as it takes without blocking (the read
// loop must never block on one stream's destination). Its callback is made once, on first use:
// a closure per write would cost three heap allocations per DATA frame. One goroutine uses it
// at a time (the connection's read loop).
type nbWriter struct {
	p  []byte
	n  int
	fn func(fd uintptr) bool
}

// write writes p to rc without blocking and returns how much was written.
func (w *nbWriter) write(rc syscall.RawConn, p []byte) int {
	if w.fn == nil {
		w.fn = w.writeFD
	}
	w.p, w.n = p, 0
	rc.Write(w.fn)
	w.p = nil
	return w.n
}

func (w *nbWriter) writeFD(fd uintptr) bool {
	for w.n < len(w.p) {
		k, err := syscall.Write(int(fd), w.p[w.n:])
		if k > 0 {
			w.n += k
		}
		if err != nil || k <= 0 {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			break
		}
	}
	return true // never wait for writability here: the read loop must not block
}

// lazyReader reads a TCP socket into a relayBuf that it takes only once the socket has bytes,
// and gives back when a read finds none: Go's own Read would hold the buffer for as long as the
// connection is idle (16 KiB per idle connection and direction, most of what an open connection
// costs the agent). Same syscalls as Go's Read: the read that finds nothing is the one before
// the wait. One goroutine uses it at a time; its callback is made once, as nbWriter's.
type lazyReader struct {
	rc    syscall.RawConn
	b     *relayBuf
	limit int
	n     int
	err   error
	fn    func(fd uintptr) bool
}

// newLazyReader returns a lazyReader of c, or nil if c has no raw descriptor.
func newLazyReader(c *net.TCPConn, b *relayBuf) *lazyReader {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	r := &lazyReader{rc: rc, b: b}
	r.fn = r.readFD
	return r
}

// read reads at most limit bytes (no bound when negative) into r.b's buffer, waiting for the
// socket as Read does (deadlines and Close end the wait). A clean end of the stream is io.EOF.
func (r *lazyReader) read(limit int) (int, error) {
	r.limit, r.n, r.err = limit, 0, nil
	if err := r.rc.Read(r.fn); err != nil {
		return 0, err
	}
	if r.err != nil {
		return 0, os.NewSyscallError("read", r.err)
	}
	if r.n == 0 {
		return 0, io.EOF
	}
	return r.n, nil
}

func (r *lazyReader) readFD(fd uintptr) bool {
	buf := r.b.get()
	if r.limit >= 0 && r.limit < len(buf) {
		buf = buf[:r.limit]
	}
	for {
		n, err := syscall.Read(int(fd), buf)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN):
			r.b.release()
			return false // wait until readable, then call again
		}
		r.n, r.err = max(n, 0), err
		return true
	}
}
