package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// LayoutVersion is the layout of the pinned maps this release reads and writes: which maps
// there are, and what their keys and values mean. Sizes alone do not say it (a field can change
// meaning at the same size), so every pin directory records the layout that made it, in a
// pinned one-element array, and an agent checks it before it touches a pin.
//
// Bump it when a map's meaning changes, and add the migration from the previous layout to
// migrations; a layout an agent has no migration for makes it refuse to start, so that the
// running agent (a rollout's old one, which was never released) keeps serving: an upgrade
// never has a moment in which pods fail open.
const LayoutVersion = 1

// layoutPin is the pinned array that records the pin directory's layout.
const layoutPin = "layout"

// migrations[v] moves a pin directory from layout v to v+1, in place, before the programs load.
var migrations = map[uint32]func(pinDir string) error{}

// checkLayout reads the pin directory's layout and brings it to LayoutVersion, or refuses. A
// directory with pins but no layout record was made by the releases before layouts were
// recorded, whose layout is 1.
func checkLayout(pinDir string) (uint32, error) {
	v, err := readLayout(pinDir)
	if err != nil {
		return 0, err
	}
	if v == 0 || v == LayoutVersion {
		return v, nil
	}
	if v > LayoutVersion {
		return v, fmt.Errorf("redirect: the pins in %s have layout %d, newer than this agent's %d: run the release that made them, or a newer one; "+
			"`amesh-agent --uninstall` would clear them, but takes every pod of the node out of the mesh until an agent enrolls them again", pinDir, v, LayoutVersion)
	}
	for ; v < LayoutVersion; v++ {
		migrate, ok := migrations[v]
		if !ok {
			return v, fmt.Errorf("redirect: the pins in %s have layout %d, which this agent (layout %d) cannot migrate: upgrade through a release that can", pinDir, v, LayoutVersion)
		}
		if err := migrate(pinDir); err != nil {
			return v, fmt.Errorf("redirect: migrate the pins in %s from layout %d: %w", pinDir, v, err)
		}
	}
	return v, nil
}

// readLayout returns the layout recorded in pinDir: 0 for a directory without pins.
func readLayout(pinDir string) (uint32, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, layoutPin), nil)
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(pinDir, "enrolled")); err == nil {
			return 1, nil // pinned by a release before layouts were recorded
		}
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("redirect: read the layout of %s: %w", pinDir, err)
	}
	defer m.Close()
	var v uint32
	if err := m.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("redirect: read the layout of %s: %w", pinDir, err)
	}
	return v, nil
}

// writeLayout records LayoutVersion in pinDir.
func writeLayout(pinDir string) error {
	pin := filepath.Join(pinDir, layoutPin)
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		m, err = ebpf.NewMap(&ebpf.MapSpec{Name: "amesh_layout", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err == nil {
			if perr := m.Pin(pin); perr != nil {
				m.Close()
				return fmt.Errorf("redirect: pin the layout: %w", perr)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("redirect: layout map: %w", err)
	}
	defer m.Close()
	if err := m.Update(uint32(0), uint32(LayoutVersion), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("redirect: record the layout: %w", err)
	}
	return nil
}
