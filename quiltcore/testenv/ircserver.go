package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// IRCServer is a private ngircd a test can stop and start again on the same
// port, to prove that clients reconnect and rejoin after a server restart.
type IRCServer struct {
	Addr string

	t        testing.TB
	bin, dir string
	opts     NGIRCdOptions
	port     int
	uid, gid string

	mu    sync.Mutex
	p     *proc
	start int
}

// StartIRCServer is NGIRCd with a handle: Stop and Start restart the server
// on the same address. It is stopped when the test ends.
func StartIRCServer(t testing.TB, opts NGIRCdOptions) *IRCServer {
	t.Helper()
	Require(t, ComponentNGIRCd)
	bin, _ := NGIRCdBin()
	uid, gid, err := runUser()
	if err != nil {
		if IsCI() {
			t.Fatalf("testenv: ngircd: %v", err)
		}
		t.Skipf("testenv: skipping, ngircd cannot run: %v", err)
	}
	s := &IRCServer{t: t, bin: bin, dir: t.TempDir(), opts: opts, uid: uid, gid: gid}
	for attempt := 1; ; attempt++ {
		s.port, err = freePort()
		if err == nil {
			err = s.launch()
		}
		if err == nil {
			break
		}
		if attempt == 3 || !retryable(err) {
			t.Fatalf("testenv: %v", err)
		}
	}
	s.Addr = "127.0.0.1:" + strconv.Itoa(s.port)
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("testenv: ngircd logs in %s", s.dir)
		}
	})
	return s
}

// Stop stops the server (SIGTERM: clients see their connection close).
func (s *IRCServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p != nil {
		s.p.stop()
		s.p = nil
	}
}

// Start starts a stopped server again on the same port.
func (s *IRCServer) Start() {
	s.t.Helper()
	// the old socket may linger briefly; retry while the port is busy
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.launch()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("testenv: restart ngircd: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *IRCServer) launch() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.start++
	conf := filepath.Join(s.dir, fmt.Sprintf("ngircd-%d.conf", s.start))
	if err := os.WriteFile(conf, []byte(ngircdConfig(s.opts, s.port, s.uid, s.gid)), 0o600); err != nil {
		return fmt.Errorf("ngircd config: %w", err)
	}
	if out, err := exec.Command(s.bin, "--configtest", "-f", conf).CombinedOutput(); err != nil {
		return fmt.Errorf("ngircd --configtest -f %s: %v\n%s", conf, err, out)
	}
	logPath := filepath.Join(s.dir, fmt.Sprintf("ngircd-%d.log", s.start))
	p, err := startProc("ngircd", s.dir, logPath, nil, s.bin, "--nodaemon", "-f", conf)
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(s.port)
	listening := fmt.Sprintf("Now listening on [127.0.0.1]:%d ", s.port)
	err = waitFor(p, startTimeout, func() (bool, error) {
		b, _ := os.ReadFile(logPath)
		if !strings.Contains(string(b), listening) {
			return false, nil
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
	if err != nil {
		p.stop()
		return err
	}
	s.p = p
	return nil
}
