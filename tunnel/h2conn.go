package tunnel

import (
	"bufio"
	"bytes"
	"context"
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

	// maxQueuedControl bounds control frames (PING and SETTINGS ACKs, WINDOW_UPDATE,
	// RST_STREAM) queued for a peer that does not read what we send: x/net's server stops at the
	// same 10,000. One costs a closure of ~64 bytes, so the queue stays under 1 MiB; before the
	// bound, 2M PINGs from a peer that never read queued 55 MiB.
	maxQueuedControl = 10000
)

const clientPreface = http2.ClientPreface

// ErrConnClosed is returned by streams of a connection that closed or went away.
var ErrConnClosed = errors.New("tunnel: HTTP/2 connection closed")

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
	dataHdr [9]byte  // writeDataLocked's frame header, guarded as bw is
	sinkW   nbWriter // the read loop's writes straight to a stream's TCP destination
	wfr     *http2.Framer
	henc    *hpack.Encoder
	hbuf    bytes.Buffer
	werr    error
	pending atomic.Int32 // writers waiting for or holding wmu

	ctrlMu       sync.Mutex
	ctrl         []func() error // run with wmu held
	ctrlOverflow atomic.Bool    // the peer let more than maxQueuedControl pile up: cut it
	writeStart   atomic.Int64   // unix nanos when the write in progress took wmu, 0 if none
	writeTimeout time.Duration  // a write stuck longer closes the connection; 0: no bound

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

	// Server side: what one peer may make us hold (ServerConfig, "Hostile peers").
	ctx      context.Context // lifecycle of the connection's streams: cancelled by closeWith
	cancel   context.CancelFunc
	handlers int // stream handlers running: counted against maxPeerStreams until they return
	// server: the handlers of all the peer's connections (its source IP), and their bound
	peerHandlers    *atomic.Int64
	maxPeerHandlers int64
	opened          int           // streams the peer opened
	earlyResets     int           // streams the peer reset before we answered, or we refused for the handler cap
	maxEarlyResets  int           // more than this, and over half of opened: GOAWAY ENHANCE_YOUR_CALM
	maxStreamBuf    int           // memory one stream's queued data may hold; 0: no bound
	peerBuf         *atomic.Int64 // memory the queued data of every connection of this peer holds
	maxPeerBuf      int64
	notAfter        time.Time // the peer certificate's expiry: no stream after it
	expired         bool      // past notAfter: draining, closed when its last stream ends
	linger          bool      // closing for abuse: let the GOAWAY reach the peer before the socket goes

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

