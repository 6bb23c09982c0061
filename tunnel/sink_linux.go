package tunnel

import (
	"errors"
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
