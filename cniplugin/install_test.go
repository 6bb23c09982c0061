package cniplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// A primary configuration list with fields and plugins amesh-cni knows nothing of.
const calicoList = `{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "x-vendor-annotation": {"keep": ["me", 1, true, null]},
  "plugins": [
    {
      "type": "calico",
      "log_level": "info",
      "datastore_type": "kubernetes",
      "ipam": {"type": "calico-ipam", "assign_ipv4": "true"},
      "policy": {"type": "k8s"},
      "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}
    },
    {
      "type": "portmap",
      "snat": true,
      "capabilities": {"portMappings": true}
    }
  ],
  "disableCheck": false
}
`

const flannelConf = `{
	"name": "cbr0",
	"cniVersion": "0.3.1",
	"type": "flannel",
	"delegate": {
		"hairpinMode": true,
		"isDefaultGateway": true
	}
}
`

const compactList = `{"cniVersion":"1.0.0","name":"kindnet","plugins":[{"type":"ptp","ipMasq":false,"ipam":{"type":"host-local","dataDir":"/run/cni-ipam-state","ranges":[[{"subnet":"10.244.0.0/24"}]]},"mtu":1500},{"type":"portmap","capabilities":{"portMappings":true}}]}`

const tabList = "{\n\t\"cniVersion\": \"1.0.0\",\n\t\"name\": \"tabs\",\n\t\"plugins\": [\n\t\t{\n\t\t\t\"type\": \"bridge\",\n\t\t\t\"bridge\": \"cni0\"\n\t\t}\n\t]\n}\n"

func installConfig(t *testing.T) InstallConfig {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "build", "amesh-cni")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/true\nthe plugin"), 0o700); err != nil {
		t.Fatal(err)
	}
	c := InstallConfig{
		BinDir:       filepath.Join(dir, "bin"),
		ConfDir:      filepath.Join(dir, "net.d"),
		PluginBinary: bin,
		Kubeconfig:   "/etc/cni/net.d/amesh-cni.kubeconfig",
	}
	for _, d := range []string{c.BinDir, c.ConfDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// snapshot is a directory's files: name -> content and mode.
type snapshot map[string]fileState

type fileState struct {
	text string
	mode fs.FileMode
}

func readDir(t *testing.T, dir string) snapshot {
	t.Helper()
	s := snapshot{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := e.Info()
		s[e.Name()] = fileState{string(b), fi.Mode().Perm()}
	}
	return s
}

func writeFiles(t *testing.T, dir string, files map[string]string, mode fs.FileMode) {
	t.Helper()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), mode); err != nil {
			t.Fatal(err)
		}
	}
}

// chain loads the list at path as a runtime does and returns its plugin types and amesh-cni's entry.
func chain(t *testing.T, path string) ([]string, map[string]any) {
	t.Helper()
	l, err := libcni.NetworkConfFromFile(path)
	if err != nil {
		t.Fatalf("runtime cannot load %s: %v", path, err)
	}
	var types []string
	var entry map[string]any
	for _, p := range l.Plugins {
		types = append(types, p.Network.Type)
		if p.Network.Type == PluginType {
			if err := json.Unmarshal(p.Bytes, &entry); err != nil {
				t.Fatal(err)
			}
		}
	}
	return types, entry
}

