package identity

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// LoadOrCreateCA loads the built-in CA from dir, or, when dir holds none (or does not exist
// yet), makes one there: the CA of a node run on its own (local mode). Agents starting together
// on one directory agree on one root: the directory is locked while it is read and written, and
// each file is written beside its name and renamed into place, so nobody ever reads half a file.
// A directory with only one of the two files is an error, never overwritten: it may be a root
// somebody still needs. In a cluster use LoadCA: every node must issue from the one root the
// cluster's Secret holds, and an agent with a root of its own would split the mesh.
func LoadOrCreateCA(td spiffeid.TrustDomain, dir string, cfg CAConfig) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: CA directory: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("identity: lock CA directory %s: %w", dir, err)
	}
	defer unlock()
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	switch hasCert, hasKey := exists(certPath), exists(keyPath); {
	case hasCert && hasKey:
		return LoadCA(td, dir, cfg)
	case hasCert || hasKey:
		have, missing := CACertFile, CAKeyFile
		if hasKey {
			have, missing = CAKeyFile, CACertFile
		}
		return nil, fmt.Errorf("identity: CA directory %s has %s but no %s: restore it, or empty the directory to make a new root", dir, have, missing)
	}
	ca, err := NewCA(td, cfg)
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.PEM()
	if err != nil {
		return nil, err
	}
	// The key first: a reader that finds the certificate finds its key.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("identity: write CA: %w", err)
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("identity: write CA: %w", err)
	}
	return ca, nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// writeFileAtomic writes data to a temporary file beside path and renames it into place.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
