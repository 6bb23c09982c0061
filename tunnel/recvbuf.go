package tunnel

import (
	"math/bits"
	"sync"
)

// recvQueue holds a stream's received, unread payload as the chunks the read loop filled
// straight from the TLS connection, so a relay writes them out without another copy.
// It is guarded by the connection's mu.
type recvQueue struct {
	chunks [][]byte // each a pooled buffer sliced to its payload
	off    int      // read offset into chunks[0]
	n      int      // unread bytes in all
}

func (q *recvQueue) len() int { return q.n }

func (q *recvQueue) push(b []byte) {
	if len(b) == 0 {
		putChunk(b)
		return
	}
	q.chunks = append(q.chunks, b)
	q.n += len(b)
}

// read copies into p and releases the chunks it used up.
func (q *recvQueue) read(p []byte) int {
	total := 0
	for len(p) > 0 && len(q.chunks) > 0 {
		c := q.chunks[0][q.off:]
		k := copy(p, c)
		p = p[k:]
		total += k
		q.off += k
		if q.off == len(q.chunks[0]) {
			putChunk(q.chunks[0])
			q.chunks[0] = nil
			q.chunks = q.chunks[1:]
			q.off = 0
		}
	}
	q.n -= total
	if len(q.chunks) == 0 {
		q.chunks = q.chunks[:0:0]
	}
	return total
}

// take removes every unread chunk for the caller to write (from off in the first) and then
// release with putChunks.
func (q *recvQueue) take() (chunks [][]byte, off, n int) {
	chunks, off, n = q.chunks, q.off, q.n
	q.chunks, q.off, q.n = nil, 0, 0
	return chunks, off, n
}

// drop releases everything unread and returns how many bytes that was.
func (q *recvQueue) drop() int {
	chunks, _, n := q.take()
	putChunks(chunks)
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

// getChunk returns a buffer of length n (n ≤ maxFrameSize).
func getChunk(n int) []byte {
	c := chunkClass(n)
	if b, ok := chunkPools[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(c+minChunkShift))
}

// putChunk returns a buffer from getChunk to its pool; others are left to the GC.
func putChunk(b []byte) {
	c := cap(b)
	if c < 1<<minChunkShift || c > 1<<maxChunkShift || c&(c-1) != 0 {
		return
	}
	b = b[:0]
	chunkPools[bits.Len(uint(c))-1-minChunkShift].Put(&b)
}

func putChunks(chunks [][]byte) {
	for _, b := range chunks {
		putChunk(b)
	}
}
