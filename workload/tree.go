package workload

import (
	"bytes"
	"net/netip"
	"strings"

	"github.com/benbjohnson/immutable"
)

// The State's indexes are persistent sorted maps (benbjohnson/immutable's B+ trees, 32 entries a
// node): a State that Apply derives shares every node it does not change with its parent, and an
// entry costs its key and value in a node's array. They replaced radix trees
// (go-immutable-radix), whose nodes and leaves cost ~100-150 bytes each: nearly half the agent's
// live heap at 10,000 pods (bench/scale, heap profile after churn); a 10,000-workload State is
// 7.0 MB of heap with these, 20.8 MB with those.

// stringOrder and ipOrder order the two kinds of keys.
type stringOrder struct{}

func (stringOrder) Compare(a, b string) int { return strings.Compare(a, b) }

type ipOrder struct{}

func (ipOrder) Compare(a, b [16]byte) int { return bytes.Compare(a[:], b[:]) }

// byString and byAddr are an index's map type and its empty value.
type (
	byString[V any] = immutable.SortedMap[string, V]
	byAddr[V any]   = immutable.SortedMap[[16]byte, V]
)

func newByString[V any]() *byString[V] { return immutable.NewSortedMap[string, V](stringOrder{}) }
func newByAddr[V any]() *byAddr[V]     { return immutable.NewSortedMap[[16]byte, V](ipOrder{}) }

// orEmpty returns m, or an empty map of its kind when m is nil (the zero State's).
func orEmpty[K, V any](m *immutable.SortedMap[K, V], empty func() *immutable.SortedMap[K, V]) *immutable.SortedMap[K, V] {
	if m == nil {
		return empty()
	}
	return m
}

// get returns m's value for k, or the zero value (also for a nil map: the zero State).
func get[K, V any](m *immutable.SortedMap[K, V], k K) V {
	var zero V
	if m == nil {
		return zero
	}
	v, _ := m.Get(k)
	return v
}

// getIP is get for ip's key.
func getIP[V any](m *byAddr[V], ip netip.Addr) V { return get(m, ipKey(ip)) }

// values returns m's values in key order (of the keys that start with prefix).
func values[V any](m *byString[V], prefix string) []V {
	var out []V
	for _, v := range entries(m, prefix) {
		out = append(out, v)
	}
	return out
}

// entries iterates m's keys that start with prefix, in order.
func entries[V any](m *byString[V], prefix string) func(yield func(string, V) bool) {
	return func(yield func(string, V) bool) {
		if m == nil {
			return
		}
		it := m.Iterator()
		it.Seek(prefix)
		for !it.Done() {
			k, v, _ := it.Next()
			if !strings.HasPrefix(k, prefix) || !yield(k, v) {
				return
			}
		}
	}
}

// ipKey is ip's key: its 16 bytes (every IP of a State is unmapped, so a v4 address and a v6
// one never share a key).
func ipKey(ip netip.Addr) [16]byte { return ip.Unmap().As16() }

// nodeKey orders a node's workloads after its name: node, 0, uid.
func nodeKey(node, uid string) string { return node + "\x00" + uid }
