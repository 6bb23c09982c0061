package tunnel

import (
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
)

// chunk is a pooled buffer holding one DATA frame's payload in b.
type chunk struct {
	b   []byte
	cls int
}

// recvQueue holds a stream's received, unread payload as the chunks the read loop filled
// straight from the TLS connection, so a relay writes them out without another copy.
// It is guarded by the connection's mu.
//
// Flow control counts payload bytes, but a queued chunk costs its capacity (4 KiB at least)
// plus its bookkeeping: queued one per frame, 1-byte DATA frames cost ~4,100 bytes of heap per
// byte of window ("Hostile peers" #1). So small payloads are copied into the spare room of the
// last chunk, which bounds the memory to about twice the bytes, and mem — what the queue
// really holds — is charged to the stream's budget and to its peer's (peer, shared by every
// connection from one source IP), which the read loop checks.
type recvQueue struct {
	chunks []*chunk
	off    int           // read offset into chunks[0]
	n      int           // unread bytes in all
	mem    int           // memory held: the chunks' capacity plus chunkOverhead each
	peer   *atomic.Int64 // the peer's total, charged alongside mem; nil on the client side
}

// chunkOverhead is what a queued chunk costs beside its buffer: the chunk struct (a 32-byte
// size class), its slot in chunks and its share of the slice's growth, rounded up.
const chunkOverhead = 64

// coalesceMax is the largest payload copied into the last chunk's spare room rather than
// queued as its own chunk: below it, the copy costs less than a chunk's overhead and capacity.
const coalesceMax = 16 << 10

func (q *recvQueue) len() int { return q.n }

func (q *recvQueue) charge(delta int) {
	q.mem += delta
	if q.peer != nil {
		q.peer.Add(int64(delta))
	}
}

func chunkCost(c *chunk) int { return cap(c.b) + chunkOverhead }

func (q *recvQueue) push(c *chunk) {
	if len(c.b) == 0 {
		putChunk(c)
		return
	}
	q.n += len(c.b)
	if k := len(q.chunks); k > 0 && len(c.b) <= coalesceMax {
		if t := q.chunks[k-1]; cap(t.b)-len(t.b) >= len(c.b) {
			t.b = append(t.b, c.b...)
			putChunk(c)
			return
		}
	}
	q.chunks = append(q.chunks, c)
	q.charge(chunkCost(c))
}

// pushFrom queues c, of which the first off bytes were already delivered, on an empty queue.
func (q *recvQueue) pushFrom(c *chunk, off int) {
	q.chunks = append(q.chunks[:0], c)
	q.off = off
	q.n = len(c.b) - off
	q.charge(chunkCost(c))
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
			q.charge(-chunkCost(c))
			putChunk(c)
			q.chunks[0] = nil
			if len(q.chunks) == 1 {
				// Emptied: keep the slice's room, so the next frame's push does not allocate
				// (slicing the last one off would leave a slice of no capacity).
				q.chunks = q.chunks[:0]
			} else {
				q.chunks = q.chunks[1:]
			}
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
	// Taken chunks are uncharged now: they are in flight to the destination, at most one batch
	// per stream, which flow control already bounds (the window reopens only once they are out).
	q.charge(-q.mem)
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
	q.charge(-q.mem)
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
