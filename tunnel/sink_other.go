//go:build !linux

package tunnel

import "syscall"

const directSink = false

// nbWriter is the read loop's non-blocking writer; off Linux the read loop never writes to a
// destination itself (directSink), so it writes nothing.
type nbWriter struct{}

func (*nbWriter) write(syscall.RawConn, []byte) int { return 0 }
