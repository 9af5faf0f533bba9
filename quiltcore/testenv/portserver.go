package testenv

import (
	"strconv"
	"sync"
	"testing"
	"time"
)

// portServer runs a server process on one loopback port that a test can
// stop and start again, to prove clients reconnect after a restart. The
// server-specific part is launch: start the process on the port and wait
// until it is ready; n counts launches, for log file names.
type portServer struct {
	// Addr is "127.0.0.1:PORT".
	Addr string

	t      testing.TB
	name   string
	port   int
	launch func(port, n int) (*proc, error)

	mu sync.Mutex
	p  *proc
	n  int
}

// startPortServer launches on a free port (three tries when the port was
// taken meanwhile) and stops the server when the test ends.
func startPortServer(t testing.TB, name, logDir string, launch func(port, n int) (*proc, error)) *portServer {
	t.Helper()
	s := &portServer{t: t, name: name, launch: launch}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err == nil {
			s.port = port
			err = s.launchOnce()
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
			t.Logf("testenv: %s logs in %s", name, logDir)
		}
	})
	return s
}

func (s *portServer) launchOnce() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	p, err := s.launch(s.port, s.n)
	if err != nil {
		return err
	}
	s.p = p
	return nil
}

// Stop stops the server (SIGTERM: clients see their connection close).
func (s *portServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p != nil {
		s.p.stop()
		s.p = nil
	}
}

// Start starts a stopped server again on the same port.
func (s *portServer) Start() {
	s.t.Helper()
	// the old socket may linger briefly; retry while the port is busy
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.launchOnce()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("testenv: restart %s: %v", s.name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
