package xmpp

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/transport"
	"github.com/quilt/quilt/sourcemanagers/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/ping"
	mstanza "mellium.im/xmpp/stanza"
)

// DefaultJoinTimeout bounds how long Do(JOIN) waits for the room's answer.
const DefaultJoinTimeout = 30 * time.Second

// ActionError is a failed action with the gRPC code of its result.
type ActionError struct {
	code codes.Code
	msg  string
}

func (e *ActionError) Error() string { return e.msg }

// Code classifies the failure for the action result.
func (e *ActionError) Code() codes.Code { return e.code }

func actionErr(c codes.Code, format string, a ...any) error {
	return &ActionError{code: c, msg: fmt.Sprintf(format, a...)}
}

// Client is one XMPP session (a runtime.Client).
type Client struct {
	set     *settings
	log     *slog.Logger
	dialer  transport.Dialer
	timeout time.Duration // session negotiation

	// JoinTimeout bounds Do(JOIN); exported for tests.
	JoinTimeout time.Duration

	ready chan struct{} // closed once the session is negotiated
	inbox chan *stanza  // from the stanza handler to Run

	mu   sync.Mutex
	sess *xmpp.Session
	tr   *tracker
}

var _ runtime.Client = (*Client)(nil)

// NewClient builds a client for cfg.Server; nothing is sent before Run.
// roots, when non-nil, replaces the system roots for certificate checks.
func NewClient(cfg runtime.SessionConfig, deps runtime.ClientDeps, roots *x509.CertPool) (*Client, error) {
	set, err := checkSettings(cfg.Server, roots)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := deps.Dialer
	if d == nil {
		d = transport.SocketDialer{}
	}
	timeout := cfg.Server.ConnectTimeout
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	return &Client{
		set: set, log: log, dialer: d, timeout: timeout,
		JoinTimeout: DefaultJoinTimeout,
		ready:       make(chan struct{}),
		inbox:       make(chan *stanza, 256),
	}, nil
}

// Run connects, negotiates the stream, reports CONNECTED and turns stanzas
// into events until ctx ends or the stream does.
func (c *Client) Run(ctx context.Context, emit runtime.Emitter, connected func(self *quiltv1.User)) error {
	// Whatever ends Run also releases a stanza handler waiting on inbox.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.set.tls == nil {
		c.log.Warn("xmpp: STARTTLS is OFF for this server (tls = false): the password and every message cross the network in clear",
			"server", c.set.name, "address", c.set.addr)
	} else if c.set.tls.InsecureSkipVerify {
		c.log.Warn("xmpp: TLS certificate verification is OFF for this server (tls_verify = false): anyone on the network path can impersonate it",
			"server", c.set.name, "address", c.set.addr)
	}
	conn, err := c.dialer.Dial(ctx, []string{c.set.addr}, transport.DialOptions{MaxAttempts: 1, ConnectTimeout: c.timeout})
	if err != nil {
		return fmt.Errorf("xmpp: server %s: %w", c.set.name, err)
	}
	nc := transport.Stream(conn)
	defer nc.Close()
	// Reads block in the library; closing the connection is what ends
	// them when ctx does.
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()

	sess, err := c.negotiate(ctx, nc)
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("xmpp: server %s (%s): %w", c.set.name, c.set.addr, err)
	}
	bound := sess.LocalAddr()
	self := &quiltv1.User{Transient: bound.String(), Persistent: bound.Bare().String(), Display: c.set.nick, Group: bound.Bare().String(), Self: true}
	c.mu.Lock()
	c.sess = sess
	c.tr = newTracker(proto.Clone(self).(*quiltv1.User), func(msg string, args ...any) { c.log.Warn("xmpp: "+msg, args...) })
	c.mu.Unlock()

	served := make(chan error, 1)
	go func() { served <- sess.Serve(xmpp.HandlerFunc(c.handle(ctx))) }()
	// Initial presence: without it the server sends us no chat messages.
	if err := sess.Send(ctx, xml.NewDecoder(strings.NewReader(`<presence/>`))); err != nil {
		return fmt.Errorf("xmpp: server %s: initial presence: %w", c.set.name, err)
	}
	close(c.ready)
	connected(self)
	dead := make(chan error, 1)
	go c.keepAlive(ctx, sess, dead)

	for {
		select {
		case err := <-dead:
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return fmt.Errorf("xmpp: server %s (%s): %w", c.set.name, c.set.addr, err)
		case st := <-c.inbox:
			if evs := c.tr.handle(st, time.Now()); len(evs) > 0 {
				if err := emit.Emit(ctx, evs, nil); err != nil {
					return err
				}
			}
		case err := <-served:
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if err == nil || errors.Is(err, io.EOF) {
				err = errors.New("stream closed by the server")
			}
			return fmt.Errorf("xmpp: server %s: %w", c.set.name, err)
		case <-ctx.Done():
			_ = sess.Close()
			return context.Cause(ctx)
		}
	}
}

