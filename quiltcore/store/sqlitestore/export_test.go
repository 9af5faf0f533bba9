package sqlitestore

import (
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store/internal/storeutil"
)

// RowValues are the data and names columns the store writes for e, for
// BenchmarkRawInsert to write the same rows.
func RowValues(e *quiltv1.Event) (data []byte, names string, err error) {
	data, err = appendStoredData(nil, new(quiltv1.Event), e, storeutil.TimeNS(e))
	_, names = rowNames(e.GetUser())
	return data, names, err
}

// PageSize is the page size of the store's files.
const PageSize = pageSize