// handshake sends the client preface (client) and our SETTINGS; the peer's SETTINGS are read
// by the read loop. The server has read the client preface before (readPreface), so that the
// connection's buffers are allocated only for a peer that sent one.
func (c *h2conn) handshake(maxStreams uint32) error {
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

func (c *h2conn) newStreamLocked(id uint32) *Stream {
	s := &Stream{c: c, id: id, sendWindow: c.peerStreamWindow, recvAvail: streamWindow, respReady: make(chan struct{})}
	s.cond = sync.NewCond(&c.mu)
	s.rq.peer = c.peerBuf
	s.lastActive.Store(time.Now().UnixNano())
	if c.ctx != nil {
		s.ctx, s.cancel = context.WithCancel(c.ctx)
	}
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
	if s.reset != nil && (s.rq.len() > 0 || s.rq.mem > 0) {
		c.creditConnLocked(int64(s.rq.drop()))
	}
	if len(c.streams) == 0 {
		c.idleSince = time.Now()
	}
	if c.onStreamDone != nil {
		go c.onStreamDone(c)
	}
}

// goAway tells the peer why the connection ends, then closes it. An error code other than
// NO_ERROR is counted as ReasonProtocol.
func (c *h2conn) goAway(code http2.ErrCode, err error) {
	r := ReasonNone
	if code != http2.ErrCodeNo {
		r = ReasonProtocol
	}
	c.goAwayFor(code, r, err)
}

// goAwayFor is goAway counting reason r (none for ReasonNone), logged where the operator sees it.
func (c *h2conn) goAwayFor(code http2.ErrCode, r Reason, err error) {
	c.mu.Lock()
	last := c.lastPeerID
	c.mu.Unlock()
	if r != ReasonNone && r != ReasonProtocol {
		c.log.Warn("HBONE connection cut", "reason", r.String(), "code", code.String(), "err", err)
	} else {
		c.log.Debug("closing HTTP/2 connection", "code", code.String(), "err", err)
	}
	if r != ReasonNone && c.counters != nil {
		c.counters.add(r)
	}
	if code != http2.ErrCodeNo {
		c.mu.Lock()
		c.linger = true
		c.mu.Unlock()
	}
	msg := []byte(err.Error())
	if len(msg) > 256 {
		msg = msg[:256]
	}
	c.queueCtrl(func() error { return c.wfr.WriteGoAway(last, code, msg) })
	c.closeWith(err)
}

// sendAway ends a connection that has served no stream: GOAWAY NO_ERROR with last stream 0 (the
// peer may retry every request it sent elsewhere), written before the socket closes, with
// the peer's input drained so that the close does not reset it (closeWith's linger).
func (c *h2conn) sendAway(err error) {
	c.mu.Lock()
	c.linger = true
	c.mu.Unlock()
	c.queueCtrl(func() error { return c.wfr.WriteGoAway(0, http2.ErrCodeNo, []byte(err.Error())) })
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
	linger := c.linger
	for _, s := range c.streams {
		if s.reset == nil {
			s.reset = fmt.Errorf("%w: %w", ErrConnClosed, err)
		}
		// Nobody will read what is queued: let it go now, not when the handler returns.
		s.rq.drop()
		if s.cancel != nil {
			s.cancel() // wakes the handler's dial and relay (serveStream)
		}
		s.cond.Broadcast()
	}
	clear(c.streams)
	clear(c.connBlocked)
	if c.cancel != nil {
		c.cancel()
	}
	c.mu.Unlock()
	if linger && c.batch != nil {
		// Closing a socket with unread input sends RST, and the peer's kernel then discards
		// the GOAWAY it has not read yet: write it, send FIN, discard input for a moment, then
		// close, as x/net's server does after a GOAWAY for abuse. Bounded by the deadlines.
		raw := c.batch.Conn
		raw.SetDeadline(time.Now().Add(time.Second))
		go func() {
			c.wmu.Lock()
			if c.werr == nil && c.drainCtrlLocked() == nil {
				c.bw.Flush()
			}
			c.werr = ErrConnClosed
			c.wmu.Unlock()
			if cw, ok := raw.(closeWriter); ok {
				cw.CloseWrite()
			}
			io.Copy(io.Discard, raw)
			c.nc.Close()
		}()
	} else {
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
	}
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
	tick := min(interval, timeout, idle)
	if c.writeTimeout > 0 {
		tick = min(tick, c.writeTimeout)
	}
	t := time.NewTicker(tick / 4)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			if ws := c.writeStart.Load(); ws != 0 && c.writeTimeout > 0 && now.Sub(time.Unix(0, ws)) > c.writeTimeout {
				// The peer stopped reading: a blocked write would pin the connection and every
				// stream on it for as long as the peer keeps pinging ("Hostile peers" #5).
				c.goAwayFor(http2.ErrCodeNo, ReasonWriteTimeout, fmt.Errorf("peer read nothing for %v (write made no progress)", c.writeTimeout))
				return
			}
			if c.ctrlOverflow.Load() {
				c.goAwayFor(http2.ErrCodeEnhanceYourCalm, ReasonControlFlood, fmt.Errorf("over %d control frames queued for a peer that does not read", maxQueuedControl))
				return
			}
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
