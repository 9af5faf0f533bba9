package main

import (
	"github.com/quilt/quilt/sourcemanagers/bzflag"
	"github.com/quilt/quilt/sourcemanagers/imap"
	"github.com/quilt/quilt/sourcemanagers/irc"
	"github.com/quilt/quilt/sourcemanagers/matrix"
	"github.com/quilt/quilt/sourcemanagers/runtime"
	"github.com/quilt/quilt/sourcemanagers/testdriver"
	"github.com/quilt/quilt/sourcemanagers/xmpp"
)

// drivers are the protocols this binary serves. Adding one is one line
// here (and its import).
var drivers = []runtime.Driver{
	bzflag.Driver{},
	imap.Driver{},
	irc.Driver{},
	matrix.Driver{},
	testdriver.Driver{},
	xmpp.Driver{},
}
