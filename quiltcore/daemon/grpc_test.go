package daemon

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"
)

func startGRPC(t *testing.T) (*grpc.Server, healthpb.HealthClient) {
	t.Helper()
	lis := bufconn.Listen(1 << 16)
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(lis)
	}()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-served
	})
	return srv, healthpb.NewHealthClient(conn)
}

func TestGracefulStopIdle(t *testing.T) {
	srv, client := startGRPC(t)
	if _, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if !GracefulStop(srv, 5*time.Second) {
		t.Error("idle server: stop was not graceful")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("idle server took %v to stop", took)
	}
}

func TestGracefulStopFallsBack(t *testing.T) {
	srv, client := startGRPC(t)
	// Watch streams until the client cancels: GracefulStop alone would wait
	// for it forever.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the stream is established
		t.Fatal(err)
	}
	const timeout = 150 * time.Millisecond
	start := time.Now()
	if GracefulStop(srv, timeout) {
		t.Error("open stream: stop reported graceful")
	}
	if took := time.Since(start); took < timeout || took > 5*time.Second {
		t.Errorf("stop took %v, want about %v", took, timeout)
	}
	if _, err := stream.Recv(); err == nil {
		t.Error("stream still open after Stop")
	}
}
