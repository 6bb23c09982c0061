package ociimage

import (
	"context"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Push uploads img to ref's registry with the credentials `docker login` (or `crane auth login`)
// stored, as any registry client does. transport nil is the default one.
func Push(ctx context.Context, ref name.Reference, img v1.Image, transport http.RoundTripper) error {
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	if transport != nil {
		opts = append(opts, remote.WithTransport(transport))
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		return fmt.Errorf("ociimage: push %s: %w", ref, err)
	}
	return nil
}
