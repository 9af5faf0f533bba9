package open_test

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/registrar/consul"
	"github.com/quilt/quilt/quiltcore/registrar/embedded"
	"github.com/quilt/quilt/quiltcore/registrar/open"
	"github.com/quilt/quilt/quiltcore/registrar/remote"
	"github.com/quilt/quilt/quiltcore/testenv"
)

func TestEmbeddedAndRemote(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	// The query master: embedded, served on a loopback gRPC listener.
	qm, err := open.New(ctx, registrar.Options{Address: "", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer qm.Close()
	if _, ok := qm.(*embedded.Registrar); !ok {
		t.Fatalf("empty address gave %T, want *embedded.Registrar", qm)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	quiltv1.RegisterRegistrarServer(srv, remote.NewServer(qm))
	go srv.Serve(lis)
	defer srv.Stop()
	if _, err := qm.Register(ctx, registrar.Registration{Name: registrar.ServiceSourceManager, ID: registrar.SourceManagerID("libera"), Address: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if err := qm.KVPut(ctx, "settings/x", []byte("1")); err != nil {
		t.Fatal(err)
	}

	// A source manager on the same machine: embedded + the QM's address.
	sm, err := open.New(ctx, registrar.Options{Address: "Embedded", QueryMaster: lis.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer sm.Close()
	if _, ok := sm.(*remote.Client); !ok {
		t.Fatalf("embedded + QueryMaster gave %T, want *remote.Client", sm)
	}
	list, err := sm.Discover(ctx, registrar.ServiceSourceManager, true)
	if err != nil || len(list) != 1 || list[0].ID != "quilt-sm-libera" {
		t.Fatalf("remote Discover = %+v, %v", list, err)
	}
	if v, err := sm.KVGet(ctx, "settings/x"); err != nil || string(v) != "1" {
		t.Fatalf("remote KVGet = %q, %v", v, err)
	}
}

func TestConsulUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	start := time.Now()
	_, err = open.New(t.Context(), registrar.Options{Address: addr, Token: "hunter2-secret"})
	if !errors.Is(err, registrar.ErrUnreachable) {
		t.Fatalf("New(%s): %v, want ErrUnreachable", addr, err)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("consul at %s unreachable", addr)) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q: want the address, never the token", err)
	}
	t.Logf("gave up after %v", time.Since(start))
}

func TestConsul(t *testing.T) {
	addr := testenv.Consul(t)
	r, err := open.New(t.Context(), registrar.Options{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, ok := r.(*consul.Registrar); !ok {
		t.Fatalf("address %s gave %T, want *consul.Registrar", addr, r)
	}
	if err := r.KVPut(t.Context(), "settings/x", []byte("1")); err != nil {
		t.Fatal(err)
	}
}
