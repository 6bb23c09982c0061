package workload

import (
	"net/netip"
	"testing"
)

func TestDiff(t *testing.T) {
	w := func(name, node string, mods ...func(*Workload)) Workload {
		wl := Workload{
			Name: name, Namespace: "shop", ServiceAccount: "sa", Node: node,
			Netns: "/run/netns/" + name, Labels: map[string]string{"app": name},
		}
		for _, m := range mods {
			m(&wl)
		}
		return wl
	}
	none := func(w *Workload) { w.Mode = ModeNone }
	relabel := func(w *Workload) { w.Labels = map[string]string{"app": "other"} }
	permissive := func(w *Workload) { w.InboundMode = InboundPermissive }
	ip := func(s string) func(*Workload) {
		return func(w *Workload) { w.IPs = []netip.Addr{netip.MustParseAddr(s)} }
	}
	renetns := func(w *Workload) { w.Netns = "/proc/42/ns/net" }

	tests := []struct {
		name                      string
		prev, next                []Workload // nil prev/next with nilPrev/nilNext = nil *State
		nilPrev, nilNext          bool
		enroll, unenroll, updated string
	}{
		{name: "nil to nil", nilPrev: true, nilNext: true},
		{name: "start: everything on the node enrolls", nilPrev: true,
			next:   []Workload{w("a", "node1"), w("b", "node1"), w("c", "node2")},
			enroll: "shop/a shop/b"},
		{name: "to nil: everything unenrolls", nilNext: true,
			prev:     []Workload{w("a", "node1"), w("c", "node2")},
			unenroll: "shop/a"},
		{name: "no change",
			prev: []Workload{w("a", "node1"), w("b", "node1", none)},
			next: []Workload{w("a", "node1"), w("b", "node1", none)}},
		{name: "added",
			prev:   []Workload{w("a", "node1")},
			next:   []Workload{w("a", "node1"), w("b", "node1")},
			enroll: "shop/b"},
		{name: "removed",
			prev:     []Workload{w("a", "node1"), w("b", "node1")},
			next:     []Workload{w("a", "node1")},
			unenroll: "shop/b"},
		{name: "opted out",
			prev:     []Workload{w("a", "node1")},
			next:     []Workload{w("a", "node1", none)},
			unenroll: "shop/a"},
		{name: "opted in",
			prev:   []Workload{w("a", "node1", none)},
			next:   []Workload{w("a", "node1")},
			enroll: "shop/a"},
		{name: "added opted out: nothing",
			prev: nil,
			next: []Workload{w("a", "node1", none)}},
		{name: "opted-out workload changes: nothing",
			prev: []Workload{w("a", "node1", none)},
			next: []Workload{w("a", "node1", none, relabel)}},
		{name: "moved away",
			prev:     []Workload{w("a", "node1")},
			next:     []Workload{w("a", "node2")},
			unenroll: "shop/a"},
		{name: "moved here",
			prev:   []Workload{w("a", "node2")},
			next:   []Workload{w("a", "node1")},
			enroll: "shop/a"},
		{name: "other node's changes: nothing",
			prev: []Workload{w("c", "node2")},
			next: []Workload{w("c", "node2", relabel), w("d", "node2")}},
		{name: "labels, inbound mode and IPs change: updated",
			prev:    []Workload{w("a", "node1"), w("b", "node1"), w("c", "node1", ip("10.0.0.1"))},
			next:    []Workload{w("a", "node1", relabel), w("b", "node1", permissive), w("c", "node1", ip("10.0.0.2"))},
			updated: "shop/a shop/b shop/c"},
		{name: "new netns: unenroll the old, enroll the new",
			prev:     []Workload{w("a", "node1")},
			next:     []Workload{w("a", "node1", renetns, relabel)},
			enroll:   "shop/a",
			unenroll: "shop/a"},
		{name: "all at once, sorted",
			prev:     []Workload{w("z", "node1"), w("m", "node1"), w("b", "node1"), w("y", "node1")},
			next:     []Workload{w("z", "node1", relabel), w("a", "node1"), w("m", "node1", none), w("c", "node1"), w("y", "node1")},
			enroll:   "shop/a shop/c",
			unenroll: "shop/b shop/m",
			updated:  "shop/z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var prev, next *State
			if !tt.nilPrev {
				prev = stateWith(t, tt.prev...)
			}
			if !tt.nilNext {
				next = stateWith(t, tt.next...)
			}
			c := Diff(prev, next, "node1")
			if got := uids(c.Enroll); got != tt.enroll {
				t.Errorf("Enroll = %q, want %q", got, tt.enroll)
			}
			if got := uids(c.Unenroll); got != tt.unenroll {
				t.Errorf("Unenroll = %q, want %q", got, tt.unenroll)
			}
			if got := uids(c.Updated); got != tt.updated {
				t.Errorf("Updated = %q, want %q", got, tt.updated)
			}
			if c.Empty() != (tt.enroll+tt.unenroll+tt.updated == "") {
				t.Errorf("Empty() = %v", c.Empty())
			}
			// Unenroll hands back the old workload, Enroll and Updated the new one.
			for _, u := range c.Unenroll {
				if prev.WorkloadByUID(u.UID) != u {
					t.Errorf("Unenroll %s is not the old workload", u.UID)
				}
			}
			for _, u := range append(c.Enroll, c.Updated...) {
				if next.WorkloadByUID(u.UID) != u {
					t.Errorf("%s is not the new workload", u.UID)
				}
			}
		})
	}
}
