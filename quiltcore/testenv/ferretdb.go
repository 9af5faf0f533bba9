package testenv

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FerretDB returns the URI of a MongoDB-wire server for this test:
// QUILT_TEST_MONGODB_URI when set (a real MongoDB, shared: use DatabaseName
// for isolation), otherwise a private FerretDB (SQLite backend) started in
// t.TempDir() and killed when the test ends.
func FerretDB(t testing.TB) string {
	t.Helper()
	if uri := os.Getenv("QUILT_TEST_MONGODB_URI"); uri != "" {
		return uri
	}
	Require(t, ComponentFerretDB)
	bin, _ := FerretDBBin()
	dir := t.TempDir()
	out := newLineCatcher()
	// Port 0: the wrapper binds first and reports the port, so there is no
	// window for another process to take it.
	p, err := startProc("ferretdb", dir, filepath.Join(dir, "ferretdb.log"), out, bin,
		"-listen", "127.0.0.1:0", "-dir", filepath.Join(dir, "data"))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	p.register(t)
	var uri string
	select {
	case uri = <-out.first:
	case <-p.done:
		t.Fatalf("testenv: %v", p.failure("exited during startup"))
	case <-time.After(startTimeout):
		t.Fatalf("testenv: %v", p.failure(fmt.Sprintf("printed no URI within %v", startTimeout)))
	}
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "mongodb" || u.Host == "" {
		t.Fatalf("testenv: %v", p.failure(fmt.Sprintf("printed %q, want a mongodb:// URI", uri)))
	}
	// The listener is bound before the URI is printed; one dial confirms it
	// accepts, so the first driver operation does not race the accept loop.
	if err := waitFor(p, startTimeout, func() (bool, error) {
		c, err := net.DialTimeout("tcp", u.Host, time.Second)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	}); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return uri
}
