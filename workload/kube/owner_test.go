package kube

import "testing"

func TestOwnerVerdict(t *testing.T) {
	for _, tc := range []struct {
		name              string
		owner, ds         string
		deleting, missing bool
		gone              bool
	}{
		{"stands", "u1", "u1", false, false, false},
		{"deleted", "u1", "", false, true, true},
		{"being deleted", "u1", "u1", true, false, true},
		{"replaced by another of the name", "u1", "u2", false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if gone, reason := ownerVerdict(tc.owner, tc.ds, tc.deleting, tc.missing); gone != tc.gone || reason == "" {
				t.Errorf("ownerVerdict = %v %q, want %v", gone, reason, tc.gone)
			}
		})
	}
}
