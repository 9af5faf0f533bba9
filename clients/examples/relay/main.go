// Command relay mirrors every message of one channel to another channel,
// possibly on another source and server, through a quilt cluster:
//
//	go run ./clients/examples/relay -config DIR -from irc/libera/#a -to matrix/hs/!room:hs -format "<{nick}> {text}"
//
// It follows the event stream with the client library's Subscribe, which
// re-subscribes by itself across query-master restarts and leader changes
// (replaying from just before the last event seen and dropping ids already
// seen), and sends the messages on one pipelined action stream
// (ActStream), in order, with at most -window of them sent and not yet
// confirmed, so a slow destination pushes back instead of dropping. When
// results are lost (query-master restart) it looks for the messages in
// doubt in the destination's history, in order, and sends again only those
// missing. A message the destination refuses is retried after a backoff;
// if later ones of the same window went through meanwhile, it arrives
// after them. It never relays the bot's own messages (User.self), so
// relaying A→B and B→A does not loop.
//
// Format placeholders: {nick} (transient name), {display}, {text},
// {channel}, {source}, {server}. Notices stay notices and emotes stay
// emotes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/quilt/quilt/clients/quilt"
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// Endpoint is SOURCE/SERVER/CHANNEL.
type Endpoint struct{ Source, Server, Channel string }

// ParseEndpoint reads SOURCE/SERVER/CHANNEL (the channel may contain '/').
func ParseEndpoint(s string) (Endpoint, error) {
	parts := strings.SplitN(s, "/", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return Endpoint{}, fmt.Errorf("%q: want SOURCE/SERVER/CHANNEL, e.g. irc/libera/#quilt", s)
	}
	return Endpoint{parts[0], parts[1], parts[2]}, nil
}

func (e Endpoint) String() string { return e.Source + "/" + e.Server + "/" + e.Channel }

// Relay mirrors From to To.
type Relay struct {
	Client *quilt.Client
	From   Endpoint
	To     Endpoint
	Format string
	// Since replays stored messages from then before going live (zero:
	// live only).
	Since time.Time
	Log   *slog.Logger
	// Relayed, when set, is called after each message was sent, in order
	// (from the relay's own goroutine: do not block in it).
	Relayed func(e *quiltv1.Event)
	// Window bounds the messages sent and not yet confirmed (0:
	// DefaultWindow; 1 sends one at a time).
	Window int
}

// Render applies the format to e.
func Render(format string, e *quiltv1.Event) string { return compileFormat(format).render(e) }

// placeholders are the names a format may use, each a field of the event.
var placeholders = map[string]func(*quiltv1.Event) string{
	"{nick}": func(e *quiltv1.Event) string { return e.GetUser().GetTransient() },
	"{display}": func(e *quiltv1.Event) string {
		if d := e.GetUser().GetDisplay(); d != "" {
			return d
		}
		return e.GetUser().GetTransient()
	},
	"{text}":    func(e *quiltv1.Event) string { return e.GetText() },
	"{channel}": func(e *quiltv1.Event) string { return e.GetChannel() },
	"{source}":  func(e *quiltv1.Event) string { return e.GetSource() },
	"{server}":  func(e *quiltv1.Event) string { return e.GetServer() },
}

// format is a format split once into literal text and placeholders: a
// strings.Replacer built per message cost more than the rest of the
// relay's work on it.
type format []formatPart

type formatPart struct {
	lit   string
	field func(*quiltv1.Event) string // nil: lit
}

func compileFormat(f string) format {
	var out format
	lit := 0
	for i := 0; i < len(f); i++ {
		if f[i] != '{' {
			continue
		}
		for name, field := range placeholders {
			if strings.HasPrefix(f[i:], name) {
				if lit < i {
					out = append(out, formatPart{lit: f[lit:i]})
				}
				out = append(out, formatPart{field: field})
				i += len(name) - 1
				lit = i + 1
				break
			}
		}
	}
	if lit < len(f) {
		out = append(out, formatPart{lit: f[lit:]})
	}
	return out
}

func (f format) render(e *quiltv1.Event) string {
	if len(f) == 1 && f[0].field != nil {
		return f[0].field(e)
	}
	var b strings.Builder
	for _, p := range f {
		if p.field != nil {
			b.WriteString(p.field(e))
		} else {
			b.WriteString(p.lit)
		}
	}
	return b.String()
}

