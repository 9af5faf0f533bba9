package sqlitestore_test

import (
	"testing"

	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
	"github.com/quilt/quilt/quiltcore/store/storetest"
)

func storage(t *testing.T) func(t *testing.T) store.Store {
	dir := t.TempDir()
	return func(t *testing.T) store.Store {
		s, err := sqlitestore.Open(dir, sqlitestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

func TestContract(t *testing.T) {
	storetest.Run(t, storage, storetest.Options{})
}

func TestFTSAvailable(t *testing.T) {
	s, err := sqlitestore.Open(t.TempDir(), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The Makefile builds with -tags sqlite_fts5; a test run without it
	// still passes the contract (by scanning) but should be noticed.
	if !s.HasFTS() {
		t.Skip("built without -tags sqlite_fts5: text search scans")
	}
}
