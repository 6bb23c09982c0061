package workload

import (
	"cmp"
	"maps"
	"slices"
)

// Change is what an agent must do to its node's workloads to go from one State to the next. A
// consumer applies Unenroll before Enroll: a workload whose network namespace changed (its sandbox
// was recreated) appears in both, the old one to tear down and the new one to set up.
type Change struct {
	// Enroll: workloads of the node enrolled in the new state and not in the old one (new, moved
	// to this node, switched to ModeAmbient, or given a new Netns).
	Enroll []*Workload
	// Unenroll: workloads of the node enrolled in the old state and not in the new one (removed,
	// moved away, switched to ModeNone, or given a new Netns); the old *Workload.
	Unenroll []*Workload
	// Updated: workloads enrolled on the node in both states, in the same Netns, with some other
	// field changed (IPs, labels, inbound mode, waypoint, service account...); the new *Workload.
	Updated []*Workload
}

// Empty reports whether c asks for nothing.
func (c Change) Empty() bool { return len(c.Enroll)+len(c.Unenroll)+len(c.Updated) == 0 }

// Diff returns the Change for the workloads of node from prev to next (either may be nil, meaning
// empty). Workloads are matched by UID; each list is sorted by UID.
func Diff(prev, next *State, node string) Change {
	before := enrolledOn(prev, node)
	after := enrolledOn(next, node)
	var c Change
	for _, w := range after {
		o, ok := before[w.UID]
		switch {
		case !ok:
			c.Enroll = append(c.Enroll, w)
		case o.Netns != w.Netns:
			c.Unenroll = append(c.Unenroll, o)
			c.Enroll = append(c.Enroll, w)
		case !equal(o, w):
			c.Updated = append(c.Updated, w)
		}
	}
	for _, o := range before {
		if _, ok := after[o.UID]; !ok {
			c.Unenroll = append(c.Unenroll, o)
		}
	}
	byUID := func(a, b *Workload) int { return cmp.Compare(a.UID, b.UID) }
	slices.SortFunc(c.Enroll, byUID)
	slices.SortFunc(c.Unenroll, byUID)
	slices.SortFunc(c.Updated, byUID)
	return c
}

func enrolledOn(s *State, node string) map[string]*Workload {
	m := make(map[string]*Workload)
	if s == nil {
		return m
	}
	for _, w := range s.WorkloadsOnNode(node) {
		if w.Enrolled() {
			m[w.UID] = w
		}
	}
	return m
}

func equal(a, b *Workload) bool {
	return a.UID == b.UID && a.Name == b.Name && a.Namespace == b.Namespace &&
		a.ServiceAccount == b.ServiceAccount && a.Node == b.Node && a.Netns == b.Netns &&
		a.Mode == b.Mode && a.InboundMode == b.InboundMode && a.Waypoint == b.Waypoint && a.AllowWaypointBypass == b.AllowWaypointBypass &&
		slices.Equal(a.IPs, b.IPs) && maps.Equal(a.Labels, b.Labels)
}