// keepAlive pings the server (XEP-0199) every pingEvery and reports on
// dead a ping that got no answer within pingTimeout: a connection that a
// NAT or firewall dropped, or a hung server, looks open to TCP for a long
// time, and the client would wait on it, missing every event, instead of
// reconnecting. Any answer, an error included, shows the server alive.
func (c *Client) keepAlive(ctx context.Context, sess *xmpp.Session, dead chan<- error) {
	t := time.NewTicker(c.set.pingEvery)
	defer t.Stop()
	server := c.set.jid.Domain()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, c.set.pingTimeout)
		err := ping.Send(pctx, sess, server)
		cancel()
		if ctx.Err() != nil {
			return
		}
		var stErr mstanza.Error
		switch {
		case err == nil, errors.As(err, &stErr):
			continue
		case errors.Is(err, context.DeadlineExceeded):
			err = fmt.Errorf("no answer to a ping within %v: the connection is dead", c.set.pingTimeout)
		default:
			err = fmt.Errorf("ping: %w", err)
		}
		dead <- err
		return
	}
}

func (c *Client) negotiate(ctx context.Context, nc io.ReadWriter) (*xmpp.Session, error) {
	nctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var state xmpp.SessionState
	var features []xmpp.StreamFeature
	if c.set.tls != nil {
		features = append(features, xmpp.StartTLS(c.set.tls))
	} else {
		// mellium authenticates only on secure streams; tls = false is
		// the operator's explicit choice (warned about in Run).
		state = xmpp.Secure
	}
	features = append(features,
		xmpp.SASL("", c.set.password, sasl.ScramSha256, sasl.ScramSha1, sasl.Plain),
		bindFeature(c.set.jid.Resourcepart()))
	sess, err := xmpp.NewSession(nctx, c.set.jid.Domain(), c.set.jid, nc, state,
		xmpp.NewNegotiator(func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
			return xmpp.StreamConfig{Features: features}
		}))
	if err != nil {
		// mellium's errors name no secret; the password is never in them.
		return nil, fmt.Errorf("session negotiation as %s: %w", c.set.jid, err)
	}
	return sess, nil
}

type pingIQ struct {
	XMLName xml.Name  `xml:"iq"`
	ID      string    `xml:"id,attr"`
	From    string    `xml:"from,attr"`
	Type    string    `xml:"type,attr"`
	Ping    *struct{} `xml:"urn:xmpp:ping ping"`
}

type iqResult struct {
	XMLName xml.Name `xml:"jabber:client iq"`
	ID      string   `xml:"id,attr"`
	To      string   `xml:"to,attr,omitempty"`
	Type    string   `xml:"type,attr"`
}

