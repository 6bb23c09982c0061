package ociimage

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Annotations on the archive's index entry naming the image: containerd's importer takes the
// first, the OCI image-layout specification defines the second (the tag alone).
const (
	annotationImageName = "io.containerd.image.name"
	annotationRefName   = "org.opencontainers.image.ref.name"
)

// WriteArchive writes img, tagged tag, as one tar that is at once an OCI image layout (oci-layout,
// index.json, blobs/sha256/…) and a Docker archive (a manifest.json pointing at the same blobs),
// as `docker save` writes since Docker 25: containerd's `ctr images import` (so `kind load
// image-archive`), `docker load`, podman and crane all read it. Entries are in a fixed order
// with the time given, so the same image gives the same bytes.
func WriteArchive(w io.Writer, tag name.Tag, img v1.Image, modTime time.Time) error {
	manifest, err := img.RawManifest()
	if err != nil {
		return fmt.Errorf("ociimage: manifest: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("ociimage: digest: %w", err)
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("ociimage: config: %w", err)
	}
	configName, err := img.ConfigName()
	if err != nil {
		return fmt.Errorf("ociimage: config digest: %w", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return fmt.Errorf("ociimage: media type: %w", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("ociimage: layers: %w", err)
	}
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: mt,
			Digest:    digest,
			Size:      int64(len(manifest)),
			Annotations: map[string]string{
				annotationImageName: tag.Name(),
				annotationRefName:   tag.TagStr(),
			},
		}},
	})
	if err != nil {
		return err
	}
	dockerManifest := []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{Config: blobPath(configName), RepoTags: []string{tag.Name()}}}

	tw := tar.NewWriter(w)
	file := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: modTime}); err != nil {
			return fmt.Errorf("ociimage: %s: %w", name, err)
		}
		_, err := tw.Write(b)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: modTime}); err != nil {
			return err
		}
	}
	for _, l := range layers {
		h, err := l.Digest()
		if err != nil {
			return fmt.Errorf("ociimage: layer digest: %w", err)
		}
		size, err := l.Size()
		if err != nil {
			return fmt.Errorf("ociimage: layer size: %w", err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("ociimage: layer: %w", err)
		}
		err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: blobPath(h), Mode: 0o644, Size: size, ModTime: modTime})
		if err == nil {
			_, err = io.Copy(tw, rc)
		}
		rc.Close()
		if err != nil {
			return fmt.Errorf("ociimage: layer %s: %w", h, err)
		}
		dockerManifest[0].Layers = append(dockerManifest[0].Layers, blobPath(h))
	}
	dm, err := json.Marshal(dockerManifest)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{
		{blobPath(configName), config},
		{blobPath(digest), manifest},
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"manifest.json", dm},
	} {
		if err := file(f.name, f.b); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	return nil
}

// WriteArchiveFile is WriteArchive to the file at path, which it replaces only once the archive
// is complete.
func WriteArchiveFile(path string, tag name.Tag, img v1.Image, modTime time.Time) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := WriteArchive(tmp, tag, img, modTime); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	return nil
}

func blobPath(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }
