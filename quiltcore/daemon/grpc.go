package daemon

import (
	"time"

	"google.golang.org/grpc"
)

// GracefulStop stops srv, letting in-flight RPCs finish for up to timeout,
// then cutting the rest off with Stop. The fallback matters because
// GracefulStop alone waits for every open stream, and quilt's streams
// (SourceLink.Attach, Subscribe) live as long as their peers do. It reports
// whether the stop was graceful, and returns only once srv has stopped.
func GracefulStop(srv *grpc.Server, timeout time.Duration) (graceful bool) {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		srv.Stop()
		<-done
		return false
	}
}
