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
	"unique"
)

// String returns the canonical copy of s. Canonical copies are kept only while something holds
// them (package unique), so interning a value that is never seen again costs nothing lasting.
func String(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

// Bytes is String of b.
func Bytes(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unique.Make(string(b)).Value()
}

// labelCap bounds one generation of the label-set cache: when a generation holds this many sets
// a new one starts and the sets of the one before it are kept only while they are looked up
// again. The bound keeps the cache small whatever the cluster's churn (each rollout of a
// Deployment makes a new set: its pod-template-hash), at the price of a second copy of a set
// that is still in use when its generation is dropped.
const labelCap = 1 << 16

var labelSets = struct {
	sync.Mutex
	cur, prev map[string]map[string]string
}{cur: map[string]map[string]string{}}

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
	if c, ok := labelSets.cur[key]; ok {
		return c
	}
	c, ok := labelSets.prev[key]
	if !ok {
		c = make(map[string]string, len(m))
		for k, v := range m {
			c[unique.Make(k).Value()] = unique.Make(v).Value()
		}
	}
	if len(labelSets.cur) >= labelCap {
		labelSets.prev, labelSets.cur = labelSets.cur, make(map[string]map[string]string, len(labelSets.cur))
	}
	labelSets.cur[key] = c
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
