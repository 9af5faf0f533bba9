package runtimetest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/model"
	"github.com/quilt/quilt/quiltcore/transport"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// ScriptProtocol is the protocol name ScriptDriver serves; tests build
// their config.SourceManager with it (config validation is not involved).
const ScriptProtocol = "test"

// ScriptDriver is a runtime.StreamDriver over a tiny line protocol that a
// test speaks through the fixture peer, so the whole stream path (dial,
// loop, session, queue) runs without sockets. The session sends
// "HELLO <server>" on Start and understands, one per line from the peer:
//
//	WELCOME NICK                    → CONNECTED (self = NICK)
//	USER NICK PERSISTENT DISPLAY GROUP → RAW event naming the user fully
//	JOIN NICK CHAN | PART NICK CHAN [REASON] | QUIT NICK [REASON]
//	NICK OLD NEW | KICK BY CHAN TARGET [REASON] | MSG NICK TARGET TEXT
//	MEMBERS CHAN NICK[+modes]...    (e.g. "alice+o bob")
//	MODE BY CHAN TARGET +o | TOPIC NICK CHAN TEXT
//	PING X                          → writes "PONG X", reports 5ms lag
//	CLOSE REASON                    → Output.Close
//
// Actions become lines to the peer: JOIN → "JOIN CHAN[ KEY]", SEND →
// "SEND TARGET TEXT", PART → "PART CHAN", RAW → the text; a SEND to
// "fail" is an error (nothing sent).
type ScriptDriver struct {
	// Sessions receives every session created, in order.
	Sessions chan *ScriptSession
}

// NewScriptDriver returns a driver with a generous session channel.
func NewScriptDriver() *ScriptDriver { return &ScriptDriver{Sessions: make(chan *ScriptSession, 64)} }

var _ runtime.StreamDriver = (*ScriptDriver)(nil)

// Protocol implements runtime.Driver.
func (*ScriptDriver) Protocol() string { return ScriptProtocol }

// Addresses implements runtime.StreamDriver: "script:<server>".
func (*ScriptDriver) Addresses(s *config.Server) []string { return []string{"script:" + s.Name} }

// TLSConfig implements runtime.StreamDriver.
func (*ScriptDriver) TLSConfig(*config.Server) *tls.Config { return nil }

// NewSession implements runtime.StreamDriver.
func (d *ScriptDriver) NewSession(cfg runtime.SessionConfig) runtime.Session {
	s := &ScriptSession{Config: cfg, lines: transport.NewLineSplitter(0)}
	if d.Sessions != nil {
		select {
		case d.Sessions <- s:
		default:
		}
	}
	return s
}

// ScriptSession is one session of ScriptDriver. Its fields are for the
// test to read after the fact; the runtime owns it while it runs.
type ScriptSession struct {
	Config runtime.SessionConfig
	lines  *transport.LineSplitter
}

func line(s string) []byte { return []byte(s + "\r\n") }

// Start implements runtime.Session.
func (s *ScriptSession) Start(time.Time) runtime.Output {
	return runtime.Output{Send: [][]byte{line("HELLO " + s.Config.Server.Name)}}
}

// Tick implements runtime.Session.
func (s *ScriptSession) Tick(time.Time) runtime.Output { return runtime.Output{} }

// Input implements runtime.Session.
func (s *ScriptSession) Input(now time.Time, data []byte) runtime.Output {
	s.lines.Feed(data)
	var out runtime.Output
	for {
		l, _, ok := s.lines.Next()
		if !ok {
			return out
		}
		out.Merge(s.step(now, string(l)))
	}
}

