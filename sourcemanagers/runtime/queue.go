package runtime

import (
	"context"
	"errors"
	"sync"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"google.golang.org/grpc/codes"
)

// execFunc carries out one action on the session that owns the queue.
type execFunc func(ctx context.Context, a *quiltv1.Action) (sent int, err error)

// resultFunc receives how an action ended. It must not block for long.
type resultFunc func(*quiltv1.ActionResult)

type queued struct {
	a      *quiltv1.Action
	report resultFunc
}

// commandQueue is a server's command queue (seed 000): actions run one at a
// time in order, each after its own delay, with a throttle between
// commands (ThrottleBurst at once, then one per Throttle). A failing action
// is reported and the queue goes on.
//
// A queue belongs to one session. When the session ends its worker stops
// and every action still queued fails with UNAVAILABLE "server
// reconnecting": carrying actions over to the next session would run them
// against state (joined channels, nick) they were not written for, and the
// client that asked can decide whether to retry.
type commandQueue struct {
	clock    Clock
	exec     execFunc
	throttle time.Duration
	burst    int

	mu      sync.Mutex
	items   []queued
	stopped bool
	wake    chan struct{} // cap 1

	tat time.Time // GCRA theoretical arrival time
}

func newCommandQueue(clock Clock, throttle time.Duration, burst int, exec execFunc) *commandQueue {
	if burst < 1 {
		burst = 1
	}
	return &commandQueue{clock: clock, exec: exec, throttle: throttle, burst: burst, wake: make(chan struct{}, 1)}
}

// push appends an action; it never blocks. After the worker stopped the
// action fails at once.
func (q *commandQueue) push(a *quiltv1.Action, report resultFunc) {
	q.mu.Lock()
	if q.stopped {
		q.mu.Unlock()
		report(failed(a, codes.Unavailable, "server reconnecting"))
		return
	}
	q.items = append(q.items, queued{a: a, report: report})
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// len returns how many actions wait.
func (q *commandQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

func (q *commandQueue) pop() (queued, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return queued{}, false
	}
	it := q.items[0]
	q.items[0] = queued{}
	q.items = q.items[1:]
	return it, true
}

// run is the worker. It returns when ctx ends (the session is over).
func (q *commandQueue) run(ctx context.Context) {
	defer q.stop()
	for {
		it, ok := q.pop()
		if !ok {
			select {
			case <-q.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		if d := it.a.GetDelay().AsDuration(); it.a.GetDelay() != nil && d > 0 {
			if !sleep(q.clock, d, ctx.Done()) {
				it.report(failed(it.a, codes.Unavailable, "server reconnecting"))
				return
			}
		}
		if !q.waitThrottle(ctx) {
			it.report(failed(it.a, codes.Unavailable, "server reconnecting"))
			return
		}
		sent, err := q.exec(ctx, it.a)
		if err != nil {
			code := codes.Unknown
			if ctx.Err() != nil {
				code = codes.Unavailable
			} else if c := coder(nil); errors.As(err, &c) {
				code = c.Code()
			} else {
				code = codes.FailedPrecondition
			}
			it.report(failed(it.a, code, err.Error()))
			continue
		}
		it.report(&quiltv1.ActionResult{ActionId: it.a.GetId(), Ok: true, Sent: int32(sent), DoneAt: tsNow(q.clock)})
	}
}

// waitThrottle spaces commands with GCRA: a burst of q.burst, then one per
// q.throttle.
func (q *commandQueue) waitThrottle(ctx context.Context) bool {
	if q.throttle <= 0 {
		return true
	}
	now := q.clock.Now()
	tat := q.tat
	if tat.Before(now) {
		tat = now
	}
	tolerance := time.Duration(q.burst-1) * q.throttle
	if wait := tat.Sub(now) - tolerance; wait > 0 {
		if !sleep(q.clock, wait, ctx.Done()) {
			return false
		}
	}
	q.tat = tat.Add(q.throttle)
	return true
}

// stop fails whatever is left.
func (q *commandQueue) stop() {
	q.mu.Lock()
	q.stopped = true
	left := q.items
	q.items = nil
	q.mu.Unlock()
	for _, it := range left {
		it.report(failed(it.a, codes.Unavailable, "server reconnecting"))
	}
}

func failed(a *quiltv1.Action, c codes.Code, msg string) *quiltv1.ActionResult {
	return &quiltv1.ActionResult{ActionId: a.GetId(), Ok: false, Error: msg, Code: int32(c)}
}

// coder is an error that names its gRPC code (drivers' action errors).
type coder interface{ Code() codes.Code }
