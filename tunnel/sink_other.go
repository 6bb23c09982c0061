//go:build !linux

package tunnel

import (
	"net"
	"syscall"
)

const directSink = false

// nbWriter is the read loop's non-blocking writer; off Linux the read loop never writes to a
// destination itself (directSink), so it writes nothing.
type nbWriter struct{}

func (*nbWriter) write(syscall.RawConn, []byte) int { return 0 }

// lazyReader is Linux's buffer-less wait; elsewhere copies read with the buffer held.
type lazyReader struct{}

func newLazyReader(*net.TCPConn, *relayBuf) *lazyReader { return nil }

func (*lazyReader) read(int) (int, error) { return 0, nil }