var styles = map[quiltv1.EventKind]quiltv1.SendStyle{
	quiltv1.EventKind_EVENT_KIND_MESSAGE: quiltv1.SendStyle_SEND_STYLE_MESSAGE,
	quiltv1.EventKind_EVENT_KIND_NOTICE:  quiltv1.SendStyle_SEND_STYLE_NOTICE,
	quiltv1.EventKind_EVENT_KIND_ACTION:  quiltv1.SendStyle_SEND_STYLE_EMOTE,
}

// DefaultWindow is how many messages the relay has sent and not yet seen
// confirmed, by default.
const DefaultWindow = 256

// Run relays until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	if r.Window <= 0 {
		r.Window = DefaultWindow
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// in holds a window's worth, so the subscription reads ahead while
	// the pipeline is busy and the pipeline takes messages in runs.
	p := &pipeline{r: r, in: make(chan *item, r.Window), items: map[uint64]*item{}, backoff: minBackoff,
		as: r.Client.ActStream(ctx)}
	defer p.as.Close()
	go func() { cancel(p.run(ctx)) }()
	fm := compileFormat(r.Format)
	filter := &quiltv1.EventFilter{Sources: []string{r.From.Source}, Server: r.From.Server, Channel: r.From.Channel,
		Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_MESSAGE, quiltv1.EventKind_EVENT_KIND_NOTICE, quiltv1.EventKind_EVENT_KIND_ACTION}}
	err := r.Client.Subscribe(ctx, quilt.SubscribeOptions{Filter: filter, ReplaySince: r.Since,
		OnReconnect: func(err error) { r.Log.Info("stream broke; re-subscribing", "err", err) }},
		func(e *quiltv1.Event) error {
			if e.GetUser().GetSelf() || e.GetPrivate() {
				return nil
			}
			select {
			case p.in <- &item{ev: e, text: fm.render(e)}:
				return nil
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		})
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// item is one message to relay.
type item struct {
	ev     *quiltv1.Event
	text   string
	ref    uint64
	sentAt time.Time
	state  itemState
	why    string
}

type itemState int

const (
	pending   itemState = iota // sent, no outcome yet
	confirmed                  // the source manager said it was sent
	failed                     // surely not sent: the source manager refused it
	unknown                    // the outcome was lost: maybe sent
)

const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// pipeline keeps up to Window messages in flight on one action stream.
// The destination runs them in the order sent, so the messages delivered
// of a window are (barring a refusal in the middle) a prefix of it. One
// goroutine (run) owns all of its state.
type pipeline struct {
	r       *Relay
	as      *quilt.ActStream
	in      chan *item
	queue   []*item // to send, in order, before anything new
	window  []*item // sent, in order, not yet settled
	items   map[uint64]*item
	nextRef uint64
	// bad counts the window's failed or in-doubt messages, waiting its
	// pending ones: the loop asks on every message, the window is large.
	bad, waiting int
	// recent are the last messages confirmed, which the echo check must
	// not mistake for the echo of a message in doubt with the same text.
	recent  []*item
	backoff time.Duration
	hold    <-chan time.Time // set while sending waits for a retry
}

func (p *pipeline) run(ctx context.Context) error {
	for {
		p.sendQueued(ctx)
		var in chan *item
		if len(p.queue) == 0 && p.hold == nil && len(p.window) < p.r.Window && !p.troubled() {
			in = p.in
		}
		select {
		case it := <-in:
			p.queue = append(p.queue, it)
			p.takeMore(in)
		case o := <-p.as.Outcomes():
			p.settle(o)
			p.settleMore()
		case <-p.hold:
			p.hold = nil
		case <-ctx.Done():
			return nil
		}
		p.advance()
		if p.troubled() && !p.anyPending() {
			if err := p.recover(ctx); err != nil {
				return nil
			}
		}
	}
}

// takeMore takes the messages already waiting, up to the window's room,
// so they go out in one run.
func (p *pipeline) takeMore(in chan *item) {
	for len(p.queue)+len(p.window) < p.r.Window {
		select {
		case it := <-in:
			p.queue = append(p.queue, it)
		default:
			return
		}
	}
}

// settleMore settles the outcomes already waiting.
func (p *pipeline) settleMore() {
	for {
		select {
		case o := <-p.as.Outcomes():
			p.settle(o)
		default:
			return
		}
	}
}

// sendQueued sends queued messages while the window has room.
func (p *pipeline) sendQueued(ctx context.Context) {
	for len(p.queue) > 0 && p.hold == nil && len(p.window) < p.r.Window && !p.troubled() {
		it := p.queue[0]
		p.nextRef++
		ref := p.nextRef
		err := p.as.Send(ref, &quiltv1.Action{Source: p.r.To.Source, Server: p.r.To.Server, Kind: quiltv1.ActionKind_ACTION_KIND_SEND,
			Target: p.r.To.Channel, Text: it.text, Style: styles[it.ev.Kind]}, 0)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.r.Log.Warn("relaying a message failed; retrying", "to", p.r.To.String(), "event", it.ev.GetId(), "err", err, "retry_in", p.backoff)
			p.wait()
			return
		}
		it.ref, it.sentAt, it.state = ref, time.Now(), pending
		p.waiting++
		p.items[ref] = it
		p.window = append(p.window, it)
		p.queue = p.queue[1:]
	}
}

