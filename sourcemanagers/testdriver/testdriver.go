// Package testdriver is the `protocol = test` driver: an in-process
// network with no sockets, for tests, benchmarks and the real-binary
// integration test.
//
// Each server is a ClientDriver session that, once "connected", has the
// bot (nick "quilt") and `users` users (user1..userN). Joining a channel
// (the configured channels are joined at connect) emits the bot's JOIN and
// the channel's MEMBERS (every user). With `rate` > 0 it emits MESSAGE
// events from the users into the joined channels at that many per second.
// Actions are echoed as events, so an Act round trip is observable:
//
//	SEND   → MESSAGE (NOTICE, ACTION per style) from the bot to target
//	JOIN   → JOIN of the bot + MEMBERS; PART → PART of the bot
//	KICK   → KICK; TOPIC → TOPIC
//	RAW    → one script command (below), so tests can drive the network
//
// Script commands (RAW text, or one per line in the `script` file, which
// runs after connecting; # starts a comment):
//
//	join NICK CHANNEL          msg NICK CHANNEL TEXT...
//	part NICK CHANNEL          privmsg NICK TEXT...
//	quit NICK                  nick OLD NEW
//	emit N                     N messages at once, round-robin
//	sleep DURATION             (script only) wait on the runtime's clock
//	fail TEXT                  the action fails with TEXT (tests)
//	disconnect TEXT            the session ends with TEXT as the reason
//
// Event ids are left to the runtime (SessionID:N), so they are stable
// across replays of the source manager's buffer.
package testdriver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/model"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// Protocol is the smd.d protocol name this driver serves.
const Protocol = "test"

// BotNick is the bot's transient name on every test server.
const BotNick = "quilt"

// Driver is the test protocol's runtime.ClientDriver.
type Driver struct{}

var _ runtime.ClientDriver = Driver{}

// Protocol implements runtime.Driver.
func (Driver) Protocol() string { return Protocol }

// NewClient implements runtime.ClientDriver.
func (Driver) NewClient(cfg runtime.SessionConfig, deps runtime.ClientDeps) (runtime.Client, error) {
	ts := cfg.Server.Test
	if ts == nil {
		ts = &config.TestSettings{Users: 10}
	}
	clock := deps.Clock
	if clock == nil {
		clock = runtime.SystemClock{}
	}
	c := &Client{cfg: cfg, settings: *ts, clock: clock, joined: map[string]bool{}}
	for i := 1; i <= ts.Users; i++ {
		c.users = append(c.users, "user"+strconv.Itoa(i))
	}
	return c, nil
}

// Client is one test session.
type Client struct {
	cfg      runtime.SessionConfig
	settings config.TestSettings
	clock    runtime.Clock

	mu       sync.Mutex
	emit     runtime.Emitter
	ctx      context.Context
	stop     context.CancelCauseFunc
	users    []string
	joined   map[string]bool
	chanList []string // joined, in join order
	rr       int      // round-robin position for messages
}

// Run implements runtime.Client.
func (c *Client) Run(ctx context.Context, emit runtime.Emitter, connected func(self *quiltv1.User)) error {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	c.mu.Lock()
	c.emit, c.ctx, c.stop = emit, ctx, stop
	c.mu.Unlock()
	connected(&quiltv1.User{Transient: BotNick, Persistent: BotNick + "@test", Display: BotNick, Group: BotNick, Self: true})
	if c.settings.Script != "" {
		if err := c.runScript(ctx, c.settings.Script); err != nil {
			return err
		}
	}
	if c.settings.Rate <= 0 {
		<-ctx.Done()
		return context.Cause(ctx)
	}
	// Emit in slices of 10ms so high rates go up in few calls.
	const step = 10 * time.Millisecond
	owed := 0.0
	for {
		t := c.clock.NewTimer(step)
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-t.C():
		}
		owed += c.settings.Rate * step.Seconds()
		if n := int(owed); n > 0 {
			owed -= float64(n)
			if err := c.messages(ctx, n); err != nil {
				return err
			}
		}
	}
}

func (c *Client) runScript(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("test script: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		if d, ok := strings.CutPrefix(text, "sleep "); ok {
			dur, err := time.ParseDuration(strings.TrimSpace(d))
			if err != nil {
				return fmt.Errorf("%s:%d: %w", path, line, err)
			}
			t := c.clock.NewTimer(dur)
			select {
			case <-ctx.Done():
				t.Stop()
				return context.Cause(ctx)
			case <-t.C():
			}
			continue
		}
		if err := c.command(ctx, text); err != nil {
			return fmt.Errorf("%s:%d: %w", path, line, err)
		}
	}
	return sc.Err()
}

