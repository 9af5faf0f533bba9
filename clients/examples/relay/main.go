// Command relay mirrors every message of one channel to another channel,
// possibly on another source and server, through a quilt cluster:
//
//	go run ./clients/examples/relay -config DIR -from irc/libera/#a -to matrix/hs/!room:hs -format "<{nick}> {text}"
//
// It follows the event stream with the client library's Subscribe, which
// re-subscribes by itself across query-master restarts and leader changes
// (replaying from just before the last event seen and dropping ids already
// seen), and sends each message with Act, in order, one at a time, so a
// slow destination pushes back instead of dropping. It never relays the
// bot's own messages (User.self), so relaying A→B and B→A does not loop.
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
	// Relayed, when set, is called after each message was sent.
	Relayed func(e *quiltv1.Event)
}

// Render applies the format to e.
func Render(format string, e *quiltv1.Event) string {
	u := e.GetUser()
	display := u.GetDisplay()
	if display == "" {
		display = u.GetTransient()
	}
	return strings.NewReplacer("{nick}", u.GetTransient(), "{display}", display, "{text}", e.GetText(),
		"{channel}", e.GetChannel(), "{source}", e.GetSource(), "{server}", e.GetServer()).Replace(format)
}

var styles = map[quiltv1.EventKind]quiltv1.SendStyle{
	quiltv1.EventKind_EVENT_KIND_MESSAGE: quiltv1.SendStyle_SEND_STYLE_MESSAGE,
	quiltv1.EventKind_EVENT_KIND_NOTICE:  quiltv1.SendStyle_SEND_STYLE_NOTICE,
	quiltv1.EventKind_EVENT_KIND_ACTION:  quiltv1.SendStyle_SEND_STYLE_EMOTE,
}

// Run relays until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	filter := &quiltv1.EventFilter{Sources: []string{r.From.Source}, Server: r.From.Server, Channel: r.From.Channel,
		Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_MESSAGE, quiltv1.EventKind_EVENT_KIND_NOTICE, quiltv1.EventKind_EVENT_KIND_ACTION}}
	return r.Client.Subscribe(ctx, quilt.SubscribeOptions{Filter: filter, ReplaySince: r.Since,
		OnReconnect: func(err error) { r.Log.Info("stream broke; re-subscribing", "err", err) }},
		func(e *quiltv1.Event) error {
			if e.GetUser().GetSelf() || e.GetPrivate() {
				return nil
			}
			return r.send(ctx, e)
		})
}

// send delivers one message, retrying while the destination or the query
// master is unavailable: a message is never skipped. When an attempt ended
// without a result (the master went away mid-action), the action may have
// run: before sending again it looks for the echo of its own message in the
// destination channel, so a restart does not duplicate it.
func (r *Relay) send(ctx context.Context, e *quiltv1.Event) error {
	text := Render(r.Format, e)
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		res, err := r.Client.Act(ctx, &quiltv1.Action{Source: r.To.Source, Server: r.To.Server, Kind: quiltv1.ActionKind_ACTION_KIND_SEND,
			Target: r.To.Channel, Text: text, Style: styles[e.Kind]}, 0)
		if err == nil && res.Ok {
			if r.Relayed != nil {
				r.Relayed(e)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		why := res.GetError()
		if err != nil {
			why = err.Error()
			if r.echoed(ctx, text, start) {
				r.Log.Info("the action's result was lost but the message arrived", "event", e.GetId())
				if r.Relayed != nil {
					r.Relayed(e)
				}
				return nil
			}
		}
		r.Log.Warn("relaying a message failed; retrying", "to", r.To.String(), "event", e.GetId(), "err", why, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// EchoWait is how long the relay looks for the echo of a message whose
// action ended without a result; the source manager replays its
// unacknowledged events after it re-attaches, so the echo may come late.
var EchoWait = 5 * time.Second

// echoed tells whether the bot's own message text was seen in the
// destination channel since start.
func (r *Relay) echoed(ctx context.Context, text string, start time.Time) bool {
	deadline := time.Now().Add(EchoWait)
	for {
		a, err := r.Client.QueryAll(ctx, &quiltv1.QueryRequest{Kind: "events", Limit: 50, Filter: &quiltv1.EventFilter{
			Sources: []string{r.To.Source}, Server: r.To.Server, Channel: r.To.Channel, Text: text,
			Since: timestamppb.New(start.Add(-time.Second))}})
		if err == nil {
			for _, row := range a.Rows {
				if ev := row.GetEvent(); ev.GetUser().GetSelf() && ev.GetText() == text {
					return true
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(200 * time.Millisecond)
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
			r := &Relay{Client: c, From: src, To: dst, Format: *format, Log: log}
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
