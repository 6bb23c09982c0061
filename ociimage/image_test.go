package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var linuxAMD64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// binaries writes two fake programs and returns their paths.
func binaries(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	var out []string
	for name, body := range map[string]string{"amesh-agent": "agent program", "amesh-cni": "cni program"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o700); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func archive(t *testing.T, img v1.Image, when time.Time) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := WriteArchive(&b, name.MustParseReference("example.test/amesh:dev").(name.Tag), img, when); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestReproducible: the same binaries and time give the same digest and the same archive bytes,
// whatever the files' own times and the order they are given in; another time, another digest.
func TestReproducible(t *testing.T) {
	bins := binaries(t)
	when := time.Unix(1_800_000_000, 0)
	a, err := Build(Spec{Binaries: bins, Platform: linuxAMD64, Created: when})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range bins {
		if err := os.Chtimes(p, time.Now(), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	b, err := Build(Spec{Binaries: []string{bins[1], bins[0]}, Platform: linuxAMD64, Created: when})
	if err != nil {
		t.Fatal(err)
	}
	if da, db := digest(t, a), digest(t, b); da != db {
		t.Errorf("same inputs, digests %s and %s", da, db)
	}
	if !bytes.Equal(archive(t, a, when), archive(t, b, when)) {
		t.Error("same image, different archive bytes")
	}
	c, err := Build(Spec{Binaries: bins, Platform: linuxAMD64, Created: when.Add(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, a) == digest(t, c) {
		t.Error("another creation time gave the same digest")
	}
}

// TestContents: the layer holds the binaries at BinDir with mode 0755 and a sticky /tmp; the
// config has the platform, PATH, entrypoint and labels.
func TestContents(t *testing.T) {
	when := time.Unix(1_800_000_000, 0)
	img, err := Build(Spec{Binaries: binaries(t), Platform: linuxAMD64, Created: when, Entrypoint: []string{"amesh-agent"}, Labels: map[string]string{"org.opencontainers.image.revision": "abc"}})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || !cf.Created.Equal(when) {
		t.Errorf("config platform/created: %s/%s %v", cf.OS, cf.Architecture, cf.Created)
	}
	if len(cf.Config.Env) != 1 || !strings.HasPrefix(cf.Config.Env[0], "PATH="+BinDir+":") {
		t.Errorf("env %q: want PATH starting with %s", cf.Config.Env, BinDir)
	}
	if len(cf.Config.Entrypoint) != 1 || cf.Config.Labels["org.opencontainers.image.revision"] != "abc" {
		t.Errorf("entrypoint %q labels %v", cf.Config.Entrypoint, cf.Config.Labels)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
	}
	for _, tc := range []struct {
		name string
		mode int64
	}{
		{"usr/local/bin/", 0o755},
		{"usr/local/bin/amesh-agent", 0o755},
		{"usr/local/bin/amesh-cni", 0o755},
		{"tmp/", 0o1777},
	} {
		h, ok := got[tc.name]
		if !ok {
			t.Errorf("layer lacks %s (has %v)", tc.name, got)
			continue
		}
		if h.Mode != tc.mode || h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(when) {
			t.Errorf("%s: mode %o uid %d gid %d time %v, want %o root %v", tc.name, h.Mode, h.Uid, h.Gid, h.ModTime, tc.mode, when)
		}
	}
}

// TestArchiveReadable: the archive reads back as a Docker archive (manifest.json, by tag) and as
// an OCI layout (index.json, with the name containerd imports it under), both the same image.
func TestArchiveReadable(t *testing.T) {
	when := time.Unix(1_800_000_000, 0)
	img, err := Build(Spec{Binaries: binaries(t), Platform: linuxAMD64, Created: when})
	if err != nil {
		t.Fatal(err)
	}
	want := digest(t, img)
	b := archive(t, img, when)
	path := filepath.Join(t.TempDir(), "amesh.tar")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	tag := name.MustParseReference("example.test/amesh:dev").(name.Tag)
	docker, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatalf("as a Docker archive: %v", err)
	}
	// A Docker archive stores no manifest (readers make a Docker one), so the image is the same
	// when its config (the image ID) and layers are.
	wantConfig, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := docker.ConfigName(); err != nil || got != wantConfig {
		t.Errorf("Docker archive: config %s (%v), want %s", got, err, wantConfig)
	}
	if err := validLayers(docker); err != nil {
		t.Errorf("Docker archive: %v", err)
	}
	if got, want := layerDigests(t, docker), layerDigests(t, img); !slices.Equal(got, want) {
		t.Errorf("Docker archive: layers %v, want %v", got, want)
	}
	dir := t.TempDir()
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("as an OCI layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != want {
		t.Fatalf("OCI index %+v, want one manifest %s", im.Manifests, want)
	}
	if a := im.Manifests[0].Annotations; a[annotationImageName] != "example.test/amesh:dev" || a[annotationRefName] != "dev" {
		t.Errorf("index annotations %v", a)
	}
	oci, err := idx.Image(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := validLayers(oci); err != nil {
		t.Errorf("OCI layout image: %v", err)
	}
}

func layerDigests(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []v1.Hash
	for _, l := range layers {
		h, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, h)
	}
	return out
}

func validLayers(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// TestPush: the image pushed to a registry (go-containerregistry's own, on loopback) is pulled
// back with the same digest.
func TestPush(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	img, err := Build(Spec{Binaries: binaries(t), Platform: linuxAMD64, Created: time.Unix(1_800_000_000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/amesh/amesh:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}
	back, err := remote.Image(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := digest(t, back), digest(t, img); got != want {
		t.Errorf("pulled %s, pushed %s", got, want)
	}
}

// TestBuildRefuses: what Build refuses, each with its reason.
func TestBuildRefuses(t *testing.T) {
	bins := binaries(t)
	dup := filepath.Join(t.TempDir(), filepath.Base(bins[0]))
	if err := os.WriteFile(dup, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		spec Spec
		want string
	}{
		{"no binaries", Spec{Platform: linuxAMD64}, "no binaries"},
		{"no platform", Spec{Binaries: bins}, "platform"},
		{"same name twice", Spec{Binaries: append([]string{dup}, bins...), Platform: linuxAMD64}, "same name"},
		{"missing file", Spec{Binaries: []string{filepath.Join(t.TempDir(), "gone")}, Platform: linuxAMD64}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}
