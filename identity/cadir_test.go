package identity

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestLoadOrCreateCA(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string) // what the directory holds before the agent starts
		wantErr string                         // "" means a CA is loaded or made
	}{
		{"no directory", func(*testing.T, string) {}, ""},
		// `mkdir -p /var/lib/amesh/ca` before the first start, as a user does (--help says
		// "created when empty").
		{"existing empty directory", func(t *testing.T, dir string) { mustMkdir(t, dir) }, ""},
		{"certificate without key", func(t *testing.T, dir string) {
			mustMkdir(t, dir)
			if err := os.WriteFile(filepath.Join(dir, CACertFile), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "has " + CACertFile + " but no " + CAKeyFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			tt.prepare(t, dir)
			ca, err := LoadOrCreateCA(td, dir, CAConfig{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadOrCreateCA = %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			again, err := LoadOrCreateCA(td, dir, CAConfig{})
			if err != nil {
				t.Fatal(err)
			}
			if !again.Root().Equal(ca.Root()) {
				t.Fatal("a second start made a new root instead of loading the first")
			}
			st, err := os.Stat(filepath.Join(dir, CAKeyFile))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Fatalf("%s mode %v, want 0600", CAKeyFile, st.Mode().Perm())
			}
		})
	}
}

// TestLoadOrCreateCAConcurrent: agents starting together on one directory agree on one root,
// whether the directory was there or not.
func TestLoadOrCreateCAConcurrent(t *testing.T) {
	for _, existing := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "ca")
		if existing {
			mustMkdir(t, dir)
		}
		const n = 8
		roots := make([]*CA, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				roots[i], errs[i] = LoadOrCreateCA(td, dir, CAConfig{})
			}()
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("existing=%v: agent %d: %v", existing, i, errs[i])
			}
			if !roots[i].Root().Equal(roots[0].Root()) {
				t.Fatalf("existing=%v: agents %d and 0 have different roots", existing, i)
			}
		}
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}
