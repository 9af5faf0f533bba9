package mongostore_test

import (
	"context"
	"testing"
	"time"

	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/mongostore"
	"github.com/quilt/quilt/quiltcore/store/storetest"
	"github.com/quilt/quilt/quiltcore/testenv"
)

// server is one MongoDB-wire server per test binary run would be cheaper,
// but testenv ties servers to a test's lifetime; FerretDB starts in ~10 ms.
func storage(t *testing.T) func(t *testing.T) store.Store {
	uri := testenv.FerretDB(t)
	db := testenv.DatabaseName(t)
	return func(t *testing.T) store.Store {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s, err := mongostore.Open(ctx, mongostore.Options{URI: uri, Database: db})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

func TestContract(t *testing.T) {
	testenv.Require(t, testenv.ComponentMongoDB)
	storetest.Run(t, storage, storetest.Options{ConcurrentIDs: 200})
}
