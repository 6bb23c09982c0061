package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/net/http2"
)

// The read path: one goroutine per connection reads and dispatches frames, and never blocks on
// a write (replies go to the ctrl queue).

// readLoop reads frames until the connection fails. It must never block on a write.
func (c *h2conn) readLoop() {
	first := true
	for {
		if !first {
			// Unpadded DATA frames skip the Framer and its copy; anything unusual goes through it.
			if hdr, err := c.br.Peek(frameHeaderLen); err == nil && http2.FrameType(hdr[3]) == http2.FrameData &&
				hdr[4]&^byte(http2.FlagDataEndStream) == 0 {
				length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
				sid := binary.BigEndian.Uint32(hdr[5:]) & (1<<31 - 1)
				if sid != 0 && length <= maxFrameSize {
					end := hdr[4]&byte(http2.FlagDataEndStream) != 0
					c.br.Discard(frameHeaderLen)
					if err := c.readDataFast(sid, length, end); err != nil {
						var ce http2.ConnectionError
						if errors.As(err, &ce) {
							c.goAway(http2.ErrCode(ce), err)
						} else {
							c.closeWith(fmt.Errorf("read frame: %w", err))
						}
						return
					}
					c.lastRead.Store(time.Now().UnixNano())
					if c.ctrlOverflow.Load() {
						c.cutControlFlood()
						return
					}
					continue
				}
			}
		}
		f, err := c.rfr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.goAway(http2.ErrCode(ce), err)
				return
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				c.goAway(http2.ErrCodeFrameSize, err)
				return
			}
			c.closeWith(fmt.Errorf("read frame: %w", err))
			return
		}
		c.lastRead.Store(time.Now().UnixNano())
		if first {
			if _, ok := f.(*http2.SettingsFrame); !ok {
				c.goAway(http2.ErrCodeProtocol, fmt.Errorf("first frame is %v, not SETTINGS", f.Header().Type))
				return
			}
			first = false
			err := c.handleFrame(f)
			close(c.settings)
			if err != nil {
				c.goAway(http2.ErrCodeProtocol, err)
				return
			}
			continue
		}
		if err := c.handleFrame(f); err != nil {
			var ce http2.ConnectionError
			code := http2.ErrCodeProtocol
			if errors.As(err, &ce) {
				code = http2.ErrCode(ce)
			}
			var ae *abuseError
			if errors.As(err, &ae) {
				c.goAwayFor(code, ae.reason, err)
			} else {
				c.goAway(code, err)
			}
			return
		}
		if c.ctrlOverflow.Load() {
			c.cutControlFlood()
			return
		}
	}
}

func (c *h2conn) cutControlFlood() {
	c.goAwayFor(http2.ErrCodeEnhanceYourCalm, ReasonControlFlood, fmt.Errorf("over %d control frames queued for a peer that does not read them", maxQueuedControl))
}

// abuseError is a connection error that a budget caused: it is counted under reason rather
// than as a protocol error.
type abuseError struct {
	reason Reason
	err    error
}

func (e *abuseError) Error() string { return e.err.Error() }
func (e *abuseError) Unwrap() error { return e.err }

func abuse(r Reason, format string, args ...any) error {
	return &abuseError{reason: r, err: connErr(http2.ErrCodeEnhanceYourCalm, format, args...)}
}

func connErr(code http2.ErrCode, format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{http2.ConnectionError(code)}, args...)...)
}

func (c *h2conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.handleData(f)
	case *http2.MetaHeadersFrame:
		return c.handleHeaders(f)
	case *http2.SettingsFrame:
		return c.handleSettings(f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.pingSent.Store(0)
			return nil
		}
		data := f.Data
		c.queueCtrl(func() error { return c.wfr.WritePing(true, data) })
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		s := c.streams[f.StreamID]
		if s != nil {
			if !c.client && !s.responded {
				c.earlyResets++
			}
			s.resetLocked(&ResetError{Code: f.ErrCode, Remote: true})
		}
		err := c.checkEarlyResetsLocked()
		c.mu.Unlock()
		return err
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.goingAway = true
		for id, s := range c.streams {
			if id > f.LastStreamID && id%2 == 1 == c.client {
				s.resetLocked(&ResetError{Code: http2.ErrCodeRefusedStream, Remote: true})
			}
		}
		c.mu.Unlock()
		if f.ErrCode != http2.ErrCodeNo {
			c.log.Debug("peer sent GOAWAY", "code", f.ErrCode.String(), "debug", string(f.DebugData()))
		}
	case *http2.PushPromiseFrame:
		return connErr(http2.ErrCodeProtocol, "PUSH_PROMISE though push is disabled")
	}
	// PRIORITY and unknown frame types are ignored (RFC 9113 §5.5).
	return nil
}

