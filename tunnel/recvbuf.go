package tunnel

import (
	"math/bits"
	"net"
	"sync"
)

// chunk is a pooled buffer holding one DATA frame's payload in b.
type chunk struct {
	b   []byte
	cls int
}

// recvQueue holds a stream's received, unread payload as the chunks the read loop filled
// straight from the TLS connection, so a relay writes them out without another copy.
// It is guarded by the connection's mu.
type recvQueue struct {
	chunks []*chunk
	off    int // read offset into chunks[0]
	n      int // unread bytes in all
}

func (q *recvQueue) len() int { return q.n }

func (q *recvQueue) push(c *chunk) {
	if len(c.b) == 0 {
		putChunk(c)
		return
	}
	q.chunks = append(q.chunks, c)
	q.n += len(c.b)
}

// pushFrom queues c, of which the first off bytes were already delivered, on an empty queue.
func (q *recvQueue) pushFrom(c *chunk, off int) {
	q.chunks = append(q.chunks[:0], c)
	q.off = off
	q.n = len(c.b) - off
}

// read copies into p and releases the chunks it used up.
func (q *recvQueue) read(p []byte) int {
	total := 0
	for len(p) > 0 && len(q.chunks) > 0 {
		c := q.chunks[0]
		k := copy(p, c.b[q.off:])
		p = p[k:]
		total += k
		q.off += k
		if q.off == len(c.b) {
			putChunk(c)
			q.chunks[0] = nil
			q.chunks = q.chunks[1:]
			q.off = 0
		}
	}
	q.n -= total
	return total
}

// take moves every unread chunk into out (whose backing array the caller reuses), as buffers
// for one writev in bufs; the caller releases out with putChunks once they are written.
func (q *recvQueue) take(out []*chunk, bufs net.Buffers) ([]*chunk, net.Buffers, int) {
	n := q.n
	for i, c := range q.chunks {
		b := c.b
		if i == 0 {
			b = b[q.off:]
		}
		out = append(out, c)
		bufs = append(bufs, b)
		q.chunks[i] = nil
	}
	q.chunks, q.off, q.n = q.chunks[:0], 0, 0
	return out, bufs, n
}

// drop releases everything unread and returns how many bytes that was.
func (q *recvQueue) drop() int {
	n := q.n
	for i, c := range q.chunks {
		putChunk(c)
		q.chunks[i] = nil
	}
	q.chunks, q.off, q.n = nil, 0, 0
	return n
}

// Chunk pools by power-of-two size class, 4 KiB to 1 MiB (maxFrameSize).
const (
	minChunkShift = 12
	maxChunkShift = 20
)

var chunkPools [maxChunkShift - minChunkShift + 1]sync.Pool

func chunkClass(n int) int {
	if n <= 1<<minChunkShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minChunkShift
}

// getChunk returns a chunk with len(b) == n (n ≤ maxFrameSize).
func getChunk(n int) *chunk {
	cls := chunkClass(n)
	if c, ok := chunkPools[cls].Get().(*chunk); ok {
		c.b = c.b[:n]
		return c
	}
	return &chunk{b: make([]byte, n, 1<<(cls+minChunkShift)), cls: cls}
}

// putChunk returns c to its pool.
func putChunk(c *chunk) {
	c.b = c.b[:0]
	chunkPools[c.cls].Put(c)
}

func putChunks(cs []*chunk) {
	for _, c := range cs {
		putChunk(c)
	}
}
