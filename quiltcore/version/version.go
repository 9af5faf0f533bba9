// Package version holds the build version, set with -ldflags by the Makefile.
package version

// Version is overwritten at link time (make build); "dev" otherwise.
var Version = "dev"
