//go:build !unix

package identity

// lockDir does nothing where there is no flock: agents run on Linux; elsewhere only tests
// and tools open a CA directory, one at a time.
func lockDir(string) (func(), error) { return func() {}, nil }
