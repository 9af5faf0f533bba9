package testenv

import (
	"syscall"
)

// termSignal asks a server to shut down.
var termSignal = syscall.SIGTERM

// sysProcAttr makes the kernel kill a server when the test binary dies
// without running its cleanups (timeout panic, SIGKILL), so no stray daemons
// keep ports and CPU after a crashed test run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
