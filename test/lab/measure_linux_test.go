package lab

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestActivityOf reads this process's counters around work it did: the reads and writes it made
// must show as at least that many I/O system calls, its CPU in the kernel must not go back, and a
// process that is gone reads as nothing.
func TestActivityOf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := ActivityOf(os.Getpid())
	const n = 200
	for range n {
		if _, err := os.ReadFile(path); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * time.Millisecond) // a context switch at least
	after := ActivityOf(os.Getpid())
	if got := after.IOSyscalls - before.IOSyscalls; got < n {
		t.Errorf("I/O system calls grew by %v over %d file reads, want at least %d", got, n, n)
	}
	if after.KernelSeconds < before.KernelSeconds || after.CPUSeconds < after.KernelSeconds {
		t.Errorf("CPU %v -> %v s, of it in the kernel %v -> %v s: went back, or more in the kernel than in all", before.CPUSeconds, after.CPUSeconds, before.KernelSeconds, after.KernelSeconds)
	}
	if after.CtxSwitches <= before.CtxSwitches {
		t.Errorf("context switches %v -> %v across a sleep, want more", before.CtxSwitches, after.CtxSwitches)
	}
	if gone := ActivityOf(1 << 30); gone != (Activity{}) {
		t.Errorf("a pid that does not exist reads %+v, want zero", gone)
	}
}
