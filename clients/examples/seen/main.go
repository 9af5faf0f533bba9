// Command seen is a bot that answers "!seen NICK" in any channel, on any
// network of a quilt cluster, from the lastseen query:
//
//	go run ./clients/examples/seen -config DIR
//
// It follows message events with the client library's Subscribe (which
// reconnects and follows the leader by itself), runs a lastseen query for
// the nick asked about, and answers with Act in the channel (or privately
// when asked privately). It ignores its own messages.
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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// Bot answers !seen.
type Bot struct {
	Client  *quilt.Client
	Command string // default "!seen"
	Log     *slog.Logger
	Now     func() time.Time
}

// Answer is the reply to "!seen nick" (nick may be a glob).
func (b *Bot) Answer(ctx context.Context, nick string) (string, error) {
	a, err := b.Client.QueryAll(ctx, &quiltv1.QueryRequest{Kind: "lastseen", Limit: 1, Filter: &quiltv1.EventFilter{User: nick}})
	if err != nil {
		return "", err
	}
	if len(a.Rows) == 0 {
		return fmt.Sprintf("I have not seen %s.", nick), nil
	}
	r := a.Rows[0].GetLastSeen()
	ago := b.Now().Sub(r.GetTime().AsTime()).Round(time.Second)
	where := r.GetSource() + "/" + r.GetServer()
	if r.GetChannel() != "" {
		where = r.GetChannel() + " on " + where
	}
	s := fmt.Sprintf("%s was last seen %s ago in %s", r.GetUser().GetTransient(), ago, where)
	if m := r.GetLastMessage(); m != nil {
		s += fmt.Sprintf(", saying: %s", m.GetText())
	}
	return s + ".", nil
}

// Run answers until ctx ends.
func (b *Bot) Run(ctx context.Context) error {
	if b.Command == "" {
		b.Command = "!seen"
	}
	if b.Now == nil {
		b.Now = time.Now
	}
	if b.Log == nil {
		b.Log = slog.New(slog.DiscardHandler)
	}
	filter := &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_MESSAGE}, Text: b.Command}
	return b.Client.Subscribe(ctx, quilt.SubscribeOptions{Filter: filter}, func(e *quiltv1.Event) error {
		if e.GetUser().GetSelf() {
			return nil
		}
		f := strings.Fields(e.GetText())
		if len(f) != 2 || f[0] != b.Command {
			return nil
		}
		answer, err := b.Answer(ctx, f[1])
		if err != nil {
			b.Log.Warn("lastseen query failed", "nick", f[1], "err", err)
			answer = "Sorry, I cannot look that up right now."
		}
		target := e.GetChannel()
		if e.GetPrivate() || target == "" {
			target = e.GetUser().GetTransient()
		}
		res, err := b.Client.Send(ctx, e.GetSource(), e.GetServer(), target, answer, quiltv1.SendStyle_SEND_STYLE_MESSAGE)
		if err != nil || !res.GetOk() {
			b.Log.Warn("answering failed", "to", target, "err", err, "result", res.GetError())
		}
		return nil
	})
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("seen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgDir := fs.String("config", "", "quilt configuration directory (default $QUILT_CFG_DIR, else /etc/quilt)")
	master := fs.String("master", "", "query master host:port (skips discovery)")
	command := fs.String("command", "!seen", "the command word")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, err := quilt.Dial(ctx, quilt.Options{ConfigDir: *cfgDir, Master: *master, Identity: "seen-bot", Logger: log})
	if err != nil {
		fmt.Fprintf(stderr, "seen: %v\n", err)
		return 4
	}
	defer c.Close()
	b := &Bot{Client: c, Command: *command, Log: log}
	log.Info("answering", "command", *command, "master", c.Address())
	if err := b.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "seen: %v\n", err)
		return 1
	}
	return 0
}
