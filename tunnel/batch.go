package tunnel

import (
	"net"
	"sync"
)

// batchConn sits under crypto/tls and, while a bulk write is in progress, gathers the TLS
// records it produces so they leave in one write syscall instead of one per 16 KiB record
// (crypto/tls writes every record with its own Write; ztunnel gets the same effect with writev).
// Outside a batch, and during the handshake, it writes straight through.
type batchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      []byte
}

func newBatchConn(c net.Conn) *batchConn { return &batchConn{Conn: c} }

// Write buffers while batching, else writes through.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.batching {
		b.buf = append(b.buf, p...)
		b.mu.Unlock()
		return len(p), nil
	}
	b.mu.Unlock()
	return b.Conn.Write(p)
}

// begin starts gathering records.
func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// end stops gathering and writes what was gathered.
func (b *batchConn) end() error {
	b.mu.Lock()
	b.batching = false
	buf := b.buf
	b.buf = b.buf[:0]
	b.mu.Unlock()
	if len(buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(buf)
	return err
}

// CloseWrite passes half-close through to the TCP connection.
func (b *batchConn) CloseWrite() error {
	if cw, ok := b.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}
