//go:build unix

package identity

import (
	"os"
	"syscall"
)

// lockDir takes an exclusive flock on dir itself (so it needs no lock file of its own inside a
// directory that may be a read-only mount elsewhere), waiting for a holder to let go.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
