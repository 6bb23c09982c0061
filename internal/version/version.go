// Package version is amesh's release, set at link time
// (-ldflags "-X github.com/amesh-dev/amesh/internal/version.Version=v1.2.3"); "dev" otherwise.
package version

// Version is the release of this build.
var Version = "dev"
