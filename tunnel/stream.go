package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

// errWriteAfterCloseWrite is returned by Write after CloseWrite.
var errWriteAfterCloseWrite = errors.New("tunnel: write after CloseWrite")

// ResetError is returned by a Stream that was reset, by the peer (Remote) or locally.
type ResetError struct {
	Code   http2.ErrCode
	Remote bool
}

// Error says who reset the stream and with which code.
func (e *ResetError) Error() string {
	who := "locally"
	if e.Remote {
		who = "by peer"
	}
	return fmt.Sprintf("tunnel: stream reset %s: %v", who, e.Code)
}

// Stream is one tunneled TCP connection: an HTTP/2 CONNECT stream inside an HBONE connection.
// It is a net.Conn with TCP's half-close: CloseWrite ends our side (END_STREAM) and Read returns
// io.EOF once the peer ended its side. Close resets the stream (RST_STREAM CANCEL) unless both
// sides had already ended cleanly, as closing a TCP socket with work left undone sends RST.
//
// Writes block while the peer's flow-control window is empty: backpressure, never a drop.
type Stream struct {
	c    *h2conn
	id   uint32
	cond *sync.Cond // on c.mu
	wmu  sync.Mutex // one Write or CloseWrite at a time, so frames of a Write stay in order

	// Server side: cancelled when the stream is reset or its connection closes, so the
	// handler's dial and relay stop with the peer ("Hostile peers" #3, #4).
	ctx        context.Context
	cancel     context.CancelFunc
	lastActive atomic.Int64 // unix nanos of the last byte moved either way

	// Guarded by c.mu.
	sendWindow  int64
	recvAvail   int64 // what the peer may still send on this stream
	recvUnacked int64
	rq          recvQueue
	sink        syscall.RawConn // WriteTo's TCP destination, which the read loop may write to directly
	sinkBusy    bool            // someone is writing to sink
	sunk        int64           // bytes the read loop wrote to sink itself: WriteTo counts them too
	recvEOF     bool
	sentEnd     bool
	reset       error // set once: the stream is dead
	closed      bool
	responded   bool                    // server side: response HEADERS sent
	req         *http2.MetaHeadersFrame // server side: the request
	resp        *http2.MetaHeadersFrame // client side: the response
	respReady   chan struct{}           // closed when resp is set, or the stream is reset before it
	respDone    bool                    // respReady is closed
	rdeadline   time.Time
	wdeadline   time.Time
	rtimer      *time.Timer
	wtimer      *time.Timer
}

// ID returns the HTTP/2 stream ID.
func (s *Stream) ID() uint32 { return s.id }

// Read reads tunneled bytes.
func (s *Stream) Read(p []byte) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if s.rq.len() > 0 {
			k := s.rq.read(p)
			s.creditLocked(int64(k))
			c.creditConnLocked(int64(k))
			return k, nil
		}
		if s.reset != nil {
			return 0, s.reset
		}
		if s.recvEOF {
			return 0, io.EOF
		}
		if expired(s.rdeadline) {
			return 0, os.ErrDeadlineExceeded
		}
		if len(p) == 0 {
			return 0, nil
		}
		s.cond.Wait()
	}
}

// WriteTo writes everything the peer sends to w until the peer ends the stream (then it returns
// nil, as io.Copy expects) or it is reset. Received chunks go to w as they are, in one writev
// where w is a TCP connection: no copy between the TLS layer and the destination socket.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	n, err := s.writeTo(w)
	// The sink is detached now (writeTo's defer): what the read loop wrote straight to it was
	// moved by this call as much as what writeTo wrote.
	s.c.mu.Lock()
	n += s.sunk
	s.sunk = 0
	s.c.mu.Unlock()
	return n, err
}

func (s *Stream) writeTo(w io.Writer) (int64, error) {
	c := s.c
	if tc, ok := w.(*net.TCPConn); ok && directSink {
		if rc, err := tc.SyscallConn(); err == nil {
			c.mu.Lock()
			s.sink = rc
			c.mu.Unlock()
			defer func() {
				c.mu.Lock()
				s.sink = nil
				c.mu.Unlock()
			}()
		}
	}
	var total int64
	var held []*chunk
	var bufs net.Buffers
	for {
		c.mu.Lock()
		for s.rq.len() == 0 && s.reset == nil && !s.recvEOF && !expired(s.rdeadline) {
			s.cond.Wait()
		}
		var n int
		held, bufs, n = s.rq.take(held[:0], bufs[:0])
		var err error
		switch {
		case n > 0:
		case s.reset != nil:
			err = s.reset
		case s.recvEOF:
			c.mu.Unlock()
			return total, nil
		default:
			err = os.ErrDeadlineExceeded
		}
		if err != nil {
			c.mu.Unlock()
			return total, err
		}
		s.sinkBusy = true
		c.mu.Unlock()
		// WriteTo consumes bufs; keep our slice header to reuse the array.
		wb := bufs
		k, werr := wb.WriteTo(w)
		total += k
		putChunks(held)
		clear(held)
		s.lastActive.Store(time.Now().UnixNano())
		c.mu.Lock()
		s.sinkBusy = false
		// The window reopens only once the bytes are out: a slow destination slows the sender.
		s.creditLocked(int64(n))
		c.creditConnLocked(int64(n))
		c.mu.Unlock()
		if werr != nil {
			return total, werr
		}
	}
}

