package tunnel

import (
	"errors"
	"syscall"
)

// directSink says whether the read loop may write DATA straight to a relay's TCP socket.
const directSink = true

// writeNonBlocking writes as much of p to the socket as it takes without blocking and returns
// how much that was; what is left (EAGAIN, or any error, which the relay then meets itself) is
// for the relay goroutine.
func writeNonBlocking(rc syscall.RawConn, p []byte) int {
	n := 0
	rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			k, err := syscall.Write(int(fd), p[n:])
			if k > 0 {
				n += k
			}
			if err != nil || k <= 0 {
				if errors.Is(err, syscall.EINTR) {
					continue
				}
				break
			}
		}
		return true // never wait for writability here: the read loop must not block
	})
	return n
}
