// Command amesh-image builds amesh's container image from static binaries, without a container
// engine, and writes it as an archive that containerd, kind and Docker load, or pushes it to a
// registry. `make image` runs it on the binaries it builds; the same binaries and --created give
// the same digest.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/amesh-dev/amesh/ociimage"
)

func main() { os.Exit(run()) }

// labels is a repeatable key=value flag.
type labels map[string]string

func (l labels) String() string { return fmt.Sprint(map[string]string(l)) }

func (l labels) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	l[k] = v
	return nil
}

func run() int {
	fs := flag.NewFlagSet("amesh-image", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `amesh-image [flags] BINARY...: an image with the binaries in /usr/local/bin (its PATH).
Writes --out (an OCI layout and a Docker archive in one tar: ctr images import, kind load
image-archive, docker load) and/or pushes to --push, with the credentials of docker login.

`)
		fs.PrintDefaults()
	}
	tag := fs.String("tag", "ghcr.io/amesh-dev/amesh:dev", "the image's name in the archive")
	out := fs.String("out", "", "write the archive here")
	push := fs.String("push", "", "push the image to this reference (registry/repository:tag)")
	created := fs.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "the image's time, Unix seconds (the commit's, for a reproducible image) [SOURCE_DATE_EPOCH]; default 0")
	platform := fs.String("platform", runtime.GOOS+"/"+runtime.GOARCH, "the binaries' os/arch[/variant]")
	lbl := labels{}
	fs.Var(lbl, "label", "a config label key=value (repeatable)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if fs.NArg() == 0 || (*out == "" && *push == "") {
		fmt.Fprintln(os.Stderr, "amesh-image: give the binaries, and --out or --push")
		fs.Usage()
		return 2
	}
	var when time.Time
	if *created != "" {
		sec, err := strconv.ParseInt(*created, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "amesh-image: --created %q: %v\n", *created, err)
			return 2
		}
		when = time.Unix(sec, 0).UTC()
	} else {
		when = time.Unix(0, 0).UTC()
	}
	p, err := v1.ParsePlatform(*platform)
	if err != nil {
		fmt.Fprintf(os.Stderr, "amesh-image: --platform: %v\n", err)
		return 2
	}
	t, err := name.NewTag(*tag)
	if err != nil {
		fmt.Fprintf(os.Stderr, "amesh-image: --tag: %v\n", err)
		return 2
	}
	img, err := ociimage.Build(ociimage.Spec{Binaries: fs.Args(), Platform: *p, Created: when, Labels: lbl})
	if err != nil {
		fmt.Fprintln(os.Stderr, "amesh-image:", err)
		return 1
	}
	digest, err := img.Digest()
	if err != nil {
		fmt.Fprintln(os.Stderr, "amesh-image:", err)
		return 1
	}
	if *out != "" {
		if err := ociimage.WriteArchiveFile(*out, t, img, when); err != nil {
			fmt.Fprintln(os.Stderr, "amesh-image:", err)
			return 1
		}
		st, err := os.Stat(*out)
		if err != nil {
			fmt.Fprintln(os.Stderr, "amesh-image:", err)
			return 1
		}
		fmt.Printf("%s %s %s (%.1f MiB)\n", t.Name(), digest, *out, float64(st.Size())/(1<<20))
	}
	if *push != "" {
		ref, err := name.ParseReference(*push)
		if err != nil {
			fmt.Fprintf(os.Stderr, "amesh-image: --push: %v\n", err)
			return 2
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := ociimage.Push(ctx, ref, img, nil); err != nil {
			fmt.Fprintln(os.Stderr, "amesh-image:", err)
			return 1
		}
		fmt.Printf("%s %s pushed\n", ref.Name(), digest)
	}
	return 0
}
