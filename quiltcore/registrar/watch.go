package registrar

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"time"
)

// WatchWait is how long one blocking query of a watch waits for a change.
const WatchWait = 5 * time.Minute

// Watch backoff bounds after a failed blocking query.
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 10 * time.Second
)

// FetchFunc is one blocking query: return when the index differs from
// waitIndex (or the wait ends) with the list and its index.
type FetchFunc func(ctx context.Context, waitIndex uint64) ([]Instance, uint64, error)

// WatchLoop turns blocking queries into the stream Registrar.Watch returns:
// it sends the list at once and again when it changes, resets the index when
// it goes backwards (a restarted or different server), backs off on errors,
// and drops results equal to the last one sent. The channel closes when ctx
// ends. done, when not nil, is called as the goroutine exits (backends use
// it to account for their goroutines on Close).
func WatchLoop(ctx context.Context, logger *slog.Logger, service string, fetch FetchFunc, done func()) <-chan []Instance {
	ch := make(chan []Instance)
	go func() {
		defer func() {
			close(ch)
			if done != nil {
				done()
			}
		}()
		var (
			index   uint64
			last    []Instance
			sent    bool
			backoff = watchBackoffMin
		)
		for ctx.Err() == nil {
			list, next, err := fetch(ctx, index)
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, ErrClosed) {
					return
				}
				if logger != nil {
					logger.Warn("registrar watch failed; retrying", "service", service, "err", err, "retry_in", backoff)
				}
				// Jitter keeps a fleet of watchers from hammering a recovering
				// agent in lock step.
				d := backoff/2 + rand.N(backoff/2+1)
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
				backoff = min(backoff*2, watchBackoffMax)
				continue
			}
			backoff = watchBackoffMin
			switch {
			case next < index:
				// The index went backwards: start over with a full read.
				index = 0
			case next == 0:
				// An index of 0 would never block.
				index = 1
			default:
				index = next
			}
			SortInstances(list)
			if sent && reflect.DeepEqual(normalize(list), normalize(last)) {
				continue
			}
			select {
			case ch <- list:
				last, sent = list, true
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// SortInstances orders instances by id so lists compare and print stably.
func SortInstances(list []Instance) {
	slices.SortFunc(list, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
}

// normalize makes nil and empty slices and maps compare equal.
func normalize(list []Instance) []Instance {
	out := make([]Instance, len(list))
	for i, in := range list {
		if len(in.Tags) == 0 {
			in.Tags = nil
		}
		if len(in.Meta) == 0 {
			in.Meta = nil
		}
		out[i] = in
	}
	return out
}
