package tunnel

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The HTTP/2 layer is built on x/net/http2's Framer rather than its Transport and Server: those
// write through a fixed 4 KiB buffer, chunk handler writes into 4 KiB DATA frames and hop
// through a serve goroutine per frame (golang/go#47840), which caps one stream far below what
// TLS alone carries. HBONE needs only CONNECT streams, so a small engine with large windows,
// 1 MiB frames and write coalescing replaces them (DESIGN §3).
const (
	streamWindow    = 4 << 20  // receive window per stream
	connWindow      = 16 << 20 // receive window per connection
	maxFrameSize    = 1 << 20  // largest DATA frame we accept
	maxHeaderList   = 16 << 10 // largest header list we accept (SETTINGS_MAX_HEADER_LIST_SIZE)
	writeBufferSize = 256 << 10
	// Small on purpose: bufio reads straight into a payload chunk larger than its buffer, so
	// big DATA payloads bypass it.
	readBufferSize = 32 << 10
	frameHeaderLen = 9
	// DATA payloads at least this big are written straight to TLS rather than copied into bw.
	directWriteMin = 32 << 10

	initialPeerWindow = 65535 // RFC 9113 §6.9.2 default before the peer's SETTINGS
	initialPeerFrame  = 16384 // RFC 9113 §4.2 default
)

const clientPreface = http2.ClientPreface

// ErrConnClosed is returned by streams of a connection that closed or went away.
var ErrConnClosed = errors.New("tunnel: HTTP/2 connection closed")

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

// h2conn is one HTTP/2 connection over an established TLS session, client or server side.
//
// Concurrency: one reader goroutine owns rfr and never blocks on a write: frames it must send
// (SETTINGS ACK, PING ACK, WINDOW_UPDATE, RST_STREAM) go to the ctrl queue, which whoever holds
// wmu drains. This is what keeps two peers that both push bulk data from deadlocking on full
// TCP buffers. Writers take wmu; the last writer out flushes, so concurrent streams share
// syscalls. mu guards stream state and flow-control windows; never take wmu while holding mu.
type h2conn struct {
	nc     net.Conn
	client bool
	log    *slog.Logger
	batch  *batchConn    // under the TLS connection, if any: gathers records of bulk writes
	br     *bufio.Reader // read loop only
	rfr    *http2.Framer // read loop only

	wmu     sync.Mutex
	bw      *bufio.Writer
	wfr     *http2.Framer
	henc    *hpack.Encoder
	hbuf    bytes.Buffer
	werr    error
	pending atomic.Int32 // writers waiting for or holding wmu

	ctrlMu sync.Mutex
	ctrl   []func() error // run with wmu held

	mu               sync.Mutex
	streams          map[uint32]*Stream
	nextID           uint32 // client: next stream ID to open
	lastPeerID       uint32 // server: highest stream ID the peer opened
	sendWindow       int64  // what the peer lets us send on the connection
	peerStreamWindow int64
	peerMaxFrame     uint32
	peerMaxStreams   uint32
	recvAvail        int64 // what the peer may still send us on the connection
	recvUnacked      int64 // consumed, not yet returned with WINDOW_UPDATE
	connBlocked      map[*Stream]struct{}
	goingAway        bool
	closed           bool
	closeErr         error
	reserved         int       // client: slots promised to callers of the pool
	idleSince        time.Time // when the last stream ended (zero while streams are open)
	maxPeerStreams   int       // server: refuse streams above this
	freshUntil       time.Time // client: no new streams after this (zero: no bound)

	lastRead atomic.Int64 // unix nanos of the last frame read
	pingSent atomic.Int64 // unix nanos of an unacknowledged keepalive PING, 0 if none
	done     chan struct{}
	kick     chan struct{} // wakes ctrlLoop
	settings chan struct{} // closed when the peer's first SETTINGS arrived
	counters *Counters     // where protocol errors are counted

	onStream     func(*Stream) // server: a new request stream
	onStreamDone func(*h2conn) // a stream left the connection
	onClose      func(*h2conn) // the connection closed
}