func (s *ScriptSession) step(now time.Time, l string) runtime.Output {
	f := strings.Fields(l)
	if len(f) == 0 {
		return runtime.Output{}
	}
	arg := func(i int) string {
		if i < len(f) {
			return f[i]
		}
		return ""
	}
	rest := func(i int) string {
		if i < len(f) {
			return strings.Join(f[i:], " ")
		}
		return ""
	}
	ev := func(k quiltv1.EventKind, user string) *quiltv1.Event {
		e := model.NewEvent(k, now, model.U(user))
		e.Raw = l
		return e
	}
	var e *quiltv1.Event
	switch strings.ToUpper(f[0]) {
	case "WELCOME":
		e = ev(quiltv1.EventKind_EVENT_KIND_CONNECTED, arg(1))
		e.User.Self = true
	case "USER":
		e = ev(quiltv1.EventKind_EVENT_KIND_RAW, arg(1))
		e.User.Persistent, e.User.Display, e.User.Group = arg(2), arg(3), arg(4)
	case "JOIN":
		e = ev(quiltv1.EventKind_EVENT_KIND_JOIN, arg(1))
		e.Channel = arg(2)
	case "PART":
		e = ev(quiltv1.EventKind_EVENT_KIND_PART, arg(1))
		e.Channel, e.Text = arg(2), rest(3)
	case "QUIT":
		e = ev(quiltv1.EventKind_EVENT_KIND_QUIT, arg(1))
		e.Text = rest(2)
	case "NICK":
		e = ev(quiltv1.EventKind_EVENT_KIND_NICK, arg(1))
		e.TargetUser = model.U(arg(2))
	case "KICK":
		e = ev(quiltv1.EventKind_EVENT_KIND_KICK, arg(1))
		e.Channel, e.TargetUser, e.Text = arg(2), model.U(arg(3)), rest(4)
	case "MSG":
		e = ev(quiltv1.EventKind_EVENT_KIND_MESSAGE, arg(1))
		e.Text = rest(3)
		if strings.HasPrefix(arg(2), "#") {
			e.Channel = arg(2)
		} else {
			e.Private, e.TargetUser = true, model.U(arg(2))
		}
	case "MEMBERS":
		e = ev(quiltv1.EventKind_EVENT_KIND_MEMBERS, "")
		e.User = nil
		e.Channel = arg(1)
		for _, m := range f[2:] {
			nick, modes, _ := strings.Cut(m, "+")
			pm := &quiltv1.Member{User: model.U(nick)}
			for _, r := range modes {
				pm.Modes = append(pm.Modes, string(r))
			}
			e.Members = append(e.Members, pm)
		}
	case "MODE":
		e = ev(quiltv1.EventKind_EVENT_KIND_MODE, arg(1))
		e.Channel, e.TargetUser, e.Text = arg(2), model.U(arg(3)), arg(4)
	case "TOPIC":
		e = ev(quiltv1.EventKind_EVENT_KIND_TOPIC, arg(1))
		e.Channel, e.Text = arg(2), rest(3)
	case "ALIAS": // ALIAS user #channel #alias:server — a room's canonical alias
		e = ev(quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO, arg(1))
		e.Channel = arg(2)
		e.ChannelInfo = &quiltv1.ChannelInfo{Name: arg(2), CanonicalAlias: arg(3)}
	case "PING":
		return runtime.Output{Send: [][]byte{line("PONG " + arg(1))}, Lag: 5 * time.Millisecond}
	case "CLOSE":
		return runtime.Output{Close: errors.New(rest(1))}
	default:
		e = ev(quiltv1.EventKind_EVENT_KIND_RAW, "")
		e.User = nil
	}
	return runtime.Output{Events: []*quiltv1.Event{e}}
}

// Do implements runtime.Session.
func (s *ScriptSession) Do(_ time.Time, a *quiltv1.Action) (runtime.Output, error) {
	switch a.GetKind() {
	case quiltv1.ActionKind_ACTION_KIND_JOIN:
		l := "JOIN " + a.GetTarget()
		if a.GetKey() != "" {
			l += " " + a.GetKey()
		}
		return runtime.Output{Send: [][]byte{line(l)}}, nil
	case quiltv1.ActionKind_ACTION_KIND_PART:
		return runtime.Output{Send: [][]byte{line("PART " + a.GetTarget())}}, nil
	case quiltv1.ActionKind_ACTION_KIND_SEND:
		if a.GetTarget() == "fail" {
			return runtime.Output{}, fmt.Errorf("cannot send to %q", a.GetTarget())
		}
		return runtime.Output{Send: [][]byte{line("SEND " + a.GetTarget() + " " + a.GetText())}}, nil
	case quiltv1.ActionKind_ACTION_KIND_RAW:
		return runtime.Output{Send: [][]byte{line(a.GetText())}}, nil
	}
	return runtime.Output{}, fmt.Errorf("script session: unsupported action %s", a.GetKind())
}