// handle runs on Serve's goroutine while the library holds the stream
// locks: it decodes the stanza and hands it to Run, and answers pings.
func (c *Client) handle(ctx context.Context) func(t xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	return func(t xmlstream.TokenReadEncoder, start *xml.StartElement) error {
		// The decoder must see the start element itself, or it rejects the
		// end element as unbalanced.
		d := xml.NewTokenDecoder(xmlstream.MultiReader(xmlstream.Token(*start), t))
		tok, err := d.Token()
		if err != nil {
			return nil
		}
		el := tok.(xml.StartElement)
		start = &el
		if start.Name.Local == "iq" {
			var iq pingIQ
			if err := d.DecodeElement(&iq, start); err != nil {
				c.log.Warn("xmpp: undecodable iq", "error", err)
				return nil
			}
			if iq.Type == "get" && iq.Ping != nil {
				return t.Encode(iqResult{ID: iq.ID, To: iq.From, Type: "result"})
			}
			return nil // mellium answers other requests with service-unavailable
		}
		st, err := decodeStanza(d, start)
		if err != nil {
			if !errors.Is(err, errNotStanza) {
				c.log.Warn("xmpp: undecodable stanza dropped", "error", err)
			}
			return nil
		}
		select {
		case c.inbox <- st:
		case <-ctx.Done():
		}
		return nil
	}
}