// wait holds sending back for the current backoff, and grows it.
func (p *pipeline) wait() {
	p.hold = time.After(p.backoff)
	p.backoff = min(2*p.backoff, maxBackoff)
}

func (p *pipeline) settle(o quilt.ActOutcome) {
	it := p.items[o.Ref]
	if it == nil {
		return
	}
	delete(p.items, o.Ref)
	p.waiting--
	switch {
	case o.Err != nil && o.MayHaveRun:
		// Lost with the stream, timed out, or the source manager detached
		// while holding it: it may have been sent.
		it.state, it.why = unknown, o.Err.Error()
	case o.Err != nil:
		it.state, it.why = failed, o.Err.Error()
	case o.Result.GetOk():
		it.state = confirmed
	default:
		it.state, it.why = failed, o.Result.GetError()
	}
	if it.state != confirmed {
		p.bad++
	}
}

// advance reports the confirmed messages at the head of the window.
func (p *pipeline) advance() {
	for len(p.window) > 0 && p.window[0].state == confirmed {
		p.done(p.window[0])
		p.window[0] = nil
		p.window = p.window[1:]
	}
}

func (p *pipeline) done(it *item) {
	p.backoff = minBackoff
	p.recent = append(p.recent, it)
	if len(p.recent) > 2*p.r.Window {
		p.recent = append(p.recent[:0], p.recent[len(p.recent)-p.r.Window:]...)
	}
	if p.r.Relayed != nil {
		p.r.Relayed(it.ev)
	}
}

// troubled tells whether a message of the window failed or is in doubt:
// nothing new is sent until the window settled, so a retry goes out
// before the messages after it that were not sent yet.
func (p *pipeline) troubled() bool { return p.bad > 0 }

func (p *pipeline) anyPending() bool { return p.waiting > 0 }

// recover settles a window in which every message has an outcome and some
// failed or are in doubt: the ones in doubt are looked for in the
// destination's history, in order; what was delivered counts as relayed,
// the rest is sent again, in order, after a backoff.
func (p *pipeline) recover(ctx context.Context) error {
	var doubt []*item
	for _, it := range p.window {
		if it.state == unknown {
			doubt = append(doubt, it)
		}
	}
	if len(doubt) > 0 {
		p.r.Log.Info("results lost; checking the destination for the messages in doubt", "in_doubt", len(doubt), "why", doubt[0].why)
		if err := p.r.findEchoes(ctx, p.recent, p.window); err != nil {
			return err
		}
	}
	var again []*item
	for _, it := range p.window {
		if it.state == confirmed {
			p.done(it)
			continue
		}
		if it.state == failed {
			p.r.Log.Warn("relaying a message failed; retrying", "to", p.r.To.String(), "event", it.ev.GetId(), "err", it.why, "retry_in", p.backoff)
		}
		again = append(again, it)
	}
	p.window = nil
	p.bad, p.waiting = 0, 0
	if len(again) > 0 {
		p.queue = append(again, p.queue...)
		p.wait()
	}
	return nil
}

// EchoWait is how long the relay looks for the echo of messages whose
// actions ended without a result, once the destination's source manager
// is attached again; it replays its unacknowledged events after it
// re-attaches, so an echo may come late.
var EchoWait = 5 * time.Second

