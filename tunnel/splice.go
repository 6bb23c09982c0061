package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"

	"golang.org/x/net/http2"
)

// Copy buffers grow with the flow, as ztunnel's do: a request/response connection keeps a small
// one, a bulk transfer moves to a large one after its first full read.
const (
	smallBuf = 16 << 10
	largeBuf = 256 << 10
)

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}
)

type closeWriter interface{ CloseWrite() error }

// Relay copies a→b and b→a until both directions have ended, then closes both. Between two
// TCP connections the bytes move with splice(2); out of a Stream they go as received chunks. An orderly end
// (EOF) of one direction is passed on as a half-close (CloseWrite) and the other direction keeps
// going; an error in either aborts both (RST to a TCP peer, RST_STREAM to a stream), so a reset
// propagates and nothing is left half-open. It returns the bytes copied each way.
func Relay(a, b net.Conn) (aToB, bToA int64, err error) {
	type result struct {
		n   int64
		err error
	}
	ab, ba := make(chan result, 1), make(chan result, 1)
	go func() { n, err := copyHalf(b, a); ab <- result{n, err} }()
	go func() { n, err := copyHalf(a, b); ba <- result{n, err} }()
	var r1, r2 result
	select {
	case r1 = <-ab:
		if r1.err != nil {
			abort(a, b)
		}
		r2 = <-ba
	case r2 = <-ba:
		if r2.err != nil {
			abort(a, b)
		}
		r1 = <-ab
	}
	a.Close()
	b.Close()
	return r1.n, r2.n, errors.Join(r1.err, r2.err)
}

// copyHalf copies src to dst; on EOF from src it half-closes dst.
func copyHalf(dst, src net.Conn) (int64, error) {
	st, fromStream := src.(*Stream)
	tcpDst, toTCP := dst.(*net.TCPConn)
	tcpSrc, fromTCP := src.(*net.TCPConn)
	if fromStream || (toTCP && fromTCP) {
		var n int64
		var err error
		if fromStream {
			n, err = st.WriteTo(dst)
		} else {
			// TCP to TCP: ReadFrom moves the bytes with splice(2), never through user space.
			n, err = tcpDst.ReadFrom(tcpSrc)
		}
		if err == nil {
			if cw, ok := dst.(closeWriter); ok {
				err = cw.CloseWrite()
			}
		}
		return n, err
	}
	bp := smallPool.Get().(*[]byte)
	large := false
	defer func() {
		if large {
			largePool.Put(bp)
		} else {
			smallPool.Put(bp)
		}
	}()
	var total int64
	for {
		buf := *bp
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
			if n == len(buf) && !large {
				smallPool.Put(bp)
				bp, large = largePool.Get().(*[]byte), true
			}
		}
		if rerr == io.EOF {
			if cw, ok := dst.(closeWriter); ok {
				if err := cw.CloseWrite(); err != nil {
					return total, err
				}
			}
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// abort ends both connections abruptly: RST for TCP (SO_LINGER 0), RST_STREAM for streams.
func abort(conns ...net.Conn) {
	for _, c := range conns {
		switch c := c.(type) {
		case *net.TCPConn:
			c.SetLinger(0)
		case *Stream:
			c.Reset(http2.ErrCodeCancel)
		}
		c.Close()
	}
}
