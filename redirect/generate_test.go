package redirect

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/amesh-dev/amesh/internal/testenv"
)

// TestGeneratedObjectsFresh rebuilds the eBPF objects from bpf/ with the go:generate line of
// gen.go and fails if the committed amesh_bpfel.{o,go} differ: nobody ships a stale object.
func TestGeneratedObjectsFresh(t *testing.T) {
	if _, err := exec.LookPath("clang"); err != nil {
		if testenv.InCI() {
			t.Fatal("clang is not installed (make deps installs it): cannot check the committed eBPF objects")
		}
		t.Skip("SKIPPED LOUDLY: no clang; run `make deps` to check the committed eBPF objects")
	}
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go tool bpf2go "); ok {
			args = splitQuoted(rest)
		}
	}
	if args == nil {
		t.Fatal("gen.go has no bpf2go go:generate line")
	}
	out := t.TempDir()
	cmd := exec.Command("go", append([]string{"tool", "bpf2go", "-output-dir", out}, args...)...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=redirect")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bpf2go: %v\n%s", err, b)
	}
	for _, f := range []string{"amesh_bpfel.o", "amesh_bpfel.go"} {
		want, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("redirect/%s is stale: bpf/ changed without `make generate`", f)
		}
	}
}

// splitQuoted splits a go:generate argument list, honouring double quotes.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, any := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote, any = !inQuote, true
		case r == ' ' && !inQuote:
			if any {
				out = append(out, cur.String())
				cur.Reset()
				any = false
			}
		default:
			cur.WriteRune(r)
			any = true
		}
	}
	if any {
		out = append(out, cur.String())
	}
	return out
}
