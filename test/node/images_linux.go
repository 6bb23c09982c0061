package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/amesh-dev/amesh/ociimage"
)

// Images are the archives of the images a real-node test imports into its nodes.
type Images struct {
	// Pause is SandboxImage: testapp, entrypoint `testapp pause`.
	Pause string
	// App is AppImage: testapp (serve, get, loop), no entrypoint: pods give the command.
	App string
	// Amesh is AmeshImage, what `make image` builds: amesh-agent, amesh-cni, amesh-waypoint,
	// ameshctl.
	Amesh string
}

// The names the images are imported under; pods use them with imagePullPolicy Never (or
// IfNotPresent: nothing can be pulled here).
const (
	AppImage   = "amesh.test/testapp:dev"
	AmeshImage = "ghcr.io/amesh-dev/amesh:dev"
)

// BuildImages builds testapp and amesh's binaries statically (CGO_ENABLED=0, -trimpath, as
// `make image` does) and writes the three image archives into dir.
func BuildImages(ctx context.Context, dir string) (Images, error) {
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return Images{}, err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -buildid=", "-o", bin+"/",
		"github.com/amesh-dev/amesh/test/node/testapp",
		"github.com/amesh-dev/amesh/cmd/amesh-agent",
		"github.com/amesh-dev/amesh/cmd/amesh-cni",
		"github.com/amesh-dev/amesh/cmd/amesh-waypoint",
		"github.com/amesh-dev/amesh/cmd/ameshctl")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Images{}, fmt.Errorf("node: build the images' binaries: %w\n%s", err, out)
	}
	platform := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	when := time.Unix(0, 0).UTC()
	imgs := Images{Pause: filepath.Join(dir, "pause.tar"), App: filepath.Join(dir, "app.tar"), Amesh: filepath.Join(dir, "amesh.tar")}
	for _, im := range []struct {
		path, tag  string
		bins       []string
		entrypoint []string
	}{
		{imgs.Pause, SandboxImage, []string{"testapp"}, []string{"testapp", "pause"}},
		{imgs.App, AppImage, []string{"testapp"}, nil},
		{imgs.Amesh, AmeshImage, []string{"amesh-agent", "amesh-cni", "amesh-waypoint", "ameshctl"}, nil},
	} {
		var paths []string
		for _, b := range im.bins {
			paths = append(paths, filepath.Join(bin, b))
		}
		img, err := ociimage.Build(ociimage.Spec{Binaries: paths, Platform: platform, Created: when, Entrypoint: im.entrypoint})
		if err != nil {
			return Images{}, err
		}
		tag, err := name.NewTag(im.tag)
		if err != nil {
			return Images{}, err
		}
		if err := ociimage.WriteArchiveFile(im.path, tag, img, when); err != nil {
			return Images{}, err
		}
	}
	return imgs, nil
}
