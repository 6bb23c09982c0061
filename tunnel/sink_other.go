//go:build !linux

package tunnel

import "syscall"

const directSink = false

func writeNonBlocking(syscall.RawConn, []byte) int { return 0 }
