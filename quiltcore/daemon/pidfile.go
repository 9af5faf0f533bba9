package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// AcquirePIDFile makes this process the one instance that owns path, and
// writes its pid there. It refuses (with an *AlreadyRunningError, which
// matches ErrAlreadyRunning) when a live instance owns the file.
//
// Ownership is an exclusive flock(2) on the file, held through an open
// descriptor for the life of the process: the kernel drops it when the
// process dies however it dies, so two daemons starting together cannot both
// win and a crash never leaves a lock behind. The pid inside is for people
// and init scripts. A file left by a dead process, or naming a pid the kernel
// has since given to a different program (judged by /proc/PID/cmdline), is
// stale and replaced. The new content is written to a temporary file that is
// locked before it is renamed into place, so readers never see a partial pid
// and no one can lock the new file first.
//
// release removes the file if it still holds our pid (an operator or a newer
// instance may have replaced it) and drops the lock. It is safe to call more
// than once.
func AcquirePIDFile(path string) (release func() error, err error) {
	return acquirePIDFile(path, programName())
}

// programName is the base name of our executable, as a pid file holder's
// argv[0] would show it.
func programName() string {
	if len(os.Args) > 0 && os.Args[0] != "" {
		return filepath.Base(os.Args[0])
	}
	if exe, err := os.Executable(); err == nil {
		return filepath.Base(exe)
	}
	return "quilt"
}

// maxPIDFileAttempts bounds the retries when the file is replaced between our
// open and our lock, which only a competing starter or a hand edit can cause.
const maxPIDFileAttempts = 20

func acquirePIDFile(path, program string) (func() error, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("pid file %s: %w", path, err)
	}
	for range maxPIDFileAttempts {
		held, retry, err := tryAcquire(path, program)
		if retry {
			continue
		}
		if err != nil {
			return nil, err
		}
		return held.release, nil
	}
	return nil, fmt.Errorf("pid file %s: replaced by another process %d times while acquiring it", path, maxPIDFileAttempts)
}

// testHookOpened, when set by a test, runs between opening the pid file and
// locking it: the window in which a competitor can replace the file.
var testHookOpened func()

type heldPIDFile struct {
	path string
	f    *os.File
	once sync.Once
	err  error
}

// tryAcquire makes one attempt. retry is true when the file at path changed
// under us and the caller should start over.
func tryAcquire(path, program string) (held *heldPIDFile, retry bool, err error) {
	cur, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("pid file %s: %w", path, err)
	}
	defer cur.Close() // once our own file is in place the lock on this one is not needed
	if testHookOpened != nil {
		testHookOpened()
	}
	if err := flock(cur); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, &AlreadyRunningError{Program: program, PID: holderPID(path), Path: path}
		}
		return nil, false, fmt.Errorf("pid file %s: lock: %w", path, err)
	}
	// The lock is on the inode we opened; if path now names another file
	// (a competitor renamed its own in place), our lock means nothing.
	if same, err := samePath(cur, path); err != nil || !same {
		return nil, true, nil
	}

	// We hold the lock, so no instance that uses this package owns the file.
	// Still refuse if it names a live process running our program: an older
	// instance, or one on a filesystem where flock is not shared.
	data, err := readAll(cur)
	if err != nil {
		return nil, false, fmt.Errorf("pid file %s: %w", path, err)
	}
	if pid, ok := parsePID(data); ok && pid != os.Getpid() && processRuns(pid, program) {
		return nil, false, &AlreadyRunningError{Program: program, PID: pid, Path: path}
	}

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, false, fmt.Errorf("pid file %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := flock(tmp); err != nil {
		return nil, false, fmt.Errorf("pid file %s: lock %s: %w", path, tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil { // CreateTemp makes it 0600; init scripts read it
		return nil, false, fmt.Errorf("pid file %s: %w", path, err)
	}
	if _, err := fmt.Fprintf(tmp, "%d\n", os.Getpid()); err != nil {
		return nil, false, fmt.Errorf("pid file %s: write: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, false, fmt.Errorf("pid file %s: sync: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, false, fmt.Errorf("pid file %s: %w", path, err)
	}
	ok = true
	return &heldPIDFile{path: path, f: tmp}, false, nil
}

func (h *heldPIDFile) release() error {
	h.once.Do(func() {
		// Remove while still holding the lock, so no one can take the file
		// over between our check and the unlink.
		if same, _ := samePath(h.f, h.path); same {
			if data, err := os.ReadFile(h.path); err == nil {
				if pid, ok := parsePID(data); ok && pid == os.Getpid() {
					if err := os.Remove(h.path); err != nil && !errors.Is(err, os.ErrNotExist) {
						h.err = fmt.Errorf("pid file %s: %w", h.path, err)
					}
				}
			}
		}
		if err := h.f.Close(); err != nil && h.err == nil {
			h.err = fmt.Errorf("pid file %s: %w", h.path, err)
		}
	})
	return h.err
}

func flock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			return err
		}
	}
}

// samePath reports whether path still names the file f has open.
func samePath(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

func readAll(f *os.File) ([]byte, error) {
	if _, err := f.Seek(0, 0); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	_, err := b.ReadFrom(f)
	return b.Bytes(), err
}

func parsePID(data []byte) (int, bool) {
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid, err == nil && pid > 0
}

// holderPID reads the pid of the process whose lock stopped us. The holder
// may be between creating and renaming its file, so an unreadable or empty
// file gives 0 rather than an error.
func holderPID(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := parsePID(data)
	return pid
}

// processRuns reports whether pid is alive and running program. Without
// /proc (not Linux) a live pid is assumed to be ours: refusing to start is
// the safe mistake.
func processRuns(pid int, program string) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false // ESRCH: no such process
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		if _, statErr := os.Stat("/proc/self/cmdline"); statErr != nil {
			return true
		}
		return false // raced with its exit
	}
	// A zombie or kernel thread has an empty cmdline: not a running daemon.
	argv0, _, _ := bytes.Cut(cmdline, []byte{0})
	return len(argv0) > 0 && filepath.Base(string(argv0)) == program
}
