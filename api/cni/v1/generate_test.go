package cniv1

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/amesh-dev/amesh/internal/testenv"
)

// protocVersionLine is the one line of the generated headers that names protoc's version, which
// comes from whatever protoc is installed, not from go.mod: the comparison ignores it, so a newer
// Debian protoc does not fail the check while any change of the generated code does.
var protocVersionLine = regexp.MustCompile(`(?m)^// (\t|- )protoc +v.*$`)

// TestGeneratedCodeFresh regenerates the Go code from cni.proto with gen.sh (the go:generate line
// of gen.go) and fails if the committed cni.pb.go or cni_grpc.pb.go differ: nobody ships code
// that does not match the contract.
func TestGeneratedCodeFresh(t *testing.T) {
	if _, err := exec.LookPath("protoc"); err != nil {
		if testenv.InCI() {
			t.Fatal("protoc is not installed (apt protobuf-compiler): cannot check the committed generated code")
		}
		t.Skip("SKIPPED LOUDLY: no protoc (apt-get install protobuf-compiler) to check the committed cni.pb.go, cni_grpc.pb.go")
	}
	out := t.TempDir()
	cmd := exec.Command("sh", "gen.sh")
	cmd.Env = append(os.Environ(), "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen.sh: %v\n%s", err, b)
	}
	for _, f := range []string{"cni.pb.go", "cni_grpc.pb.go"} {
		want, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(protocVersionLine.ReplaceAll(got, nil), protocVersionLine.ReplaceAll(want, nil)) {
			t.Errorf("api/cni/v1/%s is stale: cni.proto changed without `go generate ./api/cni/v1`", f)
		}
	}
}
