package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func readPID(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("pid file %s holds %q", path, data)
	}
	return pid
}

// startHelper starts this test binary as a long-lived process whose argv[0]
// is argv0, and returns its pid once it runs.
func startHelper(t *testing.T, argv0 string) int {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Args = []string{argv0}
	cmd.Env = append(os.Environ(), helperEnv+"=sleep")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ok\n" {
		t.Fatalf("helper did not start: %q %v", line, err)
	}
	return cmd.Process.Pid
}

func TestPIDFileAcquireRelease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "quilt", "quilt-qmd.pid") // parents do not exist yet
	release, err := AcquirePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := readPID(t, path); got != os.Getpid() {
		t.Errorf("pid file holds %d, want %d", got, os.Getpid())
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644 so init scripts can read it", fi.Mode().Perm())
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file still there after release: %v", err)
	}
	if err := release(); err != nil {
		t.Errorf("second release: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 0 {
		t.Errorf("leftovers in pid dir: %v", entries)
	}
}

// Within one process flock still excludes: each attempt opens its own file
// description. So goroutines stand in for daemons starting at once.
func TestPIDFileConcurrentAcquire(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.pid")
	for round := range 20 {
		const n = 16
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			releases []func() error
			refused  int
		)
		for range n {
			wg.Go(func() {
				rel, err := AcquirePIDFile(path)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					releases = append(releases, rel)
				case errors.Is(err, ErrAlreadyRunning):
					refused++
				default:
					t.Errorf("round %d: %v", round, err)
				}
			})
		}
		wg.Wait()
		if len(releases) != 1 || refused != n-1 {
			t.Fatalf("round %d: %d won, %d refused; want exactly one winner", round, len(releases), refused)
		}
		if err := releases[0](); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPIDFileHeldByLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.pid")
	release, err := AcquirePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	_, err = acquirePIDFile(path, "quilt-qmd")
	var are *AlreadyRunningError
	if !errors.As(err, &are) {
		t.Fatalf("err = %v, want AlreadyRunningError", err)
	}
	want := fmt.Sprintf("quilt-qmd already running as pid %d (pid file %s)", os.Getpid(), path)
	if err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
	if readPID(t, path) != os.Getpid() {
		t.Error("refused attempt changed the pid file")
	}
}

// A live process running our program that holds no lock (an older instance,
// or flock not shared on this filesystem) still keeps us out.
func TestPIDFileLiveHolderWithoutLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.pid")
	pid := startHelper(t, os.Args[0])
	os.WriteFile(path, fmt.Appendf(nil, "%d\n", pid), 0o644)
	_, err := AcquirePIDFile(path)
	var are *AlreadyRunningError
	if !errors.As(err, &are) || are.PID != pid {
		t.Fatalf("err = %v, want already running as pid %d", err, pid)
	}
	if readPID(t, path) != pid {
		t.Error("pid file changed")
	}
}

func TestPIDFileStale(t *testing.T) {
	t.Run("dead pid", func(t *testing.T) {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), helperEnv+"=exit")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		acquireOver(t, cmd.Process.Pid)
	})
	t.Run("pid reused by another program", func(t *testing.T) {
		acquireOver(t, startHelper(t, "/usr/bin/not-quilt"))
	})
	t.Run("garbage", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "q.pid")
		os.WriteFile(path, []byte("not a pid"), 0o644)
		rel, err := AcquirePIDFile(path)
		if err != nil {
			t.Fatal(err)
		}
		defer rel()
		if readPID(t, path) != os.Getpid() {
			t.Error("garbage not replaced")
		}
	})
}

func acquireOver(t *testing.T, stalePID int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "q.pid")
	os.WriteFile(path, fmt.Appendf(nil, "%d\n", stalePID), 0o644)
	rel, err := AcquirePIDFile(path)
	if err != nil {
		t.Fatalf("stale pid %d: %v", stalePID, err)
	}
	defer rel()
	if got := readPID(t, path); got != os.Getpid() {
		t.Errorf("pid file holds %d, want ours %d", got, os.Getpid())
	}
}

func TestPIDFileReleaseKeepsOthers(t *testing.T) {
	t.Run("rewritten in place", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "q.pid")
		rel, err := AcquirePIDFile(path)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(path, []byte("12345\n"), 0o644)
		if err := rel(); err != nil {
			t.Fatal(err)
		}
		if readPID(t, path) != 12345 {
			t.Error("release removed a pid file that was no longer ours")
		}
	})
	t.Run("replaced by another file with our pid", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "q.pid")
		rel, err := AcquirePIDFile(path)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(path)
		os.WriteFile(path, fmt.Appendf(nil, "%d\n", os.Getpid()), 0o644)
		if err := rel(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Error("release removed a file it did not create")
		}
	})
}

// The race the inode check exists for: B opens the old file, A locks it,
// installs its own file and lets go of the old one, then B locks the old
// file. B must notice that path no longer names what it locked.
func TestPIDFileLockedFileReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.pid")
	opened, proceed := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	testHookOpened = func() {
		if first.CompareAndSwap(false, true) { // only B waits; A goes straight through
			close(opened)
			<-proceed
		}
	}
	defer func() { testHookOpened = nil }()

	errB := make(chan error, 1)
	go func() {
		rel, err := AcquirePIDFile(path)
		if err == nil {
			rel()
		}
		errB <- err
	}()
	<-opened
	relA, err := AcquirePIDFile(path)
	if err != nil {
		t.Fatalf("A: %v", err)
	}
	defer relA()
	close(proceed)
	if err := <-errB; !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("B: err = %v, want already running (A holds the file)", err)
	}
	if readPID(t, path) != os.Getpid() {
		t.Error("pid file lost")
	}
}
