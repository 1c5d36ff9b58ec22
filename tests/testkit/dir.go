package testkit

import (
	"os"
	"testing"
)

// ShortDir returns a fresh directory with a short path, so that unix socket
// paths in it stay under the 107-byte limit of sun_path. It is removed when
// the test ends.
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
