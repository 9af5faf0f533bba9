package daemon

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listenNotify stands in for systemd: a unixgram socket whose datagrams come
// out of the returned channel.
func listenNotify(t *testing.T) (string, <-chan string) {
	t.Helper()
	// Socket paths are limited to ~108 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "qn")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan string, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
		os.RemoveAll(dir)
	})
	return path, msgs
}

func expectNotify(t *testing.T, msgs <-chan string, prefix string) string {
	t.Helper()
	select {
	case m := <-msgs:
		if !strings.HasPrefix(m, prefix) {
			t.Fatalf("sd_notify got %q, want %q...", m, prefix)
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("no sd_notify %q", prefix)
		return ""
	}
}

func TestSDNotify(t *testing.T) {
	path, msgs := listenNotify(t)
	if err := SDNotify(path, "READY=1"); err != nil {
		t.Fatal(err)
	}
	expectNotify(t, msgs, "READY=1")

	if err := SDNotify("", "READY=1"); err != nil {
		t.Errorf("no socket configured must be a no-op: %v", err)
	}
	if err := SDNotify("relative.sock", "READY=1"); err == nil || !strings.Contains(err.Error(), "relative.sock") {
		t.Errorf("relative path: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "gone.sock")
	if err := SDNotify(missing, "READY=1"); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing socket: %v", err)
	}
}

func TestSDNotifyAbstract(t *testing.T) {
	name := fmt.Sprintf("@quilt-daemon-test-%d", os.Getpid())
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Skipf("abstract unix sockets unavailable: %v", err)
	}
	defer conn.Close()
	if err := SDNotify(name, "STOPPING=1"); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "STOPPING=1" {
		t.Fatalf("got %q, %v", buf[:n], err)
	}
}

func TestReloadingState(t *testing.T) {
	s := reloadingState()
	if !strings.HasPrefix(s, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("got %q", s)
	}
}