func (c *Client) session(ctx context.Context) (*xmpp.Session, *tracker, error) {
	select {
	case <-c.ready:
	case <-ctx.Done():
		return nil, nil, context.Cause(ctx)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess, c.tr, nil
}

func newID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Outbound stanzas.
type outMessage struct {
	XMLName  xml.Name   `xml:"jabber:client message"`
	To       string     `xml:"to,attr"`
	Type     string     `xml:"type,attr"`
	ID       string     `xml:"id,attr"`
	Body     string     `xml:"body,omitempty"`
	Subject  *string    `xml:"subject"`
	OriginID *originOut `xml:"urn:xmpp:sid:0 origin-id"`
}

type originOut struct {
	ID string `xml:"id,attr"`
}

type mucJoin struct {
	XMLName xml.Name `xml:"jabber:client presence"`
	To      string   `xml:"to,attr"`
	ID      string   `xml:"id,attr"`
	X       struct {
		Password string `xml:"password,omitempty"`
		History  struct {
			MaxStanzas int `xml:"maxstanzas,attr"`
		} `xml:"history"`
	} `xml:"http://jabber.org/protocol/muc x"`
}

type mucLeave struct {
	XMLName xml.Name `xml:"jabber:client presence"`
	To      string   `xml:"to,attr"`
	ID      string   `xml:"id,attr"`
	Type    string   `xml:"type,attr"`
	Status  string   `xml:"status,omitempty"`
}

type kickIQ struct {
	XMLName xml.Name `xml:"jabber:client iq"`
	To      string   `xml:"to,attr"`
	ID      string   `xml:"id,attr"`
	Type    string   `xml:"type,attr"`
	Query   struct {
		Item struct {
			Nick   string `xml:"nick,attr"`
			Role   string `xml:"role,attr"`
			Reason string `xml:"reason,omitempty"`
		} `xml:"item"`
	} `xml:"http://jabber.org/protocol/muc#admin query"`
}

type iqResponse struct {
	XMLName xml.Name
	Type    string     `xml:"type,attr"`
	Error   *stanzaErr `xml:"error"`
}

// Do carries out an action; it waits until the session is negotiated.
func (c *Client) Do(ctx context.Context, a *quiltv1.Action) (int, error) {
	sess, tr, err := c.session(ctx)
	if err != nil {
		return 0, err
	}
	switch a.GetKind() {
	case quiltv1.ActionKind_ACTION_KIND_SEND:
		return c.send(ctx, sess, tr, a)
	case quiltv1.ActionKind_ACTION_KIND_JOIN:
		return c.join(ctx, sess, tr, a)
	case quiltv1.ActionKind_ACTION_KIND_PART:
		name, nick, ok := tr.room(a.GetTarget())
		if !ok || strings.Contains(a.GetTarget(), "/") {
			return 0, actionErr(codes.FailedPrecondition, "xmpp: part: not in room %q", a.GetTarget())
		}
		p := mucLeave{To: name + "/" + nick, ID: newID(), Type: "unavailable", Status: a.GetText()}
		if err := sess.Encode(ctx, p); err != nil {
			return 0, fmt.Errorf("xmpp: part %s: %w", name, err)
		}
		return 1, nil
	case quiltv1.ActionKind_ACTION_KIND_KICK:
		return c.kick(ctx, sess, tr, a)
	case quiltv1.ActionKind_ACTION_KIND_TOPIC:
		name, _, ok := tr.room(a.GetTarget())
		if !ok || strings.Contains(a.GetTarget(), "/") {
			return 0, actionErr(codes.FailedPrecondition, "xmpp: topic: not in room %q", a.GetTarget())
		}
		subj := a.GetText()
		m := outMessage{To: name, Type: "groupchat", ID: newID(), Subject: &subj}
		if err := sess.Encode(ctx, m); err != nil {
			return 0, fmt.Errorf("xmpp: topic of %s: %w", name, err)
		}
		return 1, nil
	case quiltv1.ActionKind_ACTION_KIND_RAW:
		return c.raw(ctx, sess, a.GetText())
	}
	return 0, actionErr(codes.Unimplemented, "xmpp: action %s not supported", a.GetKind())
}

func (c *Client) send(ctx context.Context, sess *xmpp.Session, tr *tracker, a *quiltv1.Action) (int, error) {
	target := a.GetTarget()
	if a.GetText() == "" {
		return 0, actionErr(codes.InvalidArgument, "xmpp: send to %q: empty text", target)
	}
	to, err := jid.Parse(target)
	if err != nil || to.Domainpart() == "" {
		return 0, actionErr(codes.InvalidArgument, "xmpp: send: target %q is not a JID", target)
	}
	typ := "chat"
	if name, _, ok := tr.room(target); ok {
		if to.Resourcepart() == "" {
			typ, target = "groupchat", name
		} else {
			target = name + "/" + to.Resourcepart() // private message via the room
		}
	}
	body := a.GetText()
	if a.GetStyle() == quiltv1.SendStyle_SEND_STYLE_EMOTE {
		body = "/me " + body // XEP-0245
	}
	// XMPP has no notices: SEND_STYLE_NOTICE goes out as a plain message.
	m := outMessage{To: target, Type: typ, ID: newID(), Body: body, OriginID: &originOut{ID: newID()}}
	if err := sess.Encode(ctx, m); err != nil {
		return 0, fmt.Errorf("xmpp: send to %s: %w", target, err)
	}
	return 1, nil
}

func (c *Client) join(ctx context.Context, sess *xmpp.Session, tr *tracker, a *quiltv1.Action) (int, error) {
	r, err := jid.Parse(a.GetTarget())
	if err != nil || r.Localpart() == "" || r.Resourcepart() != "" {
		return 0, actionErr(codes.InvalidArgument, "xmpp: join: %q is not a room JID (room@service)", a.GetTarget())
	}
	name := a.GetTarget()
	done, err := tr.startJoin(name, c.set.nick)
	if errors.Is(err, errJoined) {
		return 0, nil
	}
	p := mucJoin{To: name + "/" + c.set.nick, ID: newID()}
	p.X.Password = a.GetKey()
	if err := sess.Encode(ctx, p); err != nil {
		tr.abandonJoin(name)
		return 0, fmt.Errorf("xmpp: join %s: %w", name, err)
	}
	timer := time.NewTimer(c.JoinTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			return 1, actionErr(codes.FailedPrecondition, "%v", err)
		}
		return 1, nil
	case <-timer.C:
		tr.abandonJoin(name)
		return 1, actionErr(codes.DeadlineExceeded, "xmpp: join %s: no answer from the room in %v", name, c.JoinTimeout)
	case <-ctx.Done():
		return 1, context.Cause(ctx)
	}
}

