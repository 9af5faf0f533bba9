package querymaster

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// MaxActsInFlight bounds the actions of one ActStream without a response
// sent back yet. Past it the handler stops reading requests, so gRPC flow
// control pushes back on the client instead of the master queueing
// without end.
const MaxActsInFlight = 4096

// errHalfClosed ends an ActStream whose client half-closed and got every
// response.
var errHalfClosed = errors.New("client half-closed and every action has its response")

// ActStream pipelines actions: a reader submits each request in the order
// read (so a server's actions reach its source manager in stream order)
// and a waiter per action hands its outcome to this goroutine, the only
// one calling Send. Per-action failures are responses; only leader loss,
// the client going away or a failed Send end the stream.
func (m *Master) ActStream(stream quiltv1.QueryMaster_ActStreamServer) error {
	epoch, err := m.leaderEpoch(stream.Context())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	stop := context.AfterFunc(epoch, func() { cancel(context.Cause(epoch)) })
	defer stop()

	// A slot is taken before an action is submitted and given back once its
	// response was sent, so out never holds more than its capacity and a
	// waiter never blocks on it.
	slots := make(chan struct{}, MaxActsInFlight)
	out := make(chan *quiltv1.ActStreamResponse, MaxActsInFlight)
	go m.actStreamReader(ctx, epoch, cancel, stream, slots, out)
	for {
		select {
		case resp := <-out:
			if err := stream.Send(resp); err != nil {
				return err
			}
			<-slots
		case <-ctx.Done():
			// Responses already queued go out before the stream ends.
		drain:
			for stream.Context().Err() == nil {
				select {
				case resp := <-out:
					if stream.Send(resp) != nil {
						break drain
					}
				default:
					break drain
				}
			}
			if errors.Is(context.Cause(ctx), errHalfClosed) {
				return nil
			}
			return m.leaderStatus(ctx)
		}
	}
}

func (m *Master) actStreamReader(ctx, epoch context.Context, cancel context.CancelCauseFunc, stream quiltv1.QueryMaster_ActStreamServer,
	slots chan struct{}, out chan<- *quiltv1.ActStreamResponse) {
	var waiters sync.WaitGroup
	respond := func(resp *quiltv1.ActStreamResponse) {
		select {
		case out <- resp:
		case <-ctx.Done():
		}
	}
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				waiters.Wait()
				// The last responses may still sit in out: the sender
				// drains it before ending the stream.
				cancel(errHalfClosed)
				return
			}
			cancel(err)
			return
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		ref := req.GetRef()
		p, err := m.router.Submit(ctx, req.GetAction())
		if err != nil {
			m.logActFailure(req.GetAction(), err)
			respond(errResponse(ref, err, false))
			continue
		}
		timeout := time.Duration(req.GetTimeoutSeconds()) * time.Second
		waiters.Add(1)
		go func() {
			defer waiters.Done()
			res, err := p.Wait(ctx, timeout)
			if err != nil {
				// A step down detaches the source managers too, and ctx
				// learns of it asynchronously: the epoch, which ends
				// first, tells that the action's fate is the stream's.
				if ctx.Err() != nil || epoch.Err() != nil {
					// The stream is ending; the client learns the action's
					// fate is unknown from the stream's own status.
					return
				}
				m.logActFailure(req.GetAction(), err)
				respond(errResponse(ref, err, true))
				return
			}
			respond(&quiltv1.ActStreamResponse{Ref: ref, Result: res})
		}()
	}
}

func errResponse(ref uint64, err error, forwarded bool) *quiltv1.ActStreamResponse {
	st := status.Convert(err)
	code := st.Code()
	if code == codes.OK {
		code = codes.Unknown
	}
	return &quiltv1.ActStreamResponse{Ref: ref, Code: int32(code), Message: st.Message(), Forwarded: forwarded}
}

func (m *Master) logActFailure(a *quiltv1.Action, err error) {
	m.log.Info("act failed", "source", a.GetSource(), "server", a.GetServer(),
		"kind", a.GetKind().String(), "requested_by", a.GetRequestedBy(), "err", err)
}
