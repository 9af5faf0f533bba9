package daemon

import (
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// NotifySocketEnv is where systemd (Type=notify) tells a service where to
// send its state.
const NotifySocketEnv = "NOTIFY_SOCKET"

// SDNotify sends state (newline-separated VAR=value lines, e.g. "READY=1")
// to the systemd notification socket socketPath, as sd_notify(3) does. An
// empty socketPath means we were not started by systemd: nothing is sent and
// the result is nil. A path starting with '@' is in the abstract namespace.
func SDNotify(socketPath, state string) error {
	if socketPath == "" {
		return nil
	}
	if !strings.HasPrefix(socketPath, "/") && !strings.HasPrefix(socketPath, "@") {
		return fmt.Errorf("sd_notify: %s=%q is neither a path nor an abstract socket", NotifySocketEnv, socketPath)
	}
	// Go maps a leading '@' to the abstract namespace itself.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socketPath, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify %s: %w", socketPath, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", socketPath, err)
	}
	return nil
}

// reloadingState is what systemd's Type=notify-reload wants at the start of
// a reload: it needs the monotonic timestamp to tell this reload from an
// earlier one.
func reloadingState() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return "RELOADING=1"
	}
	usec := ts.Nano() / 1000
	return fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", usec)
}

func notifySocketFromEnv() string { return os.Getenv(NotifySocketEnv) }
