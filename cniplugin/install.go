package cniplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	cniv1 "github.com/amesh-dev/amesh/api/cni/v1"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/version"
)

// InstallConfig says where install-cni puts amesh-cni and what its configuration entry says.
// Directories are as the installer sees them (e.g. the host's /etc/cni/net.d mounted at
// /host/etc/cni/net.d); AgentSocket, Kubeconfig and LogFile are written into the entry and so are
// paths on the host, where the runtime runs the plugin.
type InstallConfig struct {
	BinDir       string // the CNI bin directory the plugin is copied into, as PluginType
	ConfDir      string // the CNI configuration directory whose primary configuration gets the entry
	PluginBinary string // the amesh-cni binary to copy

	AgentSocket       string        // "agentSocket"; empty: cniv1.DefaultSocket
	Kubeconfig        string        // "kubeconfig"; empty: none (then an unreachable agent fails every ADD outside ExcludeNamespaces)
	ExcludeNamespaces []string      // "excludeNamespaces"; nil: the plugin's default (kube-system), empty: none
	Timeout           time.Duration // "timeout"; 0: the plugin's default
	LogFile           string        // "logFile"; empty: no log
}

// entry is amesh-cni's plugin entry as Install writes it, in this key order.
type entry struct {
	Type              string    `json:"type"`
	AgentSocket       string    `json:"agentSocket"`
	Kubeconfig        string    `json:"kubeconfig,omitempty"`
	ExcludeNamespaces *[]string `json:"excludeNamespaces,omitempty"` // nil: the plugin's default; [] stays []
	Timeout           string    `json:"timeout,omitempty"`
	LogFile           string    `json:"logFile,omitempty"`
	// ConvertedFrom names the single-plugin file Install turned into this list, so that
	// Uninstall can give it back. The plugin ignores it.
	ConvertedFrom string `json:"convertedFrom,omitempty"`
}

func (c InstallConfig) entry() entry {
	e := entry{
		Type:        PluginType,
		AgentSocket: c.AgentSocket,
		Kubeconfig:  c.Kubeconfig,
		LogFile:     c.LogFile,
	}
	if c.ExcludeNamespaces != nil {
		e.ExcludeNamespaces = &c.ExcludeNamespaces
	}
	if e.AgentSocket == "" {
		e.AgentSocket = cniv1.DefaultSocket
	}
	if c.Timeout > 0 {
		e.Timeout = c.Timeout.String()
	}
	return e
}

// confExtensions are the configuration files runtimes read, as containerd and CRI-O list them.
var confExtensions = []string{".conflist", ".conf", ".json"}

// Install copies the plugin binary into BinDir and chains amesh-cni, as the last plugin, into
// the node's primary CNI configuration: the lexicographically first *.conflist, *.conf or *.json
// of ConfDir, the one containerd and CRI-O use (unless configured with a network name), ignoring
// files named amesh-cni*. It is idempotent: an amesh-cni entry already there is replaced, and
// moved to the end if it is no longer last.
//
// The file is edited as text: every other byte stays as it was. A single-plugin file (.conf,
// .json) cannot hold a chain, so it becomes a list: NAME.conf is replaced by NAME.conflist (same
// mode), which sorts at the same place; Uninstall turns it back into NAME.conf if nothing else
// changed the list meanwhile, byte for byte but for whitespace around the JSON object, which
// comes back as one trailing newline. Files are written atomically (temporary file, rename), so
// a runtime never reads half a file.
//
// With no primary configuration (the primary plugin has not written it yet) Install fails: its
// caller, the DaemonSet's init container, fails and is retried. ctx cancels it between steps.
func Install(ctx context.Context, c InstallConfig) error {
	if c.BinDir == "" || c.ConfDir == "" || c.PluginBinary == "" {
		return errors.New("cniplugin: install: BinDir, ConfDir and PluginBinary are all required")
	}
	if err := copyBinary(c.PluginBinary, filepath.Join(c.BinDir, PluginType)); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cniplugin: install: %w", err)
	}
	path, text, mode, err := primaryConfig(c.ConfDir)
	if err != nil {
		return err
	}
	e := c.entry()
	out := path
	if ext := filepath.Ext(path); ext != ".conflist" {
		var conf struct {
			CNIVersion string `json:"cniVersion"`
			Name       string `json:"name"`
		}
		if err := json.Unmarshal(text, &conf); err != nil {
			return fmt.Errorf("cniplugin: install: %s: %w", path, err)
		}
		text = confAsList(text, conf.CNIVersion, conf.Name)
		out = strings.TrimSuffix(path, ext) + ".conflist"
		e.ConvertedFrom = filepath.Base(path)
	}
	l, err := parseConfList(text)
	if err != nil {
		return fmt.Errorf("cniplugin: install: %s: %w", path, err)
	}
	// Take out the entries of an earlier install, keeping what they knew of a conversion.
	for i := l.index(PluginType); i >= 0; i = l.index(PluginType) {
		var old entry
		if json.Unmarshal(l.text[l.plugins[i].start:l.plugins[i].end], &old) == nil && e.ConvertedFrom == "" {
			e.ConvertedFrom = old.ConvertedFrom
		}
		if l, err = parseConfList(l.remove(i)); err != nil {
			return fmt.Errorf("cniplugin: install: %s without the old amesh-cni entry: %w", path, err)
		}
	}
	if len(l.plugins) == 0 {
		return fmt.Errorf("cniplugin: install: %s has no plugin but amesh-cni: no primary plugin to chain after", path)
	}
	next, err := l.append(e)
	if err != nil {
		return fmt.Errorf("cniplugin: install: %s: %w", path, err)
	}
	if err := checkChained(next); err != nil {
		return fmt.Errorf("cniplugin: install: %s: the edited list does not load: %w", path, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cniplugin: install: %w", err)
	}
	if out == path && bytes.Equal(next, text) {
		return nil // already chained as wanted: no write, so a periodic re-install is free
	}
	if err := writeFileAtomic(out, next, mode); err != nil {
		return err
	}
	if out != path {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("cniplugin: install: remove %s, now %s: %w", path, filepath.Base(out), err)
		}
	}
	return nil
}

