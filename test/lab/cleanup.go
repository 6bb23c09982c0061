package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// CleanupStale removes what labs whose prefix starts with prefix left behind when their run was
// interrupted before Close: their namespaces (killing what still runs in them), pin directories
// and directories in the temp dir. An empty prefix is DefaultPrefixBase. It removes running
// labs' too: call it only when no lab with that prefix runs (`make clean-lab`).
func CleanupStale(prefix string) error {
	if err := checkPlatform(); err != nil {
		return err
	}
	if prefix == "" {
		prefix = DefaultPrefixBase
	}
	if err := checkPrefix(prefix); err != nil {
		return fmt.Errorf("lab: cleanup: %w", err)
	}
	var errs []error
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		killNetnsPids(e.Name())
		if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w: %s", e.Name(), err, strings.TrimSpace(string(out))))
		}
	}
	for _, dir := range []string{bpffsDir, os.TempDir()} {
		paths, err := filepath.Glob(filepath.Join(dir, prefix+"*"))
		if err != nil {
			errs = append(errs, err)
		}
		for _, p := range paths {
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab: cleanup %s*: %w", prefix, err)
	}
	return nil
}
