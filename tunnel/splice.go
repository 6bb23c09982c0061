package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

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
	return relay(a, b, relayBounds{})
}

// relayBounds are the time bounds of a relay the server runs for a peer (ztunnel#1630: every
// half-close path ends in a full close with a bound). Zero durations are no bound.
type relayBounds struct {
	idle      time.Duration // nothing moved either way for this long: abort
	halfClose time.Duration // after one direction ended, nothing moved for this long: abort
	active    func() int64  // unix nanos of the last byte moved
}

// Errors a bounded relay ends with.
var (
	errStreamIdle       = errors.New("tunnel: stream idle")
	errHalfCloseTimeout = errors.New("tunnel: half-closed stream idle")
)

func relay(a, b net.Conn, lim relayBounds) (aToB, bToA int64, err error) {
	type result struct {
		n   int64
		err error
	}
	ab, ba := make(chan result, 1), make(chan result, 1)
	go func() { n, err := copyHalf(b, a); ab <- result{n, err} }()
	go func() { n, err := copyHalf(a, b); ba <- result{n, err} }()
	var half atomic.Bool
	var timedOut atomic.Pointer[error]
	var watch *time.Timer
	if lim.active != nil && (lim.idle > 0 || lim.halfClose > 0) {
		var mu sync.Mutex // watch is set before check can read it
		mu.Lock()
		watch = time.AfterFunc(time.Hour, func() {
			mu.Lock()
			defer mu.Unlock()
			limit, cause := lim.idle, errStreamIdle
			if half.Load() && lim.halfClose > 0 {
				limit, cause = lim.halfClose, errHalfCloseTimeout
			}
			if limit <= 0 {
				return
			}
			since := time.Since(time.Unix(0, lim.active()))
			if since >= limit {
				err := fmt.Errorf("%w: nothing moved for %v", cause, limit)
				timedOut.Store(&err)
				abort(a, b)
				return
			}
			watch.Reset(limit - since)
		})
		watch.Reset(min(positive(lim.idle), positive(lim.halfClose)))
		mu.Unlock()
		defer watch.Stop()
	}
	halfClosed := func() {
		if watch != nil {
			half.Store(true)
			watch.Reset(0) // re-judge with the half-close bound
		}
	}
	var r1, r2 result
	select {
	case r1 = <-ab:
		if r1.err != nil {
			abort(a, b)
		} else {
			halfClosed()
		}
		r2 = <-ba
	case r2 = <-ba:
		if r2.err != nil {
			abort(a, b)
		} else {
			halfClosed()
		}
		r1 = <-ab
	}
	if r1.err != nil || r2.err != nil {
		// An error after a clean half-close (a reset stream, a timeout) still aborts: the other
		// side must learn the connection failed, not see an orderly end it already saw.
		abort(a, b)
	}
	a.Close()
	b.Close()
	if p := timedOut.Load(); p != nil {
		return r1.n, r2.n, *p
	}
	return r1.n, r2.n, errors.Join(r1.err, r2.err)
}

// positive maps a zero (no bound) duration to the longest one, for min.
func positive(d time.Duration) time.Duration {
	if d <= 0 {
		return 1<<63 - 1
	}
	return d
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
	toStream, _ := dst.(*Stream)
	bp := smallPool.Get().(*[]byte)
	large := false
	release := func() {
		if bp == nil {
			return
		}
		if large {
			largePool.Put(bp)
		} else {
			smallPool.Put(bp)
		}
		bp = nil
	}
	defer release()
	var total int64
	for {
		limit := -1
		if toStream != nil {
			// Read no more than the peer's window takes, and hold no buffer while it is shut.
			if !toStream.sendable() {
				release()
			}
			k, err := toStream.awaitSend()
			if err != nil {
				return total, err
			}
			limit = k
			if bp == nil {
				if large {
					bp = largePool.Get().(*[]byte)
				} else {
					bp = smallPool.Get().(*[]byte)
				}
			}
		}
		buf := *bp
		if limit >= 0 && limit < len(buf) {
			buf = buf[:limit]
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
			if n == len(*bp) && !large {
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
