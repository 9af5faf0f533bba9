package daemon

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

var sigpipeOnce sync.Once

// SetupStdio puts the standard file descriptors in the state a daemon wants
// (seed 003: "set stdin, stdout, stderr to TTY or to null if no TTY"):
//
//   - stdin is re-opened from /dev/null, always. A daemon never reads it, and
//     holding a terminal or an init script's pipe open can keep that session
//     or script waiting on us.
//   - stdout and stderr are left alone when open: logs go to stderr, and
//     whatever the operator connected (a terminal, the journal, a file) is
//     where they should land. A closed fd 1 or 2 becomes /dev/null, so a
//     write neither fails with EBADF nor lands in whatever file later
//     reuses that descriptor number. (The Go runtime already does this at
//     start-up since Go 1.22; doing it here covers descriptors closed since.)
//   - SIGPIPE is routed to a channel nobody reads. Without that, Go kills the
//     process when a write to fd 1 or 2 hits a closed pipe, e.g. a daemon
//     started as `quilt-qmd | tee log` whose tee died; with it, the write
//     returns EPIPE and the daemon keeps serving.
func SetupStdio() error {
	sigpipeOnce.Do(func() {
		// Never read: signal.Notify drops signals when the channel is full,
		// which is all we want.
		signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	})
	if err := redirectToNull(0, os.O_RDONLY); err != nil {
		return err
	}
	for _, fd := range []int{1, 2} {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == unix.EBADF {
			if err := redirectToNull(fd, os.O_WRONLY); err != nil {
				return err
			}
		}
	}
	return nil
}

func redirectToNull(fd, flag int) error {
	// A raw descriptor, not an *os.File: when fd itself is closed, open
	// returns fd (the lowest free number), and an *os.File's finalizer would
	// later close it again.
	nfd, err := unix.Open(os.DevNull, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("stdio: open %s: %w", os.DevNull, err)
	}
	if nfd == fd {
		// Standard descriptors are inherited by children we start.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("stdio: fd %d: %w", fd, err)
		}
		return nil
	}
	defer unix.Close(nfd)
	if err := unix.Dup2(nfd, fd); err != nil {
		return fmt.Errorf("stdio: redirect fd %d to %s: %w", fd, os.DevNull, err)
	}
	return nil
}
