//go:build !linux

package testenv

import (
	"os"
	"syscall"
)

var termSignal = os.Interrupt

func sysProcAttr() *syscall.SysProcAttr { return nil }