func (c *Client) now() time.Time { return c.clock.Now() }

func (c *Client) send(ctx context.Context, evs ...*quiltv1.Event) error {
	c.mu.Lock()
	emit := c.emit
	c.mu.Unlock()
	if emit == nil {
		return errors.New("test session not running")
	}
	return emit.Emit(ctx, evs, nil)
}

func self() *quiltv1.User { return &quiltv1.User{Transient: BotNick, Self: true} }

func (c *Client) userProto(nick string) *quiltv1.User {
	return &quiltv1.User{Transient: nick, Persistent: nick + "@test", Display: nick, Group: nick}
}

// emitChunk bounds the events one Emit call carries. A real session hands
// the runtime what one read from its network decoded, a few hundred events
// at most; emitting a large "emit N" as one slice would instead build all N
// before the first left (no overlap with the link, and a heap of N events).
const emitChunk = 512

// messages emits n MESSAGE events round-robin over users and channels, in
// chunks of emitChunk.
func (c *Client) messages(ctx context.Context, n int) error {
	for n > 0 {
		k := min(n, emitChunk)
		evs := c.messageChunk(k)
		if evs == nil {
			return nil
		}
		if err := c.send(ctx, evs...); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// messageChunk builds k messages, or nil when there is no user or channel.
func (c *Client) messageChunk(k int) []*quiltv1.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.users) == 0 || len(c.chanList) == 0 {
		return nil
	}
	now := c.now()
	evs := make([]*quiltv1.Event, k)
	for i := range evs {
		u := c.users[c.rr%len(c.users)]
		ch := c.chanList[c.rr%len(c.chanList)]
		c.rr++
		evs[i] = model.NewMessage(now, &quiltv1.User{Transient: u}, ch, "message "+strconv.Itoa(c.rr))
	}
	return evs
}

// join emits the bot's join of channel and its member list.
func (c *Client) join(ctx context.Context, channel string) error {
	c.mu.Lock()
	if !c.joined[channel] {
		c.joined[channel] = true
		c.chanList = append(c.chanList, channel)
	}
	members := make([]*quiltv1.Member, 0, len(c.users)+1)
	members = append(members, &quiltv1.Member{User: self(), Modes: []string{"o"}})
	for _, u := range c.users {
		members = append(members, &quiltv1.Member{User: c.userProto(u)})
	}
	c.mu.Unlock()
	now := c.now()
	j := model.NewEvent(quiltv1.EventKind_EVENT_KIND_JOIN, now, self())
	j.Channel = channel
	j.ChannelInfo = &quiltv1.ChannelInfo{Name: channel, Topic: "test channel " + channel}
	ms := model.NewEvent(quiltv1.EventKind_EVENT_KIND_MEMBERS, now, nil)
	ms.Channel = channel
	ms.Members = members
	return c.send(ctx, j, ms)
}

func (c *Client) part(ctx context.Context, channel, reason string) error {
	c.mu.Lock()
	delete(c.joined, channel)
	if i := slices.Index(c.chanList, channel); i >= 0 {
		c.chanList = slices.Delete(c.chanList, i, i+1)
	}
	c.mu.Unlock()
	e := model.NewEvent(quiltv1.EventKind_EVENT_KIND_PART, c.now(), self())
	e.Channel, e.Text = channel, reason
	return c.send(ctx, e)
}

