package runtime

import (
	"context"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// TestSink lets external tests stand in for the link.
type TestSink struct {
	Publish func(ctx context.Context, evs []*quiltv1.Event, cursors []*quiltv1.Cursor) error
	Status  func(st *quiltv1.ServerStatus)
}

func (t TestSink) publish(ctx context.Context, evs []*quiltv1.Event, cursors []*quiltv1.Cursor) error {
	if t.Publish == nil {
		return nil
	}
	return t.Publish(ctx, evs, cursors)
}

func (t TestSink) status(st *quiltv1.ServerStatus) {
	if t.Status != nil {
		t.Status(st)
	}
}

// SetSink replaces the link of m (before Run).
func SetSink(m *Manager, s TestSink) { m.link = s }

// Control exposes the ServerControl path.
func Control(m *Manager, c *quiltv1.ServerControl) { m.control(c) }
