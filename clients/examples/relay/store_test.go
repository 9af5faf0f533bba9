package main

import (
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

type storeQ = store.EventQuery

func storeQuery(f *quiltv1.EventFilter) storeQ {
	return store.EventQuery{Filter: f, Limit: store.MaxLimit, OldestFirst: true}
}
