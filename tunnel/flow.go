package tunnel

import (
	"os"

	"golang.org/x/net/http2"
)

// Flow control (RFC 9113 §5.2): what we may send (sendWindow, taken by reserveSend, refilled by
// WINDOW_UPDATE) and what the peer may send (recvAvail, returned in batches as bytes are
// consumed). All of it is guarded by the connection's mu.

func (c *h2conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += inc
		if c.sendWindow > 1<<31-1 {
			return connErr(http2.ErrCodeFlowControl, "connection window overflow")
		}
		for s := range c.connBlocked {
			s.cond.Broadcast()
		}
		return nil
	}
	if s := c.streams[f.StreamID]; s != nil {
		s.sendWindow += inc
		if s.sendWindow > 1<<31-1 {
			s.resetLocked(&ResetError{Code: http2.ErrCodeFlowControl})
			c.queueRST(f.StreamID, http2.ErrCodeFlowControl)
			return nil
		}
		s.cond.Broadcast()
	}
	return nil
}

// creditConnLocked returns consumed bytes to the peer's connection window, in batches.
func (c *h2conn) creditConnLocked(n int64) {
	c.recvUnacked += n
	if c.recvUnacked >= connWindow/4 {
		inc := uint32(c.recvUnacked)
		c.recvAvail += c.recvUnacked
		c.recvUnacked = 0
		c.queueCtrl(func() error { return c.wfr.WriteWindowUpdate(0, inc) })
	}
}

// creditLocked returns consumed bytes to the peer's stream window, in batches.
func (s *Stream) creditLocked(n int64) {
	s.recvUnacked += n
	if s.recvUnacked >= streamWindow/4 && !s.recvEOF && s.reset == nil {
		inc, id, c := uint32(s.recvUnacked), s.id, s.c
		s.recvAvail += s.recvUnacked
		s.recvUnacked = 0
		c.queueCtrl(func() error { return c.wfr.WriteWindowUpdate(id, inc) })
	}
}

// reserveSend takes up to want bytes of send window from the stream and the connection.
func (s *Stream) reserveSend(want int) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.waitSendLocked(); err != nil {
		return 0, err
	}
	n := min(int64(want), s.sendWindow, c.sendWindow, int64(c.peerMaxFrame))
	s.sendWindow -= n
	c.sendWindow -= n
	return int(n), nil
}

// waitSendLocked waits, with c.mu held, until both the stream's and the connection's send
// windows are open, or the stream can send no more (reset, ended, past its write deadline).
func (s *Stream) waitSendLocked() error {
	c := s.c
	for {
		switch {
		case s.reset != nil:
			return s.reset
		case s.sentEnd:
			return errWriteAfterCloseWrite
		case expired(s.wdeadline):
			return os.ErrDeadlineExceeded
		}
		if s.sendWindow > 0 && c.sendWindow > 0 {
			delete(c.connBlocked, s)
			return nil
		}
		if c.sendWindow <= 0 {
			c.connBlocked[s] = struct{}{}
		}
		s.cond.Wait()
	}
}
