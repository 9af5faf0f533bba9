package imap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"slices"
	"strings"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-message/charset"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/model"
	"github.com/quilt/quilt/quiltcore/transport"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// UnknownSender names the user of a mail with neither From nor Sender.
const UnknownSender = "unknown-sender"

// debugWriter, when set by a test, receives the raw protocol exchange.
var debugWriter io.Writer

// idleStarted, when set by a test, is called each time IDLE is running.
var idleStarted func()

// errReconnect ends Run when a RECONNECT action reaches the client.
var errReconnect = errors.New("imap: reconnect requested")

// Client is one IMAP session (a runtime.Client).
type Client struct {
	source string
	name   string // [server NAME]
	srv    *config.Server
	set    *config.IMAPSettings
	log    *slog.Logger
	clock  runtime.Clock
	dialer transport.Dialer
	stored map[string]string // cursors from SessionConfig

	// PollInterval is how often every watched mailbox is checked (with
	// IDLE too: other mailboxes, dead connections); exported for tests.
	PollInterval time.Duration

	reqs  chan *request
	ready chan struct{} // closed once logged in
	done  chan struct{} // closed when Run returns
}

type request struct {
	kind    quiltv1.ActionKind
	mailbox string
	reply   chan error
}

var _ runtime.Client = (*Client)(nil)

// NewClient builds a client for cfg.Server; nothing is sent before Run.
func NewClient(cfg runtime.SessionConfig, deps runtime.ClientDeps) (*Client, error) {
	set, err := checkSettings(cfg.Server)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clock := deps.Clock
	if clock == nil {
		clock = runtime.SystemClock{}
	}
	dialer := deps.Dialer
	if dialer == nil {
		dialer = transport.SocketDialer{}
	}
	if set.TLS && !set.TLSVerify {
		// Said at every connection: an operator reading the log after a
		// reconnect must still see that the link is unauthenticated.
		log.Warn("imap: TLS certificate verification is OFF for this server (tls_verify = false): anyone on the network path can impersonate it and read the password",
			"server", cfg.Server.Name, "host", set.Host)
	}
	if !set.TLS && !isLoopback(set.Host) {
		log.Warn("imap: TLS is off (tls = false): the password and every mail cross the network in clear",
			"server", cfg.Server.Name, "host", set.Host)
	}
	return &Client{
		source:       cfg.Source,
		name:         cfg.Server.Name,
		srv:          cfg.Server,
		set:          set,
		log:          log,
		clock:        clock,
		dialer:       dialer,
		stored:       cfg.Cursors,
		PollInterval: set.PollInterval,
		reqs:         make(chan *request),
		ready:        make(chan struct{}),
		done:         make(chan struct{}),
	}, nil
}

// Run connects, logs in and watches the joined mailboxes until ctx ends or
// the connection fails.
func (c *Client) Run(ctx context.Context, emit runtime.Emitter, connected func(self *quiltv1.User)) error {
	defer close(c.done)
	addr := Address(c.set)
	conn, err := c.dialer.Dial(ctx, []string{addr}, transport.DialOptions{
		MinDelay:       c.srv.ReconnectMin,
		MaxDelay:       c.srv.ReconnectMax,
		Backoff:        c.srv.ReconnectFactor,
		MaxAttempts:    c.srv.ReconnectAttempts,
		ConnectTimeout: c.srv.ConnectTimeout,
		TLS:            TLSConfig(c.set),
		Sleep: func(ctx context.Context, d time.Duration) error {
			t := c.clock.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C():
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	})
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("imap: server %s: connect to %s: %w", c.name, addr, err)
	}
	s := &session{c: c, emit: emit, wake: make(chan struct{}, 1), boxes: map[string]*box{}}
	s.cli = imapclient.New(transport.Stream(conn), &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					s.poke()
				}
			},
		},
		WordDecoder: &mime.WordDecoder{CharsetReader: charset.Reader},
		DebugWriter: debugWriter,
	})
	defer s.cli.Close()
	// Every blocking imapclient call returns once the connection closes.
	defer context.AfterFunc(ctx, func() { s.cli.Close() })()

	if err := s.cli.WaitGreeting(); err != nil {
		return s.fail(ctx, "greeting from "+addr, err)
	}
	if err := s.cli.Login(c.set.Username, c.set.Password.Reveal()).Wait(); err != nil {
		return s.fail(ctx, "login as "+c.set.Username, err)
	}
	s.idle = c.set.Idle
	if s.idle {
		if caps := s.cli.Caps(); !caps.Has(goimap.CapIdle) && !caps.Has(goimap.CapIMAP4rev2) {
			c.log.Warn("imap: the server does not support IDLE; polling instead", "server", c.name, "poll_interval", c.PollInterval)
			s.idle = false
		}
	}
	c.log.Info("logged in", "server", c.name, "address", conn.RemoteAddr(), "user", c.set.Username, "idle", s.idle)
	close(c.ready)
	connected(c.selfUser())
	return s.loop(ctx)
}

