package testenv

import (
	"os"
	"testing"
)

func TestInCI(t *testing.T) {
	for _, tt := range []struct {
		val  string
		want bool
	}{{"true", true}, {"", false}, {"false", false}, {"1", false}} {
		t.Setenv("CI", tt.val)
		if got := InCI(); got != tt.want {
			t.Errorf("CI=%q: InCI() = %v, want %v", tt.val, got, tt.want)
		}
	}
}

func TestRequireRootPassesForRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("this case checks the root path; the non-root path is covered by its Fatal/Skip messages")
	}
	RequireRoot(t) // must return without stopping the test
}
