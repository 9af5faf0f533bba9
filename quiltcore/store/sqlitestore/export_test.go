package sqlitestore

import (
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store/internal/storeutil"
)

// RowValues are the data and names columns the store writes for e, for
// BenchmarkRawInsert to write the same rows.
func RowValues(e *quiltv1.Event) (data []byte, names string, err error) {
	data, err = storedData(e, storeutil.TimeNS(e))
	ns := storeutil.Names(e.GetUser())
	for i, n := range ns {
		ns[i] = normName(n)
	}
	return data, namesColumn(ns), err
}

// PageSize is the page size of the store's files.
const PageSize = pageSize
