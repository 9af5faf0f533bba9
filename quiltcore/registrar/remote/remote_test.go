package remote_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/registrar/embedded"
	"github.com/quilt/quilt/quiltcore/registrar/registrartest"
	"github.com/quilt/quilt/quiltcore/registrar/remote"
)

// serve mounts served on a bufconn gRPC server and returns a connection to it.
func serve(t *testing.T, served registrar.Registrar) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	quiltv1.RegisterRegistrarServer(srv, remote.NewServer(served))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func newEmbedded(t *testing.T) *embedded.Registrar {
	t.Helper()
	emb, err := embedded.New(embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	return emb
}

// TestContract runs the read side of the contract through the gRPC service:
// writes go to the embedded registrar behind it, as the query master's do.
func TestContract(t *testing.T) {
	registrartest.Run(t, func(t *testing.T) (registrar.Registrar, registrartest.Controls) {
		emb := newEmbedded(t)
		c := remote.New(serve(t, emb), "bufnet", remote.Options{})
		t.Cleanup(func() { c.Close() })
		return c, registrartest.Controls{
			Writer:         emb,
			KillLockHolder: func(_ context.Context, key string) error { return emb.KillLock(key) },
		}
	})
}

// plain hides embedded's IndexedDiscoverer so the server's Watch-based
// fallback for blocking queries is exercised.
type plain struct{ registrar.Registrar }

func TestContractWithoutIndexes(t *testing.T) {
	registrartest.Run(t, func(t *testing.T) (registrar.Registrar, registrartest.Controls) {
		emb := newEmbedded(t)
		c := remote.New(serve(t, plain{emb}), "bufnet", remote.Options{})
		t.Cleanup(func() { c.Close() })
		return c, registrartest.Controls{
			Writer:         emb,
			KillLockHolder: func(_ context.Context, key string) error { return emb.KillLock(key) },
		}
	})
}

func TestWritesRefused(t *testing.T) {
	c := remote.New(serve(t, newEmbedded(t)), "bufnet", remote.Options{})
	defer c.Close()
	_, err := c.Register(t.Context(), registrar.Registration{Name: "x", ID: "x"})
	if !errors.Is(err, remote.ErrNotSupported) || !strings.Contains(err.Error(), "registration goes through the query master") {
		t.Errorf("Register: %v", err)
	}
	if _, err := c.Lock(t.Context(), "k", "h", "a"); !errors.Is(err, remote.ErrNotSupported) {
		t.Errorf("Lock: %v", err)
	}
}

// TestServerStatusCodes checks the server's error mapping without the
// client's own key checks in front of it.
func TestServerStatusCodes(t *testing.T) {
	rc := quiltv1.NewRegistrarClient(serve(t, newEmbedded(t)))
	ctx := t.Context()
	if _, err := rc.KVPut(ctx, &quiltv1.KVPutRequest{Key: "/bad"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("KVPut bad key: %v, want InvalidArgument", err)
	}
	if _, err := rc.Discover(ctx, &quiltv1.DiscoverRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Discover without service: %v, want InvalidArgument", err)
	}
	resp, err := rc.KVGet(ctx, &quiltv1.KVGetRequest{Key: "missing"})
	if err != nil || resp.GetFound() {
		t.Errorf("KVGet missing = %v, %v; want found=false", resp, err)
	}
	// A blocking Discover honours wait_seconds.
	first, err := rc.Discover(ctx, &quiltv1.DiscoverRequest{Service: "svc"})
	if err != nil || first.GetIndex() == 0 {
		t.Fatalf("Discover = %v, %v", first, err)
	}
	start := time.Now()
	again, err := rc.Discover(ctx, &quiltv1.DiscoverRequest{Service: "svc", WaitIndex: first.GetIndex(), WaitSeconds: 1})
	if err != nil || again.GetIndex() != first.GetIndex() || time.Since(start) < 900*time.Millisecond {
		t.Errorf("blocking Discover without change: %v, %v after %v", again, err, time.Since(start))
	}
}

func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c, err := remote.Dial(addr, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = c.KVGet(ctx, "k")
	if !errors.Is(err, registrar.ErrUnreachable) || !strings.Contains(err.Error(), "query master at "+addr+" unreachable") {
		t.Errorf("KVGet against nothing: %v, want ErrUnreachable naming %s", err, addr)
	}
}
