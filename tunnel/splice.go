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
	// The half that ends first decides: an error aborts both, a clean end (EOF, passed on as a
	// half-close) leaves the other half going under the half-close bound. a→b runs in a
	// goroutine and b→a in this one: an open connection costs two goroutines, not three (with
	// their stacks, most of what an idle connection costs the agent).
	ended := func(err error) {
		if err != nil {
			abort(a, b)
		} else {
			halfClosed()
		}
	}
	ab := make(chan result, 1)
	go func() {
		n, err := copyHalf(b, a)
		ended(err)
		ab <- result{n, err}
	}()
	var r2 result
	r2.n, r2.err = copyHalf(a, b)
	ended(r2.err)
	r1 := <-ab
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
	var b relayBuf
	defer b.release()
	var lazy *lazyReader
	if tcpSrc != nil {
		lazy = newLazyReader(tcpSrc, &b)
	}
	var total int64
	for {
		limit := -1
		if toStream != nil {
			// Read no more than the peer's window takes, and hold no buffer while it is shut.
			if !toStream.sendable() {
				b.release()
			}
			k, err := toStream.awaitSend()
			if err != nil {
				return total, err
			}
			limit = k
		}
		var n int
		var rerr error
		if lazy != nil {
			// The buffer is taken only once the socket has bytes: an idle connection (most of
			// a keep-alive's life) holds none.
			n, rerr = lazy.read(limit)
		} else {
			buf := b.get()
			if limit >= 0 && limit < len(buf) {
				buf = buf[:limit]
			}
			n, rerr = src.Read(buf)
		}
		if n > 0 {
			full := n == len(*b.bp)
			w, werr := dst.Write((*b.bp)[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
			if full {
				b.grow()
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

// relayBuf is a copy's buffer from the pools: taken when there are bytes to move, given back
// while there are none, and moved to the large pool once a read fills the small one.
type relayBuf struct {
	bp    *[]byte
	large bool
}

func (b *relayBuf) get() []byte {
	if b.bp == nil {
		if b.large {
			b.bp = largePool.Get().(*[]byte)
		} else {
			b.bp = smallPool.Get().(*[]byte)
		}
	}
	return *b.bp
}

func (b *relayBuf) release() {
	if b.bp == nil {
		return
	}
	if b.large {
		largePool.Put(b.bp)
	} else {
		smallPool.Put(b.bp)
	}
	b.bp = nil
}

func (b *relayBuf) grow() {
	if !b.large {
		b.release()
		b.large = true
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