func (c *Client) kick(ctx context.Context, sess *xmpp.Session, tr *tracker, a *quiltv1.Action) (int, error) {
	name, _, ok := tr.room(a.GetTarget())
	if !ok || strings.Contains(a.GetTarget(), "/") {
		return 0, actionErr(codes.FailedPrecondition, "xmpp: kick: not in room %q", a.GetTarget())
	}
	nick := a.GetUser()
	if b, res := splitJID(nick); res != "" {
		if !strings.EqualFold(b, name) {
			return 0, actionErr(codes.InvalidArgument, "xmpp: kick: %q is not an occupant of %s", nick, name)
		}
		nick = res
	}
	if nick == "" {
		return 0, actionErr(codes.InvalidArgument, "xmpp: kick from %s: no user", name)
	}
	q := kickIQ{To: name, ID: newID(), Type: "set"}
	q.Query.Item.Nick, q.Query.Item.Role, q.Query.Item.Reason = nick, "none", a.GetText()
	kctx, cancel := context.WithTimeout(ctx, c.JoinTimeout)
	defer cancel()
	resp, err := sess.EncodeIQ(kctx, q)
	if err != nil {
		return 1, fmt.Errorf("xmpp: kick %s from %s: %w", nick, name, err)
	}
	defer resp.Close()
	var r iqResponse
	if err := xml.NewTokenDecoder(resp).Decode(&r); err != nil {
		return 1, fmt.Errorf("xmpp: kick %s from %s: reading the answer: %w", nick, name, err)
	}
	if r.Type == "error" {
		code := codes.FailedPrecondition
		cond := r.Error.Condition()
		if strings.HasPrefix(cond, "forbidden") || strings.HasPrefix(cond, "not-allowed") {
			code = codes.PermissionDenied
		}
		return 1, actionErr(code, "xmpp: kick %s from %s refused: %s", nick, name, cond)
	}
	return 1, nil
}

// raw sends one stanza given as XML text; it must be a message, presence
// or iq, so a RAW action cannot break the stream.
func (c *Client) raw(ctx context.Context, sess *xmpp.Session, text string) (int, error) {
	d := xml.NewDecoder(strings.NewReader(text))
	var start *xml.StartElement
	for start == nil {
		tok, err := d.Token()
		if err != nil {
			return 0, actionErr(codes.InvalidArgument, "xmpp: raw: not one XML stanza: %v", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			start = &t
		case xml.CharData:
			if strings.TrimSpace(string(t)) != "" {
				return 0, actionErr(codes.InvalidArgument, "xmpp: raw: text outside a stanza")
			}
		default:
			return 0, actionErr(codes.InvalidArgument, "xmpp: raw: want a stanza element")
		}
	}
	switch start.Name.Local {
	case "message", "presence", "iq":
	default:
		return 0, actionErr(codes.InvalidArgument, "xmpp: raw: <%s> is not a stanza (message, presence or iq)", start.Name.Local)
	}
	// Check the element is complete and alone before writing a byte.
	var rest []xml.Token
	depth := 1
	for depth > 0 {
		tok, err := d.Token()
		if err != nil {
			return 0, actionErr(codes.InvalidArgument, "xmpp: raw: incomplete stanza: %v", err)
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		}
		rest = append(rest, xml.CopyToken(tok))
	}
	if tok, err := d.Token(); err != io.EOF && !(err == nil && isSpace(tok)) {
		return 0, actionErr(codes.InvalidArgument, "xmpp: raw: one stanza only")
	}
	r := xmlstream.MultiReader(xmlstream.Token(*start), xmlstream.ReaderFunc(tokenList(rest)))
	if err := sess.Send(ctx, r); err != nil {
		return 0, fmt.Errorf("xmpp: raw: %w", err)
	}
	return 1, nil
}

func isSpace(t xml.Token) bool {
	cd, ok := t.(xml.CharData)
	return ok && strings.TrimSpace(string(cd)) == ""
}

func tokenList(toks []xml.Token) func() (xml.Token, error) {
	return func() (xml.Token, error) {
		if len(toks) == 0 {
			return nil, io.EOF
		}
		t := toks[0]
		toks = toks[1:]
		return t, nil
	}
}