func newH2Conn(nc net.Conn, client bool, log *slog.Logger) *h2conn {
	c := &h2conn{
		nc:               nc,
		client:           client,
		log:              log,
		streams:          map[uint32]*Stream{},
		nextID:           1,
		sendWindow:       initialPeerWindow,
		peerStreamWindow: initialPeerWindow,
		peerMaxFrame:     initialPeerFrame,
		peerMaxStreams:   1<<31 - 1,
		recvAvail:        connWindow,
		connBlocked:      map[*Stream]struct{}{},
		idleSince:        time.Now(),
		done:             make(chan struct{}),
		kick:             make(chan struct{}, 1),
		settings:         make(chan struct{}),
	}
	c.bw = bufio.NewWriterSize(nc, writeBufferSize)
	c.wfr = http2.NewFramer(c.bw, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.br = bufio.NewReaderSize(nc, readBufferSize)
	c.rfr = http2.NewFramer(nil, c.br)
	c.rfr.SetMaxReadFrameSize(maxFrameSize)
	// Decode header lists up to 4× our limit so parseConnect can answer 431 instead of the
	// connection dying of a COMPRESSION_ERROR on one long value.
	c.rfr.MaxHeaderListSize = 4 * maxHeaderList
	c.rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.lastRead.Store(time.Now().UnixNano())
	return c
}

// handshake exchanges the connection preface and our SETTINGS; the peer's SETTINGS are read
// by the read loop. The server reads the client preface first.
func (c *h2conn) handshake(maxStreams uint32) error {
	if !c.client {
		buf := make([]byte, len(clientPreface))
		if _, err := io.ReadFull(c.br, buf); err != nil {
			return fmt.Errorf("read client preface: %w", err)
		}
		if string(buf) != clientPreface {
			return errBadPreface
		}
	}
	return c.write(func() error {
		if c.client {
			if _, err := c.bw.WriteString(clientPreface); err != nil {
				return err
			}
		}
		settings := []http2.Setting{
			{ID: http2.SettingInitialWindowSize, Val: streamWindow},
			{ID: http2.SettingMaxFrameSize, Val: maxFrameSize},
			{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
		}
		if c.client {
			settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
		} else {
			settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: maxStreams})
		}
		if err := c.wfr.WriteSettings(settings...); err != nil {
			return err
		}
		return c.wfr.WriteWindowUpdate(0, connWindow-initialPeerWindow)
	})
}

var errBadPreface = errors.New("tunnel: bad HTTP/2 client preface")

// write runs fn with the write side held, then flushes unless another writer is queued behind
// it (that one will flush). Control frames queued by the reader go out first.
func (c *h2conn) write(fn func() error) error {
	err := c.beginWrite()
	if err == nil {
		err = fn()
	}
	return c.endWrite(err)
}

// writeData is write for one DATA frame, without the closure write would allocate on the
// per-frame path.
func (c *h2conn) writeData(id uint32, p []byte, end bool) error {
	err := c.beginWrite()
	if err == nil {
		err = c.writeDataLocked(id, p, end)
	}
	return c.endWrite(err)
}

// beginWrite takes the write side and sends queued control frames; endWrite must follow.
func (c *h2conn) beginWrite() error {
	c.pending.Add(1)
	c.wmu.Lock()
	err := c.werr
	if err == nil {
		err = c.drainCtrlLocked()
	}
	return err
}

// endWrite flushes if no other writer is queued, releases the write side, and closes the
// connection if err (or the flush) failed.
func (c *h2conn) endWrite(err error) error {
	if c.pending.Add(-1) == 0 && err == nil {
		err = c.drainCtrlLocked()
		if err == nil {
			err = c.bw.Flush()
		}
	}
	if err != nil && c.werr == nil {
		c.werr = err
	}
	c.wmu.Unlock()
	if err != nil {
		c.closeWith(fmt.Errorf("write: %w", err))
		return err
	}
	return nil
}

func (c *h2conn) drainCtrlLocked() error {
	for {
		c.ctrlMu.Lock()
		q := c.ctrl
		c.ctrl = nil
		c.ctrlMu.Unlock()
		if len(q) == 0 {
			return nil
		}
		for _, f := range q {
			if err := f(); err != nil {
				return err
			}
		}
	}
}

