package tunnel

import (
	"fmt"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The write path. Every frame goes out with wmu held; the read loop and stream readers never
// take wmu, they queue control frames that the next writer (or ctrlLoop) drains.

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
	c.writeStart.Store(time.Now().UnixNano())
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
	c.writeStart.Store(0)
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
//
// A peer that makes us queue more than maxQueuedControl (PINGs it never reads the ACKs of) is
// flagged, and cut by the read loop or keepalive: queueCtrl may run under mu, where closing is
// not allowed.
func (c *h2conn) queueCtrl(f func() error) {
	c.ctrlMu.Lock()
	if len(c.ctrl) >= maxQueuedControl {
		c.ctrlMu.Unlock()
		c.ctrlOverflow.Store(true)
		return
	}
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

// writeDataLocked writes one DATA frame. The header is written by hand so the payload goes from
// the caller's buffer to the TLS writer without the copy Framer.WriteData makes.
func (c *h2conn) writeDataLocked(id uint32, p []byte, end bool) error {
	// The connection's own header buffer (writes are serialized): a local one would escape to
	// the heap through bufio.Writer, an allocation per frame.
	hdr := &c.dataHdr
	n := len(p)
	hdr[0], hdr[1], hdr[2] = byte(n>>16), byte(n>>8), byte(n)
	hdr[3], hdr[4] = byte(http2.FrameData), 0
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

func (c *h2conn) queueRST(id uint32, code http2.ErrCode) {
	c.queueCtrl(func() error { return c.wfr.WriteRSTStream(id, code) })
}
