package consul_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/registrar/consul"
	"github.com/quilt/quilt/quiltcore/registrar/registrartest"
	"github.com/quilt/quilt/quiltcore/testenv"
)

func newConsul(t *testing.T, addr string) *consul.Registrar {
	t.Helper()
	r, err := consul.New(t.Context(), consul.Options{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestContract(t *testing.T) {
	addr := testenv.Consul(t)
	registrartest.Run(t, func(t *testing.T) (registrar.Registrar, registrartest.Controls) {
		r := newConsul(t, addr)
		return r, registrartest.Controls{
			KillLockHolder: func(ctx context.Context, key string) error {
				// A separate client, as an operator or a dying process would be.
				admin := newConsul(t, addr)
				defer admin.Close()
				return admin.KillLock(ctx, key)
			},
		}
	})
}

func TestUnreachable(t *testing.T) {
	port := testenv.FreePort(t) // closed again: nothing listens there
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	const token = "s3cr3t-token-value"
	_, err := consul.New(t.Context(), consul.Options{Address: addr, Token: token, ConnectTimeout: 300 * time.Millisecond})
	if !errors.Is(err, registrar.ErrUnreachable) {
		t.Fatalf("New against a closed port: %v, want ErrUnreachable", err)
	}
	msg := err.Error()
	for _, want := range []string{"consul at " + addr + " unreachable", "set [registrar] address or use `embedded`"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, token) {
		t.Errorf("error leaks the token: %q", msg)
	}
	if _, err := consul.New(t.Context(), consul.Options{Address: "embedded"}); !errors.Is(err, registrar.ErrInvalid) {
		t.Errorf("New with address embedded: %v, want ErrInvalid", err)
	}
}

// TestCatalogShape checks what operators see in `consul catalog services`:
// stable ids, the TTL check registered passing with
// DeregisterCriticalServiceAfter, and the optional grpc.health.v1 check.
func TestCatalogShape(t *testing.T) {
	addr := testenv.Consul(t)
	r := newConsul(t, addr)
	ctx := t.Context()
	id := registrar.QueryMasterID("node1")
	h, err := r.Register(ctx, registrar.Registration{
		Name: registrar.ServiceQueryMaster, ID: id, Address: "127.0.0.1:7000",
		TTL: 3 * time.Second, DeregisterAfter: 90 * time.Second, GRPCHealth: "127.0.0.1:7000",
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	checks, err := c.Agent().ChecksWithFilter(fmt.Sprintf("ServiceID == %q", id))
	if err != nil {
		t.Fatal(err)
	}
	ttl, grpc := checks[id+":ttl"], checks[id+":grpc"]
	if ttl == nil || ttl.Type != "ttl" || ttl.Status != api.HealthPassing {
		t.Errorf("TTL check = %+v, want a passing ttl check", ttl)
	}
	if grpc == nil || grpc.Type != "grpc" {
		t.Errorf("gRPC check = %+v, want a grpc check", grpc)
	}
	svcs, _, err := c.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := svcs[registrar.ServiceQueryMaster]; !ok {
		t.Errorf("catalog services %v lack %s", svcs, registrar.ServiceQueryMaster)
	}
	if err := h.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	// Close releases locks at once so a standby need not wait for the TTL.
	l, err := r.Lock(ctx, registrar.LeaderKeyQueryMaster, id, "127.0.0.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	r2 := newConsul(t, addr)
	got := make(chan error, 1)
	start := time.Now()
	go func() {
		l2, err := r2.Lock(ctx, registrar.LeaderKeyQueryMaster, "node2", "127.0.0.1:7001")
		if err == nil {
			defer l2.Release(ctx)
		}
		got <- err
	}()
	time.Sleep(200 * time.Millisecond)
	r.Close()
	select {
	case <-l.Lost():
	default:
		t.Error("Close left Lost open")
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("handover after a graceful Close: %v", time.Since(start)-200*time.Millisecond)
	case <-time.After(5 * time.Second):
		t.Fatal("standby did not take over within 5 s of the holder's Close")
	}
}

// TestBareHostAddress: the query master registers each source manager with
// its node name only (it listens nowhere); Consul must take it and Discover
// must give the same name back. The real-binary test found every
// quilt-sm-* registration refused as "not host:port".
func TestBareHostAddress(t *testing.T) {
	addr := testenv.Consul(t)
	r := newConsul(t, addr)
	ctx := t.Context()
	id := registrar.SourceManagerID("alpha")
	h, err := r.Register(ctx, registrar.Registration{Name: registrar.ServiceSourceManager, ID: id, Address: "node-a", TTL: 3 * time.Second})
	if err != nil {
		t.Fatalf("register with a bare host: %v", err)
	}
	defer h.Deregister(ctx)
	list, err := r.Discover(ctx, registrar.ServiceSourceManager, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != id || list[0].Address != "node-a" {
		t.Fatalf("discovered %+v, want %s at node-a", list, id)
	}
	if _, err := r.Register(ctx, registrar.Registration{Name: registrar.ServiceSourceManager, ID: id, Address: "node-a:x", TTL: 3 * time.Second}); !errors.Is(err, registrar.ErrInvalid) {
		t.Errorf("register with a bad port: %v, want ErrInvalid", err)
	}
}