// Do carries out an action. JOIN and PART go to Run's loop, which owns the
// IMAP connection; the others are not IMAP operations.
func (c *Client) Do(ctx context.Context, a *quiltv1.Action) (int, error) {
	switch a.GetKind() {
	case quiltv1.ActionKind_ACTION_KIND_SEND:
		return 0, actionErr(codes.Unimplemented,
			"imap: SEND is not possible: IMAP only reads mailboxes, sending mail needs SMTP, which quilt does not speak")
	case quiltv1.ActionKind_ACTION_KIND_JOIN, quiltv1.ActionKind_ACTION_KIND_PART:
		if strings.TrimSpace(a.GetTarget()) == "" {
			return 0, actionErr(codes.InvalidArgument, "imap: %s needs a mailbox name as target", a.GetKind())
		}
	case quiltv1.ActionKind_ACTION_KIND_RECONNECT:
	default:
		return 0, actionErr(codes.Unimplemented,
			"imap: %s is not an IMAP operation (mailboxes can be joined and parted, nothing else)", a.GetKind())
	}
	unavailable := actionErr(codes.Unavailable, "imap: server %s: not connected", c.name)
	select {
	case <-c.ready:
	case <-c.done:
		return 0, unavailable
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
	r := &request{kind: a.GetKind(), mailbox: a.GetTarget(), reply: make(chan error, 1)}
	select {
	case c.reqs <- r:
	case <-c.done:
		return 0, unavailable
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
	var err error
	select {
	case err = <-r.reply:
	case <-c.done:
		// RECONNECT replies and then ends the session, so both can be
		// ready at once: a reply that was given wins.
		select {
		case err = <-r.reply:
		default:
			return 0, unavailable
		}
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
	if err != nil {
		return 0, err
	}
	return 1, nil
}

// selfUser is the bot's account, all four names its login; a new one per
// event, since Emit may change the users it is given.
func (c *Client) selfUser() *quiltv1.User {
	u := c.set.Username
	return &quiltv1.User{Transient: u, Persistent: u, Display: u, Group: u, Self: true}
}

// startPosition is where watching mailbox resumes: the stored cursor or
// this process's memory, whichever is later (see positions).
func (c *Client) startPosition(mailbox string) (position, bool) {
	var stored position
	haveStored := false
	if v, ok := c.stored[CursorName(mailbox)]; ok {
		p, err := parsePosition(v)
		if err != nil {
			c.log.Warn("imap: ignoring a bad stored cursor; the mailbox starts over from its current end",
				"server", c.name, "mailbox", mailbox, "error", err)
		} else {
			stored, haveStored = p, true
		}
	}
	mem, haveMem := remembered(positionKey(c.source, c.name, mailbox))
	return laterPosition(stored, haveStored, mem, haveMem)
}

// ---- the session loop (Run's goroutine owns everything below) ----

type session struct {
	c        *Client
	cli      *imapclient.Client
	emit     runtime.Emitter
	idle     bool
	wake     chan struct{} // the server reported EXISTS
	boxes    map[string]*box
	order    []string // watched mailboxes in join order; order[0] is IDLEd on
	selected string   // mailbox currently EXAMINEd, "" for none
}

type box struct {
	name  string
	pos   position
	known bool // pos is valid
}

func (s *session) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// fail turns an error into Run's return value: ctx's cause when it ended,
// else the failed step and the error (never the password: imapclient's
// errors are the server's response text or the connection's error).
func (s *session) fail(ctx context.Context, step string, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return fmt.Errorf("imap: server %s: %s: %w", s.c.name, step, err)
}

// serverNo reports whether err is the server refusing a command (NO, BAD),
// after which the connection is still usable.
func serverNo(err error) (*goimap.Error, bool) {
	var ie *goimap.Error
	ok := errors.As(err, &ie)
	return ie, ok
}

type wakeKind int

const (
	wokeMail wakeKind = iota // EXISTS on the IDLE mailbox
	wokePoll                 // poll_interval passed
	wokeReq                  // an action
)

func (s *session) loop(ctx context.Context) error {
	poll := s.c.PollInterval
	if poll <= 0 {
		poll = time.Minute
	}
	nextPoll := s.c.clock.Now().Add(poll)
	for {
		kind, req, err := s.wait(ctx, nextPoll.Sub(s.c.clock.Now()))
		if err != nil {
			return err
		}
		switch kind {
		case wokeMail:
			if len(s.order) > 0 {
				err = s.check(ctx, s.boxes[s.order[0]])
			}
		case wokePoll:
			err = s.checkAll(ctx)
			nextPoll = s.c.clock.Now().Add(poll)
		case wokeReq:
			err = s.handle(ctx, req)
		}
		if err != nil {
			return err
		}
	}
}

// wait blocks until there is something to do, IDLEing on the first watched
// mailbox when idle is on.
func (s *session) wait(ctx context.Context, d time.Duration) (wakeKind, *request, error) {
	if d <= 0 {
		return wokePoll, nil, nil
	}
	var idle *imapclient.IdleCommand
	if s.idle && len(s.order) > 0 {
		if s.selected != s.order[0] {
			if err := s.check(ctx, s.boxes[s.order[0]]); err != nil {
				return 0, nil, err
			}
		}
		select {
		case <-s.wake: // reported before IDLE began
			return wokeMail, nil, nil
		default:
		}
		if s.selected == s.order[0] { // a vanished mailbox cannot be IDLEd on
			var err error
			if idle, err = s.cli.Idle(); err != nil {
				return 0, nil, s.fail(ctx, "IDLE", err)
			}
			if idleStarted != nil {
				idleStarted()
			}
		}
	}
	t := s.c.clock.NewTimer(d)
	defer t.Stop()
	kind, req := wokePoll, (*request)(nil)
	select {
	case <-s.wake:
		kind = wokeMail
	case req = <-s.c.reqs:
		kind = wokeReq
	case <-t.C():
	case <-ctx.Done():
		return 0, nil, context.Cause(ctx)
	case <-s.cli.Closed():
		return 0, nil, s.fail(ctx, "connection", errors.New("closed by the server"))
	}
	if idle != nil {
		err := idle.Close()
		if err == nil {
			err = idle.Wait()
		}
		if err != nil {
			if req != nil {
				req.reply <- actionErr(codes.Unavailable, "imap: server %s: connection lost", s.c.name)
			}
			return 0, nil, s.fail(ctx, "ending IDLE", err)
		}
	}
	return kind, req, nil
}

func (s *session) handle(ctx context.Context, r *request) error {
	var actErr, fatal error
	switch r.kind {
	case quiltv1.ActionKind_ACTION_KIND_JOIN:
		actErr, fatal = s.join(ctx, r.mailbox)
	case quiltv1.ActionKind_ACTION_KIND_PART:
		actErr, fatal = s.part(ctx, r.mailbox)
	case quiltv1.ActionKind_ACTION_KIND_RECONNECT:
		fatal = errReconnect
	}
	if actErr == nil && fatal != nil && fatal != errReconnect {
		actErr = actionErr(codes.Unavailable, "imap: server %s: %v", s.c.name, fatal)
	}
	r.reply <- actErr
	return fatal
}

// join starts watching mailbox: EXAMINE, the bot's JOIN, then whatever
// arrived since the stored position.
func (s *session) join(ctx context.Context, name string) (actErr, fatal error) {
	if _, ok := s.boxes[name]; ok {
		return nil, nil
	}
	sel, err := s.examine(name)
	if err != nil {
		if ie, ok := serverNo(err); ok {
			return actionErr(codes.NotFound, "imap: server %s: cannot watch mailbox %q: %s", s.c.name, name, ie.Text), nil
		}
		return nil, s.fail(ctx, "EXAMINE "+name, err)
	}
	b := &box{name: name}
	b.pos, b.known = s.c.startPosition(name)
	ev := model.NewEvent(quiltv1.EventKind_EVENT_KIND_JOIN, s.c.clock.Now(), s.c.selfUser())
	ev.Channel = name
	ev.ChannelInfo = &quiltv1.ChannelInfo{Name: name, Attrs: map[string]string{
		"uidvalidity": fmt.Sprint(sel.UIDValidity),
		"uidnext":     fmt.Sprint(uint32(sel.UIDNext)),
		"messages":    fmt.Sprint(sel.NumMessages),
	}}
	if err := s.emit.Emit(ctx, []*quiltv1.Event{ev}, nil); err != nil {
		return nil, err
	}
	s.boxes[name] = b
	s.order = append(s.order, name)
	s.c.log.Info("watching mailbox", "server", s.c.name, "mailbox", name, "uidvalidity", sel.UIDValidity,
		"uidnext", uint32(sel.UIDNext), "messages", sel.NumMessages, "resume", b.pos.String(), "have_cursor", b.known)
	return nil, s.update(ctx, b, sel)
}

func (s *session) part(ctx context.Context, name string) (actErr, fatal error) {
	if _, ok := s.boxes[name]; !ok {
		return actionErr(codes.NotFound, "imap: server %s: mailbox %q is not watched", s.c.name, name), nil
	}
	delete(s.boxes, name)
	s.order = slices.DeleteFunc(s.order, func(n string) bool { return n == name })
	ev := model.NewEvent(quiltv1.EventKind_EVENT_KIND_PART, s.c.clock.Now(), s.c.selfUser())
	ev.Channel = name
	return nil, s.emit.Emit(ctx, []*quiltv1.Event{ev}, nil)
}

// checkAll checks every watched mailbox, the IDLE one last so it stays
// selected.
func (s *session) checkAll(ctx context.Context) error {
	for i := len(s.order) - 1; i >= 0; i-- {
		if err := s.check(ctx, s.boxes[s.order[i]]); err != nil {
			return err
		}
	}
	if len(s.order) == 0 {
		// Nothing to check; a NOOP still proves the connection alive.
		if err := s.cli.Noop().Wait(); err != nil {
			return s.fail(ctx, "NOOP", err)
		}
	}
	return nil
}

func (s *session) check(ctx context.Context, b *box) error {
	sel, err := s.examine(b.name)
	if err != nil {
		if ie, ok := serverNo(err); ok {
			// Deleted or renamed under us: keep watching, it may return.
			s.c.log.Warn("imap: cannot examine a watched mailbox", "server", s.c.name, "mailbox", b.name, "error", ie.Text)
			return nil
		}
		return s.fail(ctx, "EXAMINE "+b.name, err)
	}
	return s.update(ctx, b, sel)
}

func (s *session) examine(name string) (*goimap.SelectData, error) {
	s.selected = ""
	sel, err := s.cli.Select(name, &goimap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return nil, err
	}
	s.selected = name
	return sel, nil
}

// update emits the mail of b (which is selected) above its position.
func (s *session) update(ctx context.Context, b *box, sel *goimap.SelectData) error {
	uv := sel.UIDValidity
	if uv == 0 {
		s.c.log.Warn("imap: the server sent no UIDVALIDITY; the mailbox cannot be followed", "server", s.c.name, "mailbox", b.name)
		return nil
	}
	if !b.known || b.pos.uidValidity != uv {
		if b.known {
			s.c.log.Warn("imap: UIDVALIDITY changed (the mailbox was recreated): its mail is not replayed, watching starts at its current end",
				"server", s.c.name, "mailbox", b.name, "old", b.pos.uidValidity, "new", uv)
		}
		last, err := s.highestUID(ctx, sel)
		if err != nil {
			return err
		}
		b.pos, b.known = position{uidValidity: uv, uid: last}, true
		return s.emitBatch(ctx, b, nil)
	}
	if sel.NumMessages == 0 || (sel.UIDNext != 0 && uint32(sel.UIDNext) <= b.pos.uid+1) {
		return nil
	}
	uids, err := s.newUIDs(ctx, b.pos.uid)
	if err != nil {
		return err
	}
	for len(uids) > 0 {
		n := min(len(uids), fetchChunk)
		if err := s.fetchChunk(ctx, b, uv, uids[:n]); err != nil {
			return err
		}
		uids = uids[n:]
	}
	return nil
}

// highestUID is UIDNEXT-1, or the last message's UID for servers that omit
// UIDNEXT.
func (s *session) highestUID(ctx context.Context, sel *goimap.SelectData) (uint32, error) {
	if sel.UIDNext > 0 {
		return uint32(sel.UIDNext) - 1, nil
	}
	if sel.NumMessages == 0 {
		return 0, nil
	}
	msgs, err := s.cli.Fetch(goimap.SeqSetNum(sel.NumMessages), &goimap.FetchOptions{UID: true}).Collect()
	if err != nil {
		return 0, s.fail(ctx, "FETCH last UID", err)
	}
	var last uint32
	for _, m := range msgs {
		last = max(last, uint32(m.UID))
	}
	return last, nil
}

// newUIDs lists the UIDs above after, ascending.
func (s *session) newUIDs(ctx context.Context, after uint32) ([]uint32, error) {
	set := goimap.UIDSet{{Start: goimap.UID(after + 1), Stop: 0}} // after+1:*
	msgs, err := s.cli.Fetch(set, &goimap.FetchOptions{UID: true}).Collect()
	if err != nil {
		return nil, s.fail(ctx, "UID FETCH new UIDs", err)
	}
	var uids []uint32
	for _, m := range msgs {
		// "n:*" also matches the highest UID when it is below n (RFC 3501
		// §6.4.8), so the bound is checked here.
		if u := uint32(m.UID); u > after {
			uids = append(uids, u)
		}
	}
	slices.Sort(uids)
	return slices.Compact(uids), nil
}

var bodySection = &goimap.FetchItemBodySection{Peek: true, Partial: &goimap.SectionPartial{Offset: 0, Size: MaxFetch}}

func (s *session) fetchChunk(ctx context.Context, b *box, uv uint32, uids []uint32) error {
	set := goimap.UIDSet{}
	for _, u := range uids {
		set.AddNum(goimap.UID(u))
	}
	msgs, err := s.cli.Fetch(set, &goimap.FetchOptions{
		UID: true, InternalDate: true, BodySection: []*goimap.FetchItemBodySection{bodySection},
	}).Collect()
	if err != nil {
		return s.fail(ctx, "UID FETCH "+set.String(), err)
	}
	byUID := make(map[uint32]*imapclient.FetchMessageBuffer, len(msgs))
	for _, m := range msgs {
		byUID[uint32(m.UID)] = m
	}
	now := s.c.clock.Now()
	evs := make([]*quiltv1.Event, 0, len(uids))
	for _, u := range uids {
		m := byUID[u]
		if m == nil {
			continue // expunged since the UID list was made
		}
		ev := mailEvent(b.name, uv, u, m.InternalDate, m.FindBodySection(bodySection), now)
		// Ids are unique per source: two servers of one source may have the
		// same mailbox name and UIDVALIDITY (dovecot derives it from a
		// creation second), so the server name goes first.
		ev.Id = s.c.name + "/" + ev.Id
		evs = append(evs, ev)
	}
	b.pos.uid = uids[len(uids)-1]
	return s.emitBatch(ctx, b, evs)
}

// emitBatch sends evs with b's position, then remembers the position.
func (s *session) emitBatch(ctx context.Context, b *box, evs []*quiltv1.Event) error {
	cur := &quiltv1.Cursor{Server: s.c.name, Name: CursorName(b.name), Value: b.pos.String()}
	if err := s.emit.Emit(ctx, evs, []*quiltv1.Cursor{cur}); err != nil {
		return err
	}
	remember(positionKey(s.c.source, s.c.name, b.name), b.pos)
	if len(evs) > 0 {
		s.c.log.Debug("mail emitted", "server", s.c.name, "mailbox", b.name, "count", len(evs), "position", b.pos.String())
	}
	return nil
}

// mailEvent is the MAIL event of one fetched mail.
func mailEvent(mailbox string, uv, uid uint32, internal time.Time, raw []byte, now time.Time) *quiltv1.Event {
	p := parseMail(raw)
	from := p.From
	if from == "" {
		from = UnknownSender
	}
	display := p.FromName
	if display == "" {
		display = from
	}
	t := internal
	if t.IsZero() {
		t = now
	}
	ev := model.NewEvent(quiltv1.EventKind_EVENT_KIND_MAIL, t,
		&quiltv1.User{Transient: from, Persistent: from, Display: display, Group: from})
	ev.Received = timestamppb.New(now)
	ev.Id = fmt.Sprintf("%s/%d/%d", mailbox, uv, uid)
	ev.Channel = mailbox
	ev.Text = p.Subject
	ev.Mail = &quiltv1.Mail{
		MessageId: p.MessageID, From: from, To: p.To, Subject: p.Subject, Body: p.Body,
		Uid: uid, UidValidity: uv,
	}
	if p.Truncated {
		ev.Tags = map[string]string{"body_truncated": "true"}
	}
	return ev
}
