package consul_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/registrar/consul"
	"github.com/quilt/quilt/quiltcore/registrar/registrartest"
)

// consulBin finds the agent binary: $QUILT_CONSUL_BIN, else the one `make
// consul` caches in .cache/bin. Absent: skip, or fail under CI=true.
func consulBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("QUILT_CONSUL_BIN")
	if bin == "" {
		dir, _ := os.Getwd()
		for ; dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				bin = filepath.Join(dir, ".cache", "bin", "consul-1.16.3")
				break
			}
		}
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("no consul binary at %q (run `make consul` or set QUILT_CONSUL_BIN)", bin)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startAgent runs a private `consul agent -dev` on loopback ports and returns
// its HTTP address once it has a leader.
func startAgent(t *testing.T) string {
	t.Helper()
	bin := consulBin(t)
	http_, lan, wan, server := freePort(t), freePort(t), freePort(t), freePort(t)
	var out strings.Builder
	var outMu sync.Mutex
	cmd := exec.Command(bin, "agent", "-dev", "-node", "quilt-test",
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise", "127.0.0.1",
		"-http-port", fmt.Sprint(http_), "-grpc-port", "-1", "-grpc-tls-port", "-1", "-dns-port", "-1",
		"-serf-lan-port", fmt.Sprint(lan), "-serf-wan-port", fmt.Sprint(wan), "-server-port", fmt.Sprint(server))
	w := writerFunc(func(p []byte) (int, error) {
		outMu.Lock()
		defer outMu.Unlock()
		return out.Write(p)
	})
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	addr := fmt.Sprintf("127.0.0.1:%d", http_)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/v1/status/leader")
		if err == nil {
			var b [128]byte
			n, _ := resp.Body.Read(b[:])
			resp.Body.Close()
			if s := strings.Trim(string(b[:n]), "\" \n"); resp.StatusCode == 200 && s != "" {
				http.DefaultTransport.(*http.Transport).CloseIdleConnections()
				return addr
			}
		}
		select {
		case <-done:
			outMu.Lock()
			defer outMu.Unlock()
			t.Fatalf("consul agent exited: %s", out.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	outMu.Lock()
	defer outMu.Unlock()
	t.Fatalf("consul agent at %s had no leader within 20 s: %s", addr, out.String())
	return ""
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

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
	addr := startAgent(t)
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
	port := freePort(t) // closed again: nothing listens there
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
	addr := startAgent(t)
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
