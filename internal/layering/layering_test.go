package layering

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/amesh-dev/amesh/"

// allowed is, for every package of the module, the packages of the module its non-test code
// may import. Lower rooms never import higher ones: identity, policy, netns and the workload
// model at the bottom; tunnel (HBONE, knows identity) and redirect (eBPF, knows netns, nothing
// of TLS) in the middle; the agent on top, the one room that joins them; cmd/ only wires.
// Nothing imports cmd/; nothing that is not a test imports test/..., except bench/, which
// builds its side-by-side lab with test/lab (ameshctl bench ships it), and bench/scale, a
// developer's benchmark no binary links, which starts its API server with test/k8s.
var allowed = map[string][]string{
	"identity":            {},
	"identity/casecret":   {"identity"},
	"identity/spire":      {"identity"},
	"policy":              {},
	"netns":               {},
	"handoff":             {},
	"podevents":           {},
	"metrics":             {},
	"adminapi":            {},
	"adminapi/forward":    {"adminapi"},
	"internal/version":    {},
	"internal/intern":     {},
	"ociimage":            {},
	"workload":            {"identity", "internal/intern", "policy"},
	"workload/file":       {"identity", "policy", "workload"},
	"workload/kube":       {"identity", "internal/intern", "policy", "workload"},
	"tunnel":              {"identity"},
	"redirect":            {"netns"},
	"api/cni/v1":          {},
	"cniplugin":           {"api/cni/v1"},
	"agent":               {"adminapi", "api/cni/v1", "handoff", "identity", "identity/spire", "internal/version", "metrics", "netns", "podevents", "policy", "redirect", "tunnel", "workload", "workload/file", "workload/kube"},
	"bench":               {"identity", "netns", "redirect", "test/lab", "tunnel"},
	"bench/scale":         {"identity", "test/k8s", "test/lab"},
	"bench/scale/watcher": {},
	"waypoint":            {"identity", "policy", "tunnel", "workload"},
	"waypoint/xds":        {"identity", "policy", "tunnel", "waypoint", "workload"},
	"cmd/amesh-waypoint":  {"identity", "waypoint", "waypoint/xds", "workload", "workload/file", "workload/kube"},
	"cmd/amesh-agent":     {"agent", "api/cni/v1", "cniplugin", "identity", "identity/casecret", "identity/spire", "podevents", "workload/kube"},
	"cmd/amesh-cni":       {"cniplugin"},
	"cmd/amesh-image":     {"ociimage"},
	"cmd/ameshctl":        {"adminapi", "adminapi/forward", "bench", "internal/version", "waypoint"},
	"internal/testenv":    {},
	"internal/layering":   {},
	// The test harness: labs, control planes and end-to-end tests, which may use any room
	// (but nothing of cmd/, whose binaries they run as a user would).
	"test/lab":   {"identity", "netns", "policy", "workload", "workload/file"},
	"test/k8s":   {"netns"},
	"test/spire": {},
	"test/demo":  {"identity", "netns", "test/lab"},
	"test/e2e":   {"internal/testenv", "netns", "test/k8s", "test/lab", "test/spire"},
	// The real nodes (kubelet + containerd) and the one program of their test images.
	"test/node":         {"bench", "ociimage", "test/k8s", "waypoint"},
	"test/node/testapp": {},
}

type pkg struct {
	ImportPath                         string
	Imports, TestImports, XTestImports []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"...").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < len(allowed)/2 {
		t.Fatalf("go list found %d packages; the table names %d", len(pkgs), len(allowed))
	}
	return pkgs
}

// ours returns the module-relative paths of the module's packages in imports.
func ours(imports []string) []string {
	var out []string
	for _, imp := range imports {
		if rel, ok := strings.CutPrefix(imp, module); ok {
			out = append(out, rel)
		}
	}
	return out
}

func TestImportRules(t *testing.T) {
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(p.ImportPath, module)
		may, ok := allowed[rel]
		if !ok {
			t.Errorf("package %s is not in the import table: add it, with what it may import, to internal/layering and ARCHITECTURE.md", rel)
			continue
		}
		for _, imp := range ours(p.Imports) {
			if !slices.Contains(may, imp) {
				t.Errorf("%s imports %s, which the house does not allow (see ARCHITECTURE.md; allowed: %v)", rel, imp, may)
			}
		}
		for _, imp := range ours(append(p.TestImports, p.XTestImports...)) {
			if strings.HasPrefix(imp, "cmd/") {
				t.Errorf("a test of %s imports %s: tests run the binaries, never import them", rel, imp)
			}
		}
	}
}

// TestTableNamesRealPackages keeps the table honest the other way: an entry for a package that
// no longer exists is a stale rule.
func TestTableNamesRealPackages(t *testing.T) {
	have := map[string]bool{}
	for _, p := range listPackages(t) {
		have[strings.TrimPrefix(p.ImportPath, module)] = true
	}
	for rel := range allowed {
		if !have[rel] {
			t.Errorf("the import table names %s, which is not a package of the module", rel)
		}
	}
}

// TestAgentBinaryLean: the agent and the CNI plugin link no typed Kubernetes clientset (the
// dynamic client is theirs): client-go's typed clients add ~20 MB to a binary and ~13 MiB to the
// agent's RSS, which a helper in a package the agent imports once pulled in unnoticed.
func TestAgentBinaryLean(t *testing.T) {
	for _, cmd := range []string{"cmd/amesh-agent", "cmd/amesh-cni"} {
		out, err := exec.Command("go", "list", "-deps", module+cmd).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", cmd, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == "k8s.io/client-go/kubernetes" {
				t.Errorf("%s links %s", cmd, dep)
			}
		}
	}
}

// section returns the text of the Markdown section of file (path from the module root) whose
// heading is heading, up to the next heading of the same level.
func section(t *testing.T, file, heading string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", file))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("%s has no %q", file, heading)
	}
	body, _, _ := strings.Cut(rest, "\n## ")
	return body
}

// TestDocsNameEveryPackage: the house as the newcomer reads it (README's Layout, ARCHITECTURE's
// rooms) names every package of the tree as `path/`, so a package added without a word in
// either fails here rather than surprising its first reader.
func TestDocsNameEveryPackage(t *testing.T) {
	docs := []struct{ file, heading string }{
		{"README.md", "## Layout"},
		{"ARCHITECTURE.md", "## Rooms"},
	}
	for _, d := range docs {
		text := section(t, d.file, d.heading)
		for _, p := range listPackages(t) {
			rel := strings.TrimPrefix(p.ImportPath, module)
			if !strings.Contains(text, "`"+rel+"/`") {
				t.Errorf("%s's %q does not name package %s (as `%s/`)", d.file, d.heading, rel, rel)
			}
		}
	}
}