// Do implements runtime.Client.
func (c *Client) Do(ctx context.Context, a *quiltv1.Action) (int, error) {
	now := c.now()
	switch a.GetKind() {
	case quiltv1.ActionKind_ACTION_KIND_SEND:
		if a.GetTarget() == "" {
			return 0, errors.New("SEND without a target")
		}
		k := quiltv1.EventKind_EVENT_KIND_MESSAGE
		switch a.GetStyle() {
		case quiltv1.SendStyle_SEND_STYLE_NOTICE:
			k = quiltv1.EventKind_EVENT_KIND_NOTICE
		case quiltv1.SendStyle_SEND_STYLE_EMOTE:
			k = quiltv1.EventKind_EVENT_KIND_ACTION
		}
		e := model.NewEvent(k, now, self())
		e.Text = a.GetText()
		if strings.HasPrefix(a.GetTarget(), "#") {
			e.Channel = a.GetTarget()
		} else {
			e.Private = true
			e.TargetUser = &quiltv1.User{Transient: a.GetTarget()}
		}
		e.Tags = map[string]string{"action_id": a.GetId()}
		return 1, c.send(ctx, e)
	case quiltv1.ActionKind_ACTION_KIND_JOIN:
		return 1, c.join(ctx, a.GetTarget())
	case quiltv1.ActionKind_ACTION_KIND_PART:
		return 1, c.part(ctx, a.GetTarget(), a.GetText())
	case quiltv1.ActionKind_ACTION_KIND_KICK:
		e := model.NewEvent(quiltv1.EventKind_EVENT_KIND_KICK, now, self())
		e.Channel, e.Text, e.TargetUser = a.GetTarget(), a.GetText(), &quiltv1.User{Transient: a.GetUser()}
		return 1, c.send(ctx, e)
	case quiltv1.ActionKind_ACTION_KIND_TOPIC:
		e := model.NewEvent(quiltv1.EventKind_EVENT_KIND_TOPIC, now, self())
		e.Channel, e.Text = a.GetTarget(), a.GetText()
		return 1, c.send(ctx, e)
	case quiltv1.ActionKind_ACTION_KIND_RAW:
		return 1, c.command(ctx, a.GetText())
	}
	return 0, fmt.Errorf("test driver: unsupported action kind %s", a.GetKind())
}

// command runs one script command.
func (c *Client) command(ctx context.Context, text string) error {
	f := strings.Fields(text)
	if len(f) == 0 {
		return errors.New("empty command")
	}
	rest := func(i int) string {
		if len(f) <= i {
			return ""
		}
		return strings.Join(f[i:], " ")
	}
	need := func(n int) error {
		if len(f) < n+1 {
			return fmt.Errorf("%s needs %d argument(s): %q", f[0], n, text)
		}
		return nil
	}
	now := c.now()
	switch f[0] {
	case "join", "part":
		if err := need(2); err != nil {
			return err
		}
		k := quiltv1.EventKind_EVENT_KIND_JOIN
		if f[0] == "part" {
			k = quiltv1.EventKind_EVENT_KIND_PART
		}
		if f[1] == BotNick {
			if k == quiltv1.EventKind_EVENT_KIND_JOIN {
				return c.join(ctx, f[2])
			}
			return c.part(ctx, f[2], rest(3))
		}
		e := model.NewEvent(k, now, c.userProto(f[1]))
		e.Channel, e.Text = f[2], rest(3)
		return c.send(ctx, e)
	case "msg":
		if err := need(2); err != nil {
			return err
		}
		return c.send(ctx, model.NewMessage(now, &quiltv1.User{Transient: f[1]}, f[2], rest(3)))
	case "privmsg":
		if err := need(1); err != nil {
			return err
		}
		e := model.NewMessage(now, &quiltv1.User{Transient: f[1]}, "", rest(2))
		e.TargetUser = self()
		return c.send(ctx, e)
	case "quit":
		if err := need(1); err != nil {
			return err
		}
		e := model.NewEvent(quiltv1.EventKind_EVENT_KIND_QUIT, now, &quiltv1.User{Transient: f[1]})
		e.Text = rest(2)
		return c.send(ctx, e)
	case "nick":
		if err := need(2); err != nil {
			return err
		}
		e := model.NewEvent(quiltv1.EventKind_EVENT_KIND_NICK, now, &quiltv1.User{Transient: f[1]})
		e.TargetUser = &quiltv1.User{Transient: f[2], Display: f[2], Group: f[2]}
		return c.send(ctx, e)
	case "emit":
		if err := need(1); err != nil {
			return err
		}
		n, err := strconv.Atoi(f[1])
		if err != nil || n < 0 {
			return fmt.Errorf("emit: bad count %q", f[1])
		}
		return c.messages(ctx, n)
	case "fail":
		return errors.New(rest(1))
	case "disconnect":
		c.mu.Lock()
		stop := c.stop
		c.mu.Unlock()
		if stop != nil {
			stop(errors.New(rest(1)))
		}
		return nil
	}
	return fmt.Errorf("unknown test command %q", f[0])
}
