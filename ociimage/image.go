// Package ociimage builds amesh's container image without a container engine: one layer holding
// the static binaries, a config with the entrypoint and labels, every timestamp fixed so that the
// same binaries always give the same digest. It writes the image as one archive that both
// containerd (`ctr images import`, and so `kind load image-archive`) and Docker-archive readers
// load, and pushes it to a registry. go-containerregistry does the image model; this package only
// decides the image's contents and the archive's layout.
package ociimage

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BinDir is where the image keeps its binaries; it is the image's PATH, so the manifests in
// deploy/ name a binary by its file name alone.
const BinDir = "/usr/local/bin"

// Spec is what goes into an image.
type Spec struct {
	// Binaries are the host paths of the (static) programs copied into BinDir, under their base
	// names, mode 0755.
	Binaries []string
	// Platform is the binaries' OS and architecture, recorded in the config.
	Platform v1.Platform
	// Created is the time given to the config and to every file of the layer. Set it from the
	// source (the commit's time) for a reproducible image: the build time would make each build
	// a new digest.
	Created time.Time
	// Entrypoint is the config's entrypoint; nil leaves it unset (the manifests give a command).
	Entrypoint []string
	// Labels go into the config (org.opencontainers.image.* and the like).
	Labels map[string]string
}

// Build makes the image Spec describes: the empty base, one layer with BinDir and a world-writable
// /tmp (sticky, as a Pod's emptyDir would be absent when a user runs it by hand), and the config.
func Build(s Spec) (v1.Image, error) {
	if len(s.Binaries) == 0 {
		return nil, errors.New("ociimage: no binaries")
	}
	if s.Platform.OS == "" || s.Platform.Architecture == "" {
		return nil, errors.New("ociimage: platform needs an OS and an architecture")
	}
	layerTar, err := layerArchive(s.Binaries, s.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("ociimage: layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created:   v1.Time{Time: s.Created},
		CreatedBy: "ociimage: " + fmt.Sprint(baseNames(s.Binaries)) + " into " + BinDir,
	}})
	if err != nil {
		return nil, fmt.Errorf("ociimage: append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("ociimage: config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: s.Created}
	cf.OS, cf.Architecture, cf.Variant, cf.OSVersion = s.Platform.OS, s.Platform.Architecture, s.Platform.Variant, s.Platform.OSVersion
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.Env = []string{"PATH=" + BinDir + ":/usr/bin:/bin"}
	cf.Config.Labels = s.Labels
	cf.Config.WorkingDir = "/"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("ociimage: config: %w", err)
	}
	return img, nil
}

// layerArchive is the layer's tar: the directories, then each binary, every entry owned by root
// with the same time, in a fixed order.
func layerArchive(binaries []string, created time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: created})
	}
	for _, d := range []string{"usr", "usr/local", "usr/local/bin"} {
		if err := dir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := dir("tmp", 0o1777); err != nil {
		return nil, err
	}
	names := map[string]string{}
	for _, p := range binaries {
		base := filepath.Base(p)
		if other, dup := names[base]; dup {
			return nil, fmt.Errorf("ociimage: %s and %s have the same name in the image", other, p)
		}
		names[base] = p
	}
	for _, base := range slices.Sorted(func(yield func(string) bool) {
		for k := range names {
			if !yield(k) {
				return
			}
		}
	}) {
		b, err := os.ReadFile(names[base])
		if err != nil {
			return nil, fmt.Errorf("ociimage: %w", err)
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: path.Join(BinDir[1:], base), Mode: 0o755, Size: int64(len(b)), ModTime: created}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	slices.Sort(out)
	return out
}
