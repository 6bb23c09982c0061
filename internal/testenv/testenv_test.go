package testenv

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
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

func TestWaitForReturnsOnceCondHolds(t *testing.T) {
	n := 0
	WaitFor(t, "the third poll", time.Second, func() bool { n++; return n == 3 })
	if n != 3 {
		t.Errorf("cond called %d times, want 3", n)
	}
}

// fatalTB records Fatalf and stops its goroutine there, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestWaitForFailsAfterD(t *testing.T) {
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		WaitFor(f, "never", 100*time.Millisecond, func() bool { return false })
	}()
	<-done
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Errorf("gave up after %v, before d", took)
	}
	if want := "timed out after 100ms waiting for never"; f.msg != want {
		t.Errorf("Fatalf(%q), want %q", f.msg, want)
	}
}
