//go:build !linux

package lab

// Capture is unavailable off Linux.
type Capture struct{}

// Capture fails off Linux.
func (*Lab) Capture() (*Capture, error) { return nil, errNotLinux }

// Stop returns nothing off Linux.
func (*Capture) Stop() []Packet { return nil }

// Dropped is 0 off Linux.
func (*Capture) Dropped() int { return 0 }