// queueCtrl queues a frame write without ever blocking, for the read loop and stream readers
// (which may hold mu). Writers drain the queue; ctrlLoop writes it when no writer comes along.
func (c *h2conn) queueCtrl(f func() error) {
	c.ctrlMu.Lock()
	c.ctrl = append(c.ctrl, f)
	c.ctrlMu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// ctrlLoop writes queued control frames; it may block on a full socket, the read loop may not.
func (c *h2conn) ctrlLoop() {
	for {
		select {
		case <-c.done:
			return
		case <-c.kick:
			if c.write(func() error { return nil }) != nil {
				return
			}
		}
	}
}

// writeData writes one DATA frame. The header is written by hand so the payload goes from the
// caller's buffer to the TLS writer without the copy Framer.WriteData makes.
func (c *h2conn) writeDataLocked(id uint32, p []byte, end bool) error {
	var hdr [9]byte
	n := len(p)
	hdr[0], hdr[1], hdr[2] = byte(n>>16), byte(n>>8), byte(n)
	hdr[3] = byte(http2.FrameData)
	if end {
		hdr[4] = byte(http2.FlagDataEndStream)
	}
	hdr[5], hdr[6], hdr[7], hdr[8] = byte(id>>24)&0x7f, byte(id>>16), byte(id>>8), byte(id)
	if _, err := c.bw.Write(hdr[:]); err != nil {
		return err
	}
	if len(p) >= directWriteMin {
		// Copying a bulk payload into bw costs more than the small extra TLS record for the
		// header (and any queued control frames) that flushing first costs. The records of both
		// leave in one syscall when the TLS connection sits on a batchConn.
		if c.batch != nil {
			c.batch.begin()
		}
		err := c.bw.Flush()
		if err == nil {
			_, err = c.nc.Write(p)
		}
		if c.batch != nil {
			if berr := c.batch.end(); err == nil {
				err = berr
			}
		}
		return err
	}
	_, err := c.bw.Write(p)
	return err
}

func (c *h2conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) error {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	c.mu.Lock()
	limit := int(c.peerMaxFrame)
	c.mu.Unlock()
	first := true
	for first || len(block) > 0 {
		chunk := block[:min(len(block), limit)]
		block = block[len(chunk):]
		var err error
		if first {
			err = c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: end, EndHeaders: len(block) == 0})
		} else {
			err = c.wfr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			return err
		}
		first = false
	}
	return nil
}

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
			c.goAway(code, err)
			return
		}
	}
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
			s.resetLocked(&ResetError{Code: f.ErrCode, Remote: true})
		}
		c.mu.Unlock()
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
		n := writeNonBlocking(s.sink, data.b)
		c.mu.Lock()
		s.sinkBusy = false
		if n > 0 {
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
	if end {
		s.recvEOF = true
		c.maybeRemoveLocked(s)
	}
	s.cond.Broadcast()
	return nil
}

