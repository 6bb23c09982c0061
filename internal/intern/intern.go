// Package intern shares equal immutable values between the objects that hold them. Every agent
// caches every pod of the cluster; the pods of one Deployment carry the same namespace, node
// names, service account and labels, so one copy of each serves them all (measured with
// bench/scale: a Deployment's pod's labels are ~300 bytes of map and ~150 of strings, once in
// the informer's cache and once in the State).
package intern

import (
	"maps"
	"slices"
	"strings"
	"sync"
)

// String returns the canonical copy of s.
func String(s string) string {
	if s == "" {
		return ""
	}
	strs.Lock()
	defer strs.Unlock()
	if c, ok := strs.get(s); ok {
		return c
	}
	c := strings.Clone(s)
	strs.put(c, c)
	return c
}

// Bytes is String of b.
func Bytes(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	strs.Lock()
	defer strs.Unlock()
	// Map indexes by string(b) do not allocate; a call taking string(b) would.
	if c, ok := strs.cur[string(b)]; ok {
		return c
	}
	c, ok := strs.prev[string(b)]
	if !ok {
		c = string(b)
	}
	strs.put(c, c)
	return c
}

// generations is a cache of canonical values that stays bounded: when the current generation
// holds genCap entries a new one starts, and the entries of the one before are kept only while
// they are looked up again. Entries are held strongly (package unique's weak ones die at every
// collection when only the value is kept, not its handle, and sharing would last one GC cycle).
// The bound keeps the cache small whatever the cluster's churn (each rollout of a Deployment
// makes a new label set: its pod-template-hash), at the price of a second copy of a value still
// in use when its generation is dropped.
type generations[V any] struct {
	sync.Mutex
	cur, prev map[string]V
}

const genCap = 1 << 16

// get returns k's value, from the current generation or the one before (then promoted, under k:
// k must be a string the caller may give away).
func (g *generations[V]) get(k string) (V, bool) {
	if v, ok := g.cur[k]; ok {
		return v, true
	}
	v, ok := g.prev[k]
	if ok {
		g.put(k, v) // promoted: it is still in use
	}
	return v, ok
}

func (g *generations[V]) put(k string, v V) {
	if g.cur == nil || len(g.cur) >= genCap {
		g.prev, g.cur = g.cur, make(map[string]V, len(g.cur))
	}
	g.cur[k] = v
}

var (
	strs      generations[string]
	labelSets generations[map[string]string]
)

// Labels returns a map equal to m that is shared with every other caller that passed an equal
// set, with keys and values interned. The map returned must never be changed, and m is never
// kept (a caller may go on changing its own map). An empty or nil m gives nil.
func Labels(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	key := labelKey(m)
	labelSets.Lock()
	defer labelSets.Unlock()
	if c, ok := labelSets.get(key); ok {
		return c
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[String(k)] = String(v) // strs' lock under labelSets': never the other way round
	}
	labelSets.put(key, c)
	return c
}

// labelKey is an encoding of m in which equal sets, and only those, are equal: sorted entries,
// each key and value preceded by its length (label keys and values cannot hold every byte the
// API server would accept in a test's map, so no separator is assumed).
func labelKey(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
	var b strings.Builder
	n := 0
	for _, k := range keys {
		n += len(k) + len(m[k]) + 8
	}
	b.Grow(n)
	for _, k := range keys {
		writeLen(&b, len(k))
		b.WriteString(k)
		writeLen(&b, len(m[k]))
		b.WriteString(m[k])
	}
	return b.String()
}

func writeLen(b *strings.Builder, n int) {
	for n >= 0x80 {
		b.WriteByte(byte(n) | 0x80)
		n >>= 7
	}
	b.WriteByte(byte(n))
}