// Write sends p as DATA frames, blocking while flow control allows nothing.
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	total := 0
	for len(p) > 0 {
		n, err := s.reserveSend(len(p))
		if err != nil {
			return total, err
		}
		if err := s.c.writeData(s.id, p[:n], false); err != nil {
			return total, err
		}
		s.lastActive.Store(time.Now().UnixNano())
		total += n
		p = p[n:]
	}
	return total, nil
}

// CloseWrite ends our side of the stream (END_STREAM), like shutdown(SHUT_WR).
func (s *Stream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	c := s.c
	c.mu.Lock()
	if s.reset != nil {
		err := s.reset
		c.mu.Unlock()
		return err
	}
	if s.sentEnd {
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	if err := c.writeData(s.id, nil, true); err != nil {
		return err
	}
	c.mu.Lock()
	s.sentEnd = true
	c.maybeRemoveLocked(s)
	c.mu.Unlock()
	return nil
}

// Reset aborts the stream with code (RST_STREAM): the peer's reads and writes fail.
func (s *Stream) Reset(code http2.ErrCode) {
	c := s.c
	c.mu.Lock()
	send := s.reset == nil && !(s.sentEnd && s.recvEOF)
	if s.reset == nil {
		s.resetLocked(&ResetError{Code: code})
	}
	c.mu.Unlock()
	if send {
		c.queueRST(s.id, code)
	}
}

// resetLocked marks the stream dead and wakes its waiters.
func (s *Stream) resetLocked(err error) {
	if s.reset == nil {
		s.reset = err
	}
	if s.c.client && !s.respDone {
		// Wake the dialer waiting for the response: a stream refused before it (REFUSED_STREAM,
		// or above a GOAWAY's last stream) was never processed and is opened again elsewhere.
		s.respDone = true
		close(s.respReady)
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.cond.Broadcast()
	s.c.maybeRemoveLocked(s)
}

// Close ends the stream: cleanly when the peer already ended its side and everything was read,
// with RST_STREAM CANCEL otherwise.
func (s *Stream) Close() error {
	c := s.c
	c.mu.Lock()
	if s.closed {
		c.mu.Unlock()
		return nil
	}
	s.closed = true
	graceful := s.reset == nil && s.recvEOF && s.rq.len() == 0 && !s.sentEnd
	c.mu.Unlock()
	if graceful {
		if err := s.CloseWrite(); err == nil {
			s.stopTimers()
			return nil
		}
	}
	s.Reset(http2.ErrCodeCancel)
	s.stopTimers()
	return nil
}

func (s *Stream) stopTimers() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.rtimer != nil {
		s.rtimer.Stop()
	}
	if s.wtimer != nil {
		s.wtimer.Stop()
	}
}

// LocalAddr returns the local address of the HBONE connection carrying the stream.
func (s *Stream) LocalAddr() net.Addr { return s.c.nc.LocalAddr() }

// RemoteAddr returns the remote address of the HBONE connection carrying the stream.
func (s *Stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

// SetDeadline sets both deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline makes blocked and future Reads fail with os.ErrDeadlineExceeded after t.
func (s *Stream) SetReadDeadline(t time.Time) error {
	return s.setDeadline(&s.rdeadline, &s.rtimer, t)
}

// SetWriteDeadline makes blocked and future Writes fail with os.ErrDeadlineExceeded after t.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	return s.setDeadline(&s.wdeadline, &s.wtimer, t)
}

// setDeadline sets one direction's deadline and re-arms its timer; both live under c.mu.
func (s *Stream) setDeadline(deadline *time.Time, timer **time.Timer, t time.Time) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	*deadline = t
	*timer = s.armLocked(*timer, t)
	return nil
}

func (s *Stream) armLocked(tm *time.Timer, t time.Time) *time.Timer {
	if tm != nil {
		tm.Stop()
	}
	s.cond.Broadcast()
	if t.IsZero() {
		return nil
	}
	return time.AfterFunc(time.Until(t), func() {
		s.c.mu.Lock()
		s.cond.Broadcast()
		s.c.mu.Unlock()
	})
}

// awaitSend waits until flow control lets at least one byte go and returns how many may
// (bounded by the peer's frame size), without taking them. A relay reads no more than that from
// its source, and holds no copy buffer while it waits: a reader that never opens its window
// then costs a parked goroutine, not a 256 KiB buffer ("Hostile peers" #6).
func (s *Stream) awaitSend() (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.waitSendLocked(); err != nil {
		return 0, err
	}
	return int(min(s.sendWindow, c.sendWindow, int64(c.peerMaxFrame)*4)), nil
}

// sendable says whether flow control would let a byte go now.
func (s *Stream) sendable() bool {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return s.sendWindow > 0 && c.sendWindow > 0
}

func expired(t time.Time) bool { return !t.IsZero() && !time.Now().Before(t) }

var _ net.Conn = (*Stream)(nil)
