package redirect

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
)

// TestLayoutVersion: a pin directory records its layout; an agent refuses pins of a newer
// layout before it touches them (the pod stays enrolled and failing closed under the running
// agent), and takes pins with no record, made before layouts were recorded, as layout 1.
func TestLayoutVersion(t *testing.T) {
	p := newPair(t)
	r, err := Open(Config{PinDir: p.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Enroll(p.pod, []netip.Addr{p.podIP}); err != nil {
		r.Uninstall()
		t.Fatal(err)
	}
	defer func() {
		if r != nil {
			r.Uninstall()
		}
	}()
	if v, err := readLayout(p.pinDir); err != nil || v != LayoutVersion {
		t.Fatalf("recorded layout %d, %v; want %d", v, err, LayoutVersion)
	}
	setLayout(t, p.pinDir, LayoutVersion+1)
	r2, err := Open(Config{PinDir: p.pinDir})
	if err == nil {
		r2.Close()
		t.Fatal("an agent opened pins of a newer layout")
	}
	if want := "newer than this agent's"; !strings.Contains(err.Error(), want) {
		t.Errorf("refusal %q does not say %q", err, want)
	}
	t.Logf("refused: %v", err)
	// The refusal touched nothing: the pod is still enrolled (the pinned programs refuse its
	// connects, nothing listening), never let out unmeshed.
	if _, err := dialIn(t, p.pod, netip.AddrPortFrom(p.peerIP, 8080).String(), nil); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after the refusal the enrolled pod's connect = %v, want refused (still captured)", err)
	}
	if v, _ := readLayout(p.pinDir); v != LayoutVersion+1 {
		t.Errorf("the refusing agent rewrote the layout to %d", v)
	}

	// Pins from before layouts were recorded: no record, taken as layout 1, and recorded.
	if err := os.Remove(filepath.Join(p.pinDir, layoutPin)); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r, err = Open(Config{PinDir: p.pinDir})
	if err != nil {
		t.Fatalf("pins without a layout record: %v", err)
	}
	if len(r.Pods()) != 1 {
		t.Errorf("re-adopted %d pods, want the one enrolled", len(r.Pods()))
	}
	if v, err := readLayout(p.pinDir); err != nil || v != LayoutVersion {
		t.Errorf("layout after adopting unrecorded pins: %d, %v; want %d", v, err, LayoutVersion)
	}
}

func setLayout(t *testing.T, pinDir string, v uint32) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, layoutPin), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Update(uint32(0), v, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
}
