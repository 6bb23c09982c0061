package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/amesh-dev/amesh/netns"
	"golang.org/x/sys/unix"
)

// captureBudget bounds what a Capture keeps: payload bytes plus packetOverhead per segment.
const (
	captureBudget  = 64 << 20
	packetOverhead = 64
)

// Capture records the IPv4 TCP segments crossing the underlay, each once (as it enters the
// switch from a node), from Lab.Capture until Stop. It keeps at most 64 MiB; Dropped counts what
// it missed.
type Capture struct {
	f        *os.File      // the packet socket
	done     chan struct{} // closed when the reader has drained the socket and returned
	stopOnce sync.Once
	lab      *Lab

	mu      sync.Mutex
	pkts    []Packet
	kept    int // bytes counted against captureBudget
	dropped int
}

// Capture starts recording the underlay: an AF_PACKET socket in the switch's namespace sees
// every frame on every port. It keeps each frame as it enters the switch from a node (not as it
// leaves to another, nor its copy on the bridge device), so each segment is there once.
func (l *Lab) Capture() (*Capture, error) {
	var fd, bridge int
	err := netns.Do(l.SwitchNetns, func() error {
		br, err := net.InterfaceByName(bridgeName)
		if err != nil {
			return err
		}
		bridge = br.Index
		// Opened in the namespace, the socket stays in it; unbound, it sees all its devices.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: capture: open packet socket in %s: %w", l.SwitchNetns, err)
	}
	// Frames leaving a port are frames that entered another: do not deliver them (Linux 4.20+).
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lab: capture: PACKET_IGNORE_OUTGOING: %w", err)
	}
	// Room for bursts (a bulk transfer on veths is 64 KiB GSO frames); root may exceed rmem_max.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	// Non-blocking, the file is in Go's poller: a read deadline wakes the reader, for Stop.
	f := os.NewFile(uintptr(fd), "lab-capture")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lab: capture: %w", err)
	}
	c := &Capture{f: f, done: make(chan struct{}), lab: l}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		f.Close()
		return nil, ErrClosed
	}
	l.captures[c] = struct{}{}
	l.mu.Unlock()
	go c.read(rc, bridge)
	return c, nil
}

// Stop ends the capture and returns the segments seen, in order of capture; it reads what the
// socket holds before it closes it, so every segment that crossed the switch before the call is
// there. Later calls return the same slice, which the caller must not modify if it calls Stop
// again. Lab.Close stops a capture left running.
func (c *Capture) Stop() []Packet {
	c.stopOnce.Do(func() {
		// Wakes the reader, which drains the socket without waiting and returns.
		c.f.SetReadDeadline(time.Now())
		<-c.done
		c.f.Close()
		c.lab.mu.Lock()
		delete(c.lab.captures, c)
		c.lab.mu.Unlock()
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pkts
}

// Dropped is the number of frames the capture missed: segments beyond its budget, and frames
// the kernel dropped because the socket's buffer was full (known once Stop has returned). A
// test that checks for the absence of plaintext must check that it is 0.
func (c *Capture) Dropped() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

// add keeps the segment in frame, if it is one and fits the budget.
func (c *Capture) add(frame []byte) {
	p, ok := parseFrame(frame)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kept+len(p.Payload)+packetOverhead > captureBudget {
		c.dropped++
		return
	}
	c.kept += len(p.Payload) + packetOverhead
	p.Payload = bytes.Clone(p.Payload) // frame is the reader's buffer
	c.pkts = append(c.pkts, p)
}

// read receives frames until Stop's deadline, then drains the socket and returns.
func (c *Capture) read(rc syscall.RawConn, bridge int) {
	defer close(c.done)
	buf := make([]byte, 256<<10) // above a 64 KiB GSO frame; BIG TCP is off on veths by default
	recv := func(fd int) (ok bool, err error) {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return false, err
		}
		if ll, _ := from.(*unix.SockaddrLinklayer); ll != nil && ll.Ifindex != bridge && ll.Pkttype != unix.PACKET_OUTGOING {
			c.add(buf[:min(n, len(buf))])
		}
		return true, nil
	}
	for {
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			_, rerr = recv(int(fd))
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			break // Stop
		}
		if rerr != nil && !errors.Is(rerr, unix.EINTR) {
			break
		}
	}
	rc.Control(func(fd uintptr) {
		for {
			if _, err := recv(int(fd)); err != nil && !errors.Is(err, unix.EINTR) {
				break
			}
		}
		if st, err := unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			c.mu.Lock()
			c.dropped += int(st.Drops)
			c.mu.Unlock()
		}
	})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