// Uninstall takes amesh-cni out of every configuration list of ConfDir that has it (a list Install
// made out of a single-plugin file becomes that file again), and removes the plugin binary from
// BinDir and the kubeconfig WriteKubeconfig wrote into ConfDir. What is already gone is no error.
func Uninstall(c InstallConfig) error {
	if c.BinDir == "" || c.ConfDir == "" {
		return errors.New("cniplugin: uninstall: BinDir and ConfDir are required")
	}
	files, err := os.ReadDir(c.ConfDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cniplugin: uninstall: %w", err)
	}
	var errs []error
	for _, f := range files {
		if f.Type().IsRegular() && filepath.Ext(f.Name()) == ".conflist" {
			if err := uninstallFrom(filepath.Join(c.ConfDir, f.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, p := range []string{filepath.Join(c.BinDir, PluginType), filepath.Join(c.ConfDir, KubeconfigFile)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cniplugin: uninstall: %w", err))
		}
	}
	return errors.Join(errs...)
}

// uninstallFrom removes the amesh-cni entries of the configuration list at path, if it has any.
// Files it cannot parse are not its to fix, and are left alone.
func uninstallFrom(path string) error {
	text, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("cniplugin: uninstall: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("cniplugin: uninstall: %w", err)
	}
	l, err := parseConfList(text)
	if err != nil || l.index(PluginType) < 0 {
		return nil
	}
	convertedFrom := ""
	for i := l.index(PluginType); i >= 0; i = l.index(PluginType) {
		var e entry
		if json.Unmarshal(l.text[l.plugins[i].start:l.plugins[i].end], &e) == nil && e.ConvertedFrom != "" {
			convertedFrom = e.ConvertedFrom
		}
		if l, err = parseConfList(l.remove(i)); err != nil {
			return fmt.Errorf("cniplugin: uninstall: %s without amesh-cni: %w", path, err)
		}
	}
	// Give the single-plugin file back if this list is still just what Install made of it and
	// nobody wrote that file anew meanwhile (the primary plugin's installer might have).
	if conf, ok := listAsConf(l.text); ok && validConvertedName(convertedFrom) {
		orig := filepath.Join(filepath.Dir(path), convertedFrom)
		if _, err := os.Lstat(orig); errors.Is(err, fs.ErrNotExist) {
			if err := writeFileAtomic(orig, conf, fi.Mode().Perm()); err != nil {
				return err
			}
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("cniplugin: uninstall: %w", err)
			}
			return nil
		}
	}
	return writeFileAtomic(path, l.text, fi.Mode().Perm())
}

// validConvertedName reports whether name, read back from a configuration file, is one Install
// could have written: a bare file name with a single-plugin extension, never a path elsewhere.
func validConvertedName(name string) bool {
	ext := filepath.Ext(name)
	return name != "" && filepath.Base(name) == name && !strings.HasPrefix(name, ".") && (ext == ".conf" || ext == ".json")
}

// primaryConfig finds the primary configuration of dir and reads it. It fails if there is none,
// or if the first one does not load: a runtime would not skip it either.
func primaryConfig(dir string) (path string, text []byte, mode fs.FileMode, err error) {
	files, err := os.ReadDir(dir) // sorted by name
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", nil, 0, fmt.Errorf("cniplugin: install: find the primary CNI configuration: %w", err)
	}
	for _, f := range files {
		name := f.Name()
		if f.IsDir() || strings.HasPrefix(name, PluginType) || !isConfFile(name) {
			continue
		}
		path = filepath.Join(dir, name)
		fi, err := os.Stat(path) // follows a symlink, as the runtime's read does
		if err != nil {
			return "", nil, 0, fmt.Errorf("cniplugin: install: %w", err)
		}
		if text, err = os.ReadFile(path); err != nil {
			return "", nil, 0, fmt.Errorf("cniplugin: install: %w", err)
		}
		if err := checkPrimary(path, text); err != nil {
			return "", nil, 0, fmt.Errorf("cniplugin: install: the primary CNI configuration %s: %w (fix or remove it; runtimes use the first file by name)", path, err)
		}
		return path, text, fi.Mode().Perm(), nil
	}
	return "", nil, 0, fmt.Errorf("cniplugin: install: no CNI configuration (*.conflist, *.conf, *.json) in %s: "+
		"amesh-cni chains after the primary CNI plugin, which has not written its configuration yet (is it installed and running on this node?)", dir)
}

func isConfFile(name string) bool {
	for _, ext := range confExtensions {
		if filepath.Ext(name) == ext {
			return true
		}
	}
	return false
}

// checkPrimary checks that text loads as the runtime would load the file at path, and that its
// version allows chaining.
func checkPrimary(path string, text []byte) error {
	var (
		ver     string
		plugins int
	)
	if filepath.Ext(path) == ".conflist" {
		l, err := libcni.NetworkConfFromBytes(text)
		if err != nil {
			return err
		}
		ver, plugins = l.CNIVersion, len(l.Plugins)
	} else {
		c, err := libcni.NetworkPluginConfFromBytes(text) // fails without a "type": a list in a .conf
		if err != nil {
			return err
		}
		ver, plugins = c.Network.CNIVersion, 1
	}
	if plugins == 0 {
		return errors.New("no plugins")
	}
	if ok, err := version.GreaterThanOrEqualTo(orDefault(ver, "0.1.0"), "0.3.0"); err != nil || !ok {
		return fmt.Errorf("cniVersion %q predates chaining (0.3.0): amesh-cni cannot chain after it", ver)
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// checkChained checks that the list text loads and ends with amesh-cni.
func checkChained(text []byte) error {
	l, err := libcni.NetworkConfFromBytes(text)
	if err != nil {
		return err
	}
	if n := len(l.Plugins); n < 2 || l.Plugins[n-1].Network.Type != PluginType {
		return errors.New("amesh-cni is not the last of two or more plugins")
	}
	return nil
}

// copyBinary copies the plugin to dst atomically, so a runtime starting it meanwhile runs either
// the old binary or the new, never half of one (and a running one is not written to: ETXTBSY).
func copyBinary(src, dst string) error {
	if same, _ := sameContent(src, dst); same {
		return nil // a periodic re-install leaves an up-to-date binary alone
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("cniplugin: install: plugin binary: %w", err)
	}
	defer in.Close()
	return writeAtomic(dst, 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
}

func sameContent(a, b string) (bool, error) {
	x, err := os.ReadFile(a)
	if err != nil {
		return false, err
	}
	y, err := os.ReadFile(b)
	if err != nil {
		return false, err
	}
	return bytes.Equal(x, y), nil
}

func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	return writeAtomic(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// writeAtomic writes path by a temporary file of the same directory, named so no runtime reads it
// (a dot file with no configuration extension), then renames it over path.
func writeAtomic(path string, mode fs.FileMode, write func(io.Writer) error) (err error) {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("cniplugin: write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := write(f); err != nil {
		return fmt.Errorf("cniplugin: write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("cniplugin: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("cniplugin: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("cniplugin: write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("cniplugin: write %s: %w", path, err)
	}
	return nil
}