// findEchoes marks confirmed the messages in doubt of window whose echo
// (the bot's own message) is in the destination channel. The echoes are
// matched in order against recent (confirmed before) and the window, each
// echo to the first message after the last one matched with its text, so
// an earlier message with the same text cannot pass for one in doubt. It
// looks until every message in doubt was found or EchoWait passed without
// finding one.
func (r *Relay) findEchoes(ctx context.Context, recent, window []*item) error {
	var first time.Time
	for _, it := range window {
		if it.state == unknown {
			first = it.sentAt
			break
		}
	}
	// Messages confirmed shortly before the first in doubt may have echoes
	// in the range looked at; they take part in the matching.
	since := first.Add(-time.Second)
	var seq []*item
	for _, it := range recent {
		if !it.sentAt.Before(since.Add(-time.Second)) {
			seq = append(seq, it)
		}
	}
	for _, it := range window {
		if it.state != failed {
			seq = append(seq, it)
		}
	}
	r.waitAttached(ctx)
	deadline := time.Now().Add(EchoWait)
	for {
		echoes, err := r.ownMessages(ctx, since)
		if err == nil {
			found, doubt := 0, 0
			pos := 0
			for _, text := range echoes {
				for q := pos; q < len(seq); q++ {
					if seq[q].text == text {
						if seq[q].state == unknown {
							seq[q].state = confirmed
							found++
						}
						pos = q + 1
						break
					}
				}
			}
			for _, it := range seq {
				if it.state == unknown {
					doubt++
				}
			}
			if found > 0 {
				r.Log.Info("messages in doubt found in the destination", "found", found, "still_in_doubt", doubt)
				// The destination is still working through its queue:
				// give the rest as long again.
				deadline = time.Now().Add(EchoWait)
			}
			if doubt == 0 {
				return nil
			}
		} else {
			r.Log.Warn("looking for relayed messages in the destination", "err", err)
		}
		if time.Now().After(deadline) {
			return nil
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitAttached waits (at most a minute) until the destination's source
// manager is attached, so the echoes it still has to replay can arrive.
func (r *Relay) waitAttached(ctx context.Context) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		srcs, err := r.Client.Sources(ctx, false)
		if err == nil {
			for _, s := range srcs {
				if s.Name == r.To.Source && s.Attached {
					return
				}
			}
		}
		if sleepCtx(ctx, 200*time.Millisecond) != nil {
			return
		}
	}
}

// ownMessages lists the texts of the bot's own messages in the
// destination channel since then, oldest first.
func (r *Relay) ownMessages(ctx context.Context, since time.Time) ([]string, error) {
	var out []string
	req := &quiltv1.QueryRequest{Kind: "events", Limit: 1000, OldestFirst: true, Filter: &quiltv1.EventFilter{
		Sources: []string{r.To.Source}, Server: r.To.Server, Channel: r.To.Channel, Since: timestamppb.New(since)}}
	for {
		a, err := r.Client.QueryAll(ctx, req)
		if err != nil {
			return nil, err
		}
		for _, row := range a.Rows {
			if ev := row.GetEvent(); ev.GetUser().GetSelf() {
				out = append(out, ev.GetText())
			}
		}
		if a.Done.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = a.Done.GetNextPageToken()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgDir := fs.String("config", "", "quilt configuration directory (default $QUILT_CFG_DIR, else /etc/quilt)")
	master := fs.String("master", "", "query master host:port (skips discovery)")
	from := fs.String("from", "", "SOURCE/SERVER/CHANNEL to read")
	to := fs.String("to", "", "SOURCE/SERVER/CHANNEL to write")
	format := fs.String("format", "<{nick}> {text}", "message format: {nick} {display} {text} {channel} {source} {server}")
	since := fs.Duration("since", 0, "first relay stored messages this old (0: live only)")
	window := fs.Int("window", DefaultWindow, "messages sent and not yet confirmed, at most (1: one at a time)")
	verbose := fs.Bool("v", false, "log progress")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	src, err := ParseEndpoint(*from)
	if err == nil {
		var dst Endpoint
		if dst, err = ParseEndpoint(*to); err == nil {
			level := slog.LevelWarn
			if *verbose {
				level = slog.LevelInfo
			}
			log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
			c, derr := quilt.Dial(ctx, quilt.Options{ConfigDir: *cfgDir, Master: *master, Identity: "relay " + src.String() + " -> " + dst.String(), Logger: log})
			if derr != nil {
				fmt.Fprintf(stderr, "relay: %v\n", derr)
				return 4
			}
			defer c.Close()
			r := &Relay{Client: c, From: src, To: dst, Format: *format, Log: log, Window: *window}
			if *since > 0 {
				r.Since = time.Now().Add(-*since)
			}
			log.Info("relaying", "from", src.String(), "to", dst.String())
			if err := r.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintf(stderr, "relay: %v\n", err)
				return 1
			}
			return 0
		}
	}
	fmt.Fprintf(stderr, "relay: %v\n", err)
	return 2
}