func TestInstallUninstall(t *testing.T) {
	for _, tt := range []struct {
		name      string
		files     map[string]string
		mode      fs.FileMode
		primary   string   // the file that gets the entry
		wantChain []string // its plugins after Install
		gone      string   // a file Install replaces (a single-plugin file)
	}{
		{name: "list with unknown fields", files: map[string]string{"10-calico.conflist": calicoList}, mode: 0o644,
			primary: "10-calico.conflist", wantChain: []string{"calico", "portmap", PluginType}},
		{name: "single-plugin .conf becomes a list", files: map[string]string{"10-flannel.conf": flannelConf}, mode: 0o640,
			primary: "10-flannel.conflist", wantChain: []string{"flannel", PluginType}, gone: "10-flannel.conf"},
		{name: "single-plugin .json becomes a list", files: map[string]string{"05-bridge.json": `{"cniVersion": "1.0.0", "name": "b", "type": "bridge"}` + "\n"}, mode: 0o600,
			primary: "05-bridge.conflist", wantChain: []string{"bridge", PluginType}, gone: "05-bridge.json"},
		{name: "compact list stays compact", files: map[string]string{"10-kindnet.conflist": compactList}, mode: 0o644,
			primary: "10-kindnet.conflist", wantChain: []string{"ptp", "portmap", PluginType}},
		{name: "tab-indented list", files: map[string]string{"99-tabs.conflist": tabList}, mode: 0o644,
			primary: "99-tabs.conflist", wantChain: []string{"bridge", PluginType}},
		{name: "first file by name wins, others untouched", mode: 0o644, files: map[string]string{
			"20-flannel.conf":    flannelConf,
			"10-calico.conflist": calicoList,
			"amesh-cni.conflist": compactList,           // amesh's own: ignored
			"05-notes.txt":       "not a configuration", // not a configuration extension
		}, primary: "10-calico.conflist", wantChain: []string{"calico", "portmap", PluginType}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := installConfig(t)
			writeFiles(t, c.ConfDir, tt.files, tt.mode)
			before := readDir(t, c.ConfDir)
			if err := Install(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			after := readDir(t, c.ConfDir)
			got, ok := after[tt.primary]
			if !ok {
				t.Fatalf("no %s after Install: %v", tt.primary, slices.Collect(maps.Keys(after)))
			}
			if got.mode != tt.mode {
				t.Errorf("%s mode %v, want %v as before", tt.primary, got.mode, tt.mode)
			}
			types, entry := chain(t, filepath.Join(c.ConfDir, tt.primary))
			if !slices.Equal(types, tt.wantChain) {
				t.Errorf("chain %v, want %v", types, tt.wantChain)
			}
			if entry["agentSocket"] != "/var/run/amesh/cni.sock" || entry["kubeconfig"] != c.Kubeconfig {
				t.Errorf("entry %v", entry)
			}
			if tt.gone != "" {
				if _, ok := after[tt.gone]; ok {
					t.Errorf("%s is still there beside %s: it would sort first and bypass amesh-cni", tt.gone, tt.primary)
				}
				if entry["convertedFrom"] != tt.gone {
					t.Errorf("entry %v does not record the conversion from %s", entry, tt.gone)
				}
			} else {
				// Every byte before the end of the last plugin, and after it, is the original's.
				orig := before[tt.primary].text
				l, err := parseConfList([]byte(orig))
				if err != nil {
					t.Fatal(err)
				}
				end := l.plugins[len(l.plugins)-1].end
				if !strings.HasPrefix(got.text, orig[:end]) || !strings.HasSuffix(got.text, orig[end:]) {
					t.Errorf("Install changed more than it added:\n%s\nwas\n%s", got.text, orig)
				}
			}
			for name, f := range before {
				if name != tt.primary && name != tt.gone && after[name] != f {
					t.Errorf("Install changed %s", name)
				}
			}
			if len(after) != len(before) {
				t.Errorf("files after Install %v, before %v (temporary files left?)", slices.Sorted(maps.Keys(after)), slices.Sorted(maps.Keys(before)))
			}

			// Idempotent: a second Install (the init container runs at every agent restart)
			// leaves everything as the first did.
			if err := Install(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			if again := readDir(t, c.ConfDir); !maps.Equal(again, after) {
				t.Errorf("second Install changed the files:\n%v\nafter the first:\n%v", again, after)
			}

			bin, err := os.Stat(filepath.Join(c.BinDir, PluginType))
			if err != nil || bin.Mode().Perm() != 0o755 {
				t.Fatalf("plugin binary: %v, %v; want mode 0755", bin, err)
			}
			if b, _ := os.ReadFile(filepath.Join(c.BinDir, PluginType)); string(b) != "#!/bin/true\nthe plugin" {
				t.Errorf("plugin binary content %q", b)
			}

			if err := Uninstall(c); err != nil {
				t.Fatal(err)
			}
			if restored := readDir(t, c.ConfDir); !maps.Equal(restored, before) {
				t.Errorf("Uninstall left\n%v\nwant the files as before Install\n%v", restored, before)
			}
			if _, err := os.Stat(filepath.Join(c.BinDir, PluginType)); !os.IsNotExist(err) {
				t.Errorf("plugin binary after Uninstall: %v", err)
			}
			// And again: nothing left to do is no error.
			if err := Uninstall(c); err != nil {
				t.Errorf("second Uninstall: %v", err)
			}
		})
	}
}

// TestInstallEntry checks the entry's fields and that a re-install with other settings replaces
// it, moving it to the end when another plugin was appended after it meanwhile.
func TestInstallEntry(t *testing.T) {
	c := installConfig(t)
	writeFiles(t, c.ConfDir, map[string]string{"10-calico.conflist": calicoList}, 0o644)
	path := filepath.Join(c.ConfDir, "10-calico.conflist")
	if err := Install(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	// Someone chains a plugin after amesh-cni.
	l, err := parseConfList(mustRead(t, path))
	if err != nil {
		t.Fatal(err)
	}
	late, err := l.append(map[string]any{"type": "bandwidth", "capabilities": map[string]bool{"bandwidth": true}})
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, c.ConfDir, map[string]string{"10-calico.conflist": string(late)}, 0o644)

	c.AgentSocket = "/run/amesh/other.sock"
	c.ExcludeNamespaces = []string{"kube-system", "infra"}
	c.Timeout = 5 * time.Second
	c.LogFile = "/var/log/amesh-cni.log"
	if err := Install(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	types, entry := chain(t, path)
	if want := []string{"calico", "portmap", "bandwidth", PluginType}; !slices.Equal(types, want) {
		t.Errorf("chain %v, want %v", types, want)
	}
	want := map[string]any{"type": PluginType, "agentSocket": "/run/amesh/other.sock", "kubeconfig": c.Kubeconfig,
		"excludeNamespaces": []any{"kube-system", "infra"}, "timeout": "5s", "logFile": "/var/log/amesh-cni.log"}
	if b1, b2 := mustJSON(t, entry), mustJSON(t, want); b1 != b2 {
		t.Errorf("entry %s, want %s", b1, b2)
	}
	// The entry as the plugin reads it.
	conf, err := ParseConfig([]byte(mustJSON(t, entry)))
	if err != nil || conf.Timeout != 5*time.Second || !conf.Excluded("infra") || conf.AgentSocket != c.AgentSocket {
		t.Errorf("ParseConfig(entry) = %+v, %v", conf, err)
	}
	// Uninstall also removes the plugin's kubeconfig from ConfDir.
	sa := t.TempDir()
	writeFiles(t, sa, map[string]string{"ca": "ca", "token": "token"}, 0o600)
	kc, err := WriteKubeconfig(c.ConfDir, ServiceAccount{Server: "https://10.96.0.1:443", CAFile: filepath.Join(sa, "ca"), TokenFile: filepath.Join(sa, "token")})
	if err != nil {
		t.Fatal(err)
	}
	if err := Uninstall(c); err != nil {
		t.Fatal(err)
	}
	if types, _ := chain(t, path); !slices.Equal(types, []string{"calico", "portmap", "bandwidth"}) {
		t.Errorf("chain after Uninstall %v", types)
	}
	if _, err := os.Stat(kc); !os.IsNotExist(err) {
		t.Errorf("kubeconfig after Uninstall: %v", err)
	}
}

// TestUninstallAfterPrimaryRewrote checks Uninstall does not overwrite a single-plugin file the
// primary plugin's installer wrote anew after Install converted the old one.
func TestUninstallAfterPrimaryRewrote(t *testing.T) {
	c := installConfig(t)
	writeFiles(t, c.ConfDir, map[string]string{"10-flannel.conf": flannelConf}, 0o644)
	if err := Install(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	const rewritten = `{"name": "cbr0", "cniVersion": "1.0.0", "type": "flannel"}`
	writeFiles(t, c.ConfDir, map[string]string{"10-flannel.conf": rewritten}, 0o644)
	if err := Uninstall(c); err != nil {
		t.Fatal(err)
	}
	if got := string(mustRead(t, filepath.Join(c.ConfDir, "10-flannel.conf"))); got != rewritten {
		t.Errorf("10-flannel.conf = %q, want the rewritten one kept", got)
	}
	if types, _ := chain(t, filepath.Join(c.ConfDir, "10-flannel.conflist")); !slices.Equal(types, []string{"flannel"}) {
		t.Errorf("10-flannel.conflist still chains %v", types)
	}
}

func TestInstallErrors(t *testing.T) {
	for _, tt := range []struct {
		name    string
		files   map[string]string
		wantErr string
	}{
		{"no configuration", nil, "no CNI configuration (*.conflist, *.conf, *.json) in "},
		{"only amesh's own and other files", map[string]string{"amesh-cni.conflist": compactList, "README": "x", "amesh-cni.kubeconfig": "x"},
			"has not written its configuration yet"},
		{"first file broken", map[string]string{"00-broken.conflist": `{"name": "x", "plugins": [`, "10-calico.conflist": calicoList},
			"the primary CNI configuration "},
		{"list in a .conf", map[string]string{"10-x.conf": compactList}, "missing 'type'"},
		{"version without chaining", map[string]string{"10-old.conf": `{"cniVersion": "0.2.0", "name": "old", "type": "bridge"}`},
			`cniVersion "0.2.0" predates chaining`},
		{"only amesh-cni in the list", map[string]string{"10-x.conflist": `{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "amesh-cni"}]}`},
			"no primary plugin to chain after"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := installConfig(t)
			writeFiles(t, c.ConfDir, tt.files, 0o644)
			before := readDir(t, c.ConfDir)
			err := Install(context.Background(), c)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "cniplugin: install: ") {
				t.Fatalf("Install = %v, want an error saying %q", err, tt.wantErr)
			}
			if after := readDir(t, c.ConfDir); !maps.Equal(after, before) {
				t.Errorf("failed Install changed the files")
			}
		})
	}
	c := installConfig(t)
	c.PluginBinary = filepath.Join(t.TempDir(), "missing")
	if err := Install(context.Background(), c); err == nil || !strings.Contains(err.Error(), "cniplugin: install: plugin binary: ") {
		t.Errorf("Install without a binary = %v", err)
	}
	if err := Install(context.Background(), InstallConfig{}); err == nil {
		t.Error("Install of nothing succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c = installConfig(t)
	writeFiles(t, c.ConfDir, map[string]string{"10-calico.conflist": calicoList}, 0o644)
	if err := Install(ctx, c); err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("Install with a cancelled context = %v", err)
	}
}

// FuzzConfListRoundTrip checks, for any list text, that removing the entry append added gives
// the text back byte for byte, and that the result still parses with the entry last.
func FuzzConfListRoundTrip(f *testing.F) {
	for _, s := range []string{calicoList, compactList, tabList, `{"plugins":[{}]}`, "{ \"plugins\" : [ {\"type\":\"a\"} , {\"type\":\"b\"}\r\n ] }",
		string(confAsList([]byte(flannelConf), "0.3.1", "cbr0"))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		l, err := parseConfList([]byte(text))
		if err != nil || len(l.plugins) == 0 {
			return
		}
		out, err := l.append(InstallConfig{}.entry())
		if err != nil {
			t.Fatal(err)
		}
		l2, err := parseConfList(out)
		if err != nil {
			t.Fatalf("append made %q unparsable: %v", out, err)
		}
		if n := len(l2.plugins); n != len(l.plugins)+1 || l2.types[n-1] != PluginType {
			t.Fatalf("append gave types %v", l2.types)
		}
		if back := l2.remove(len(l2.plugins) - 1); !bytes.Equal(back, []byte(text)) {
			t.Fatalf("remove(append(x)) = %q, want %q", back, text)
		}
	})
}

// TestConfAsList checks a single-plugin file survives the trip into a list and back unchanged.
func TestConfAsList(t *testing.T) {
	for _, conf := range []string{flannelConf, `{"cniVersion":"1.0.0","name":"b","type":"bridge"}` + "\n"} {
		list := confAsList([]byte(conf), "0.3.1", "cbr0")
		if _, err := libcni.NetworkConfFromBytes(list); err != nil {
			t.Fatalf("confAsList: %v\n%s", err, list)
		}
		var c struct{ CNIVersion, Name string }
		json.Unmarshal([]byte(conf), &c)
		back, ok := listAsConf(confAsList([]byte(conf), c.CNIVersion, c.Name))
		if !ok || string(back) != conf {
			t.Errorf("listAsConf(confAsList(%q)) = %q, %v", conf, back, ok)
		}
	}
	// A list somebody changed is not turned back.
	edited := bytes.Replace(confAsList([]byte(flannelConf), "0.3.1", "cbr0"), []byte(`"name": "cbr0",`), []byte(`"name": "cbr0", "disableCheck": true,`), 1)
	if _, ok := listAsConf(edited); ok {
		t.Error("listAsConf accepted an edited list")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestEntryExcludeNamespaces checks nil keeps the plugin's default and empty excludes none.
func TestEntryExcludeNamespaces(t *testing.T) {
	for _, tt := range []struct {
		exclude  []string
		excluded bool // is kube-system excluded, as the plugin reads the entry
	}{{nil, true}, {[]string{}, false}, {[]string{"infra"}, false}} {
		b, err := json.Marshal(InstallConfig{ExcludeNamespaces: tt.exclude}.entry())
		if err != nil {
			t.Fatal(err)
		}
		conf, err := ParseConfig(b)
		if err != nil || conf.Excluded("kube-system") != tt.excluded {
			t.Errorf("ExcludeNamespaces %#v: entry %s excludes kube-system: %v, want %v (%v)", tt.exclude, b, conf.Excluded("kube-system"), tt.excluded, err)
		}
	}
}

// TestReinstallWritesNothing: the agent re-runs Install periodically (the primary plugin may
// rewrite its configuration); when amesh-cni is already chained and the binary current, nothing
// is written, while a configuration the primary plugin rewrote gets the entry back.
func TestReinstallWritesNothing(t *testing.T) {
	c := installConfig(t)
	writeFiles(t, c.ConfDir, map[string]string{"10-calico.conflist": tabList}, 0o644)
	if err := Install(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	inode := func(p string) uint64 {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	conf, bin := filepath.Join(c.ConfDir, "10-calico.conflist"), filepath.Join(c.BinDir, PluginType)
	before, binBefore := inode(conf), inode(bin)
	if err := Install(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if inode(conf) != before || inode(bin) != binBefore {
		t.Error("a second Install rewrote an up-to-date configuration or binary")
	}
	writeFiles(t, c.ConfDir, map[string]string{"10-calico.conflist": tabList}, 0o644) // the primary plugin rewrites it
	if err := Install(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if types, _ := chain(t, conf); !slices.Equal(types, []string{"bridge", PluginType}) {
		t.Errorf("after the primary plugin rewrote its list, Install chains %v", types)
	}
}

// TestKeep: a primary plugin rewriting its configuration gets amesh-cni chained again, and a
// rotated service-account token reaches the plugin's kubeconfig, within an interval.
func TestKeep(t *testing.T) {
	c := installConfig(t)
	conf := filepath.Join(c.ConfDir, "10-calico.conflist")
	writeFiles(t, c.ConfDir, map[string]string{"10-calico.conflist": tabList}, 0o644)
	sadir := t.TempDir()
	sa := ServiceAccount{Server: "https://10.96.0.1:443", CAFile: filepath.Join(sadir, "ca.crt"), TokenFile: filepath.Join(sadir, "token")}
	writeFiles(t, sadir, map[string]string{"ca.crt": "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n", "token": "token-1"}, 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Keep(ctx, c, &sa, "/etc/cni/net.d", 20*time.Millisecond, nil); close(done) }()
	defer func() { cancel(); <-done }()
	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	chained := func() bool {
		b, err := os.ReadFile(conf)
		return err == nil && strings.Contains(string(b), `"amesh-cni"`) && strings.Contains(string(b), "/etc/cni/net.d/"+KubeconfigFile)
	}
	eventually("amesh-cni chained", chained)
	writeFiles(t, c.ConfDir, map[string]string{"10-calico.conflist": tabList}, 0o644)
	eventually("amesh-cni chained again after the primary plugin rewrote its list", chained)
	writeFiles(t, sadir, map[string]string{"token": "token-2"}, 0o600)
	eventually("the rotated token in the kubeconfig", func() bool {
		b, _ := os.ReadFile(filepath.Join(c.ConfDir, KubeconfigFile))
		return strings.Contains(string(b), "token-2")
	})
}
