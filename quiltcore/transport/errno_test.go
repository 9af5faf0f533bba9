package transport_test

import "syscall"

func syscallECONNREFUSED() error { return syscall.ECONNREFUSED }