func (c *h2conn) handleHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	s := c.streams[id]
	if s != nil {
		// Response headers (client) or trailers (either side).
		if s.resp == nil && c.client {
			s.resp = f
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
	if c.goingAway || len(c.streams) >= c.maxPeerStreams {
		c.mu.Unlock()
		c.queueRST(id, http2.ErrCodeRefusedStream)
		return nil
	}
	s = c.newStreamLocked(id)
	s.req = f
	if f.StreamEnded() {
		s.recvEOF = true
	}
	c.mu.Unlock()
	c.onStream(s)
	return nil
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

func (c *h2conn) queueRST(id uint32, code http2.ErrCode) {
	c.queueCtrl(func() error { return c.wfr.WriteRSTStream(id, code) })
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

func (c *h2conn) newStreamLocked(id uint32) *Stream {
	s := &Stream{c: c, id: id, sendWindow: c.peerStreamWindow, recvAvail: streamWindow, respReady: make(chan struct{})}
	s.cond = sync.NewCond(&c.mu)
	c.streams[id] = s
	c.idleSince = time.Time{}
	return s
}

// maybeRemoveLocked drops a stream that is finished both ways (or reset) from the connection.
// Bytes it never read go back to the connection window, so a dead stream cannot shrink it.
func (c *h2conn) maybeRemoveLocked(s *Stream) {
	if c.streams[s.id] != s {
		return
	}
	if s.reset == nil && !(s.recvEOF && s.sentEnd) {
		return
	}
	delete(c.streams, s.id)
	delete(c.connBlocked, s)
	if s.reset != nil && s.rq.len() > 0 {
		c.creditConnLocked(int64(s.rq.drop()))
	}
	if len(c.streams) == 0 {
		c.idleSince = time.Now()
	}
	if c.onStreamDone != nil {
		go c.onStreamDone(c)
	}
}

// goAway tells the peer why the connection ends, then closes it.
func (c *h2conn) goAway(code http2.ErrCode, err error) {
	c.mu.Lock()
	last := c.lastPeerID
	c.mu.Unlock()
	c.log.Debug("closing HTTP/2 connection", "code", code.String(), "err", err)
	if code != http2.ErrCodeNo && c.counters != nil {
		c.counters.add(ReasonProtocol)
	}
	msg := []byte(err.Error())
	if len(msg) > 256 {
		msg = msg[:256]
	}
	c.queueCtrl(func() error { return c.wfr.WriteGoAway(last, code, msg) })
	c.closeWith(err)
}

// shutdown stops new streams (GOAWAY NO_ERROR) and lets open ones finish.
func (c *h2conn) shutdown() {
	c.mu.Lock()
	c.goingAway = true
	last := c.lastPeerID
	c.mu.Unlock()
	c.queueCtrl(func() error { return c.wfr.WriteGoAway(last, http2.ErrCodeNo, nil) })
}

// closeWith closes the connection and fails every stream with err.
func (c *h2conn) closeWith(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.closeErr = err
	for _, s := range c.streams {
		if s.reset == nil {
			s.reset = fmt.Errorf("%w: %w", ErrConnClosed, err)
		}
		s.cond.Broadcast()
	}
	clear(c.streams)
	clear(c.connBlocked)
	c.mu.Unlock()
	// Best effort, bounded: a GOAWAY queued by goAway goes out unless a writer is stuck.
	if c.wmu.TryLock() {
		c.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if c.werr == nil && c.drainCtrlLocked() == nil {
			c.bw.Flush()
		}
		c.werr = ErrConnClosed
		c.wmu.Unlock()
	}
	c.nc.Close()
	close(c.done)
	if c.onClose != nil {
		c.onClose(c)
	}
}

// Close closes the connection at once.
func (c *h2conn) Close() error {
	c.goAway(http2.ErrCodeNo, ErrConnClosed)
	return nil
}

// load returns open streams plus reserved slots.
func (c *h2conn) load() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams) + c.reserved
}

// keepalive sends a PING when nothing was read for interval, closes the connection when one
// goes unanswered for timeout, and closes it once it carried no stream for idle. It returns when
// the connection closes.
func (c *h2conn) keepalive(interval, timeout, idle time.Duration) {
	t := time.NewTicker(min(interval, timeout, idle) / 4)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			c.mu.Lock()
			since := c.idleSince
			c.mu.Unlock()
			if !since.IsZero() && now.Sub(since) >= idle && c.load() == 0 {
				c.goAway(http2.ErrCodeNo, fmt.Errorf("idle for %v", idle))
				return
			}
			if sent := c.pingSent.Load(); sent != 0 {
				if now.Sub(time.Unix(0, sent)) > timeout {
					c.goAway(http2.ErrCodeNo, fmt.Errorf("keepalive PING unanswered for %v", timeout))
					return
				}
				continue
			}
			if now.Sub(time.Unix(0, c.lastRead.Load())) >= interval {
				c.pingSent.Store(now.UnixNano())
				c.queueCtrl(func() error { return c.wfr.WritePing(false, [8]byte{'a', 'm', 'e', 's', 'h'}) })
			}
		}
	}
}
