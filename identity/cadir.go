package identity

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// LoadOrCreateCA loads the built-in CA from dir, or, when dir holds none, makes one there: the
// CA of a node run on its own (local mode). It is made beside dir and renamed into place, so
// that agents starting together agree on one root (the loser of the rename loads the winner's).
// In a cluster use LoadCA: every node must issue from the one root the cluster's Secret holds,
// and an agent with a root of its own would split the mesh.
func LoadOrCreateCA(td spiffeid.TrustDomain, dir string, cfg CAConfig) (*CA, error) {
	ca, err := LoadCA(td, dir, cfg)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return ca, err
	}
	ca, err = NewCA(td, cfg)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("identity: CA directory: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".ca-")
	if err != nil {
		return nil, fmt.Errorf("identity: CA directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := ca.WriteFiles(tmp); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if loaded, lerr := LoadCA(td, dir, cfg); lerr == nil {
			return loaded, nil
		}
		return nil, fmt.Errorf("identity: install CA in %s: %w", dir, err)
	}
	return ca, nil
}