func (c *h2conn) handleData(f *http2.DataFrame) error {
	b := getChunk(len(f.Data()))
	copy(b.b, f.Data())
	return c.deliverData(f.StreamID, int64(f.Length), b, f.StreamEnded())
}

// readDataFast reads the payload of an unpadded DATA frame whose header was consumed straight
// into a pooled chunk: the only copy between TLS and the destination is TLS's own.
func (c *h2conn) readDataFast(sid uint32, length int, end bool) error {
	b := getChunk(length)
	if _, err := io.ReadFull(c.br, b.b); err != nil {
		putChunk(b)
		return err
	}
	return c.deliverData(sid, int64(length), b, end)
}

// deliverData accounts a DATA frame of size bytes on the wire (padding included) whose payload
// is data (a pooled chunk, now owned here) and queues it on its stream.
func (c *h2conn) deliverData(sid uint32, size int64, data *chunk, end bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if size > c.recvAvail {
		putChunk(data)
		return connErr(http2.ErrCodeFlowControl, "peer overran the connection window")
	}
	c.recvAvail -= size
	s := c.streams[sid]
	if s == nil && c.idleLocked(sid) {
		// RFC 9113 §5.1: DATA on a stream the peer never opened is a connection error; crediting
		// it back would let a peer stream bytes through the read loop on no stream at all.
		putChunk(data)
		return connErr(http2.ErrCodeProtocol, "DATA on idle stream %d", sid)
	}
	if s == nil || s.recvEOF || s.reset != nil {
		// A stream we already closed: the bytes are nobody's, give them back at once.
		putChunk(data)
		c.creditConnLocked(size)
		if s != nil && s.recvEOF && s.reset == nil {
			s.resetLocked(&ResetError{Code: http2.ErrCodeStreamClosed})
			c.queueRST(sid, http2.ErrCodeStreamClosed)
		}
		return nil
	}
	if size > s.recvAvail {
		putChunk(data)
		c.creditConnLocked(size)
		s.resetLocked(&ResetError{Code: http2.ErrCodeFlowControl})
		c.queueRST(sid, http2.ErrCodeFlowControl)
		return nil
	}
	s.recvAvail -= size
	if pad := size - int64(len(data.b)); pad > 0 {
		c.creditConnLocked(pad)
		s.creditLocked(pad)
	}
	if s.sink != nil && !s.sinkBusy && s.rq.len() == 0 && len(data.b) > 0 {
		// The stream's relay is idle on its TCP destination: hand the payload to the socket
		// from here if it takes it without blocking, sparing a goroutine wake-up per frame
		// (that hop is most of HBONE's request/response latency over plain TLS).
		s.sinkBusy = true
		c.mu.Unlock()
		n := c.sinkW.write(s.sink, data.b)
		c.mu.Lock()
		s.sinkBusy = false
		if n > 0 {
			s.sunk += int64(n)
			s.creditLocked(int64(n))
			c.creditConnLocked(int64(n))
		}
		switch {
		case s.reset != nil:
			c.creditConnLocked(int64(len(data.b) - n))
			putChunk(data)
		case n == len(data.b):
			putChunk(data)
		default:
			s.rq.pushFrom(data, n)
		}
	} else {
		s.rq.push(data)
	}
	s.lastActive.Store(time.Now().UnixNano())
	if end {
		s.recvEOF = true
		c.maybeRemoveLocked(s)
	}
	s.cond.Broadcast()
	return c.checkBuffersLocked(s)
}

// idleLocked says whether sid names a stream the peer could not have opened yet (RFC 9113 §5.1).
func (c *h2conn) idleLocked(sid uint32) bool {
	if c.client {
		return sid%2 == 0 || sid >= c.nextID
	}
	return sid%2 == 0 || sid > c.lastPeerID
}

// checkBuffersLocked holds the memory of queued data to its budgets: a stream over its own is
// reset, a peer over its share of the node cut ("Hostile peers" #1). Flow control alone bounds
// bytes, not the memory they sit in.
func (c *h2conn) checkBuffersLocked(s *Stream) error {
	if c.peerBuf != nil && c.maxPeerBuf > 0 {
		if held := c.peerBuf.Load(); held > c.maxPeerBuf {
			return abuse(ReasonPeerBuffer, "peer's queued data holds %d bytes, over its %d", held, c.maxPeerBuf)
		}
	}
	if c.maxStreamBuf > 0 && s.rq.mem > c.maxStreamBuf && s.reset == nil {
		held := s.rq.mem
		s.resetLocked(&ResetError{Code: http2.ErrCodeEnhanceYourCalm})
		c.queueRST(s.id, http2.ErrCodeEnhanceYourCalm)
		if c.counters != nil {
			c.counters.add(ReasonStreamBuffer)
		}
		c.log.Warn("HBONE stream cut", "stream", s.id, "reason", ReasonStreamBuffer.String(), "held", held, "limit", c.maxStreamBuf)
	}
	return nil
}

// checkEarlyResetsLocked ends a connection whose peer resets most of its streams before they are
// answered (CVE-2023-44487, "rapid reset"), as Envoy does: once more than maxEarlyResets, and
// over half of all streams opened. An honest client resets a stream before its response only
// when its caller gives up.
func (c *h2conn) checkEarlyResetsLocked() error {
	if c.maxEarlyResets > 0 && c.earlyResets > c.maxEarlyResets && 2*c.earlyResets > c.opened {
		return abuse(ReasonRapidReset, "peer reset or overran %d of %d streams before their response", c.earlyResets, c.opened)
	}
	return nil
}

func (c *h2conn) handleHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	s := c.streams[id]
	if s != nil {
		// Response headers (client) or trailers (either side).
		if s.resp == nil && c.client && !s.respDone {
			s.resp = f
			s.respDone = true
			close(s.respReady)
		}
		if f.StreamEnded() {
			s.recvEOF = true
			c.maybeRemoveLocked(s)
		}
		s.cond.Broadcast()
		c.mu.Unlock()
		return nil
	}
	if c.client || id%2 == 0 || id <= c.lastPeerID {
		c.mu.Unlock()
		if c.client || id%2 == 0 {
			return connErr(http2.ErrCodeProtocol, "HEADERS on unknown stream %d", id)
		}
		return nil // a stream we already finished: late trailers
	}
	c.lastPeerID = id
	c.opened++
	if !c.notAfter.IsZero() && !time.Now().Before(c.notAfter) {
		c.mu.Unlock()
		c.queueRST(id, http2.ErrCodeRefusedStream)
		return &abuseError{reason: ReasonCertExpired, err: connErr(http2.ErrCodeNo, "peer certificate expired at %v", c.notAfter)}
	}
	if c.goingAway {
		c.mu.Unlock()
		c.queueRST(id, http2.ErrCodeRefusedStream)
		return nil
	}
	// Handlers, not map entries: a stream the peer reset has left the map while its handler may
	// still be dialing, so counting the map let rapid resets run 10,728 handlers at once.
	overPeer := false
	if c.peerHandlers != nil && c.peerHandlers.Add(1) > c.maxPeerHandlers {
		c.peerHandlers.Add(-1)
		overPeer = true
	}
	if overPeer || len(c.streams) >= c.maxPeerStreams || c.handlers >= c.maxPeerStreams {
		var err error
		if !overPeer {
			if c.peerHandlers != nil {
				c.peerHandlers.Add(-1)
			}
			// The connection's cap is advertised (SETTINGS): a peer over it is abusing, as
			// with rapid resets. The peer's bound is not, so it is only refused.
			c.earlyResets++
			err = c.checkEarlyResetsLocked()
		}
		c.mu.Unlock()
		if c.counters != nil {
			c.counters.add(ReasonTooManyStreams)
		}
		c.log.Debug("HBONE stream refused", "stream", id, "reason", ReasonTooManyStreams.String(), "limit", c.maxPeerStreams, "peer_limit", c.maxPeerHandlers)
		c.queueRST(id, http2.ErrCodeRefusedStream)
		return err
	}
	s = c.newStreamLocked(id)
	s.req = f
	if f.StreamEnded() {
		s.recvEOF = true
	}
	c.handlers++
	c.mu.Unlock()
	c.onStream(s)
	return nil
}

// handlerDone gives back the handler slot of a stream (server side).
func (c *h2conn) handlerDone() {
	c.mu.Lock()
	c.handlers--
	c.mu.Unlock()
	if c.peerHandlers != nil {
		c.peerHandlers.Add(-1)
	}
}

func (c *h2conn) handleSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	var tableSize *uint32
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		switch st.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - c.peerStreamWindow
			c.peerStreamWindow = int64(st.Val)
			for _, s := range c.streams {
				s.sendWindow += delta
				if s.sendWindow > 1<<31-1 {
					return connErr(http2.ErrCodeFlowControl, "stream window overflow")
				}
				s.cond.Broadcast()
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = st.Val
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = st.Val
		case http2.SettingHeaderTableSize:
			v := st.Val
			tableSize = &v
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.queueCtrl(func() error {
		if tableSize != nil {
			c.henc.SetMaxDynamicTableSizeLimit(*tableSize)
		}
		return c.wfr.WriteSettingsAck()
	})
	return nil
}

// resetStream resets a stream locally (a stream-level protocol error of the peer).
func (c *h2conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		s.resetLocked(&ResetError{Code: code})
	}
	c.mu.Unlock()
	c.queueRST(id, code)
}
