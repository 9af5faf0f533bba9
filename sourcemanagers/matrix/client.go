package matrix

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/sourcemanagers/runtime"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// CursorSince is the Cursor name of the /sync since-token.
const CursorSince = "since"

// Client is one Matrix session (a runtime.Client).
type Client struct {
	name  string // [server NAME]
	set   *config.MatrixSettings
	log   *slog.Logger
	clock runtime.Clock
	cli   *mautrix.Client

	// SyncTimeout is the /sync long-poll; Retention bounds the processed
	// record; both are exported for tests.
	SyncTimeout time.Duration
	Retention   time.Duration
	// MaxSyncFailures consecutive failed syncs end the session (the runtime
	// then reconnects with its backoff); fewer are retried here.
	MaxSyncFailures int

	ready chan struct{} // closed once logged in

	// Owned by Run's goroutine.
	since   string
	tr      *tracker
	invited map[string]bool

	mu     sync.Mutex
	synced int // sync responses processed, for tests
}

var _ runtime.Client = (*Client)(nil)

// NewClient builds a client for cfg.Server; nothing is sent before Run.
func NewClient(cfg runtime.SessionConfig, deps runtime.ClientDeps) (*Client, error) {
	set, err := checkSettings(cfg.Server)
	if err != nil {
		return nil, err
	}
	cli, err := mautrix.NewClient(set.Homeserver, id.UserID(set.UserID), "")
	if err != nil {
		return nil, fmt.Errorf("matrix: server %s: homeserver %q: %w", cfg.Server.Name, set.Homeserver, err)
	}
	cli.Client = httpClient(deps)
	cli.UserAgent = "quilt"
	// The store and the state store of mautrix are not used: the since
	// token lives in the query master, room state in the tracker.
	cli.Store = nil
	cli.StateStore = nil
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clock := deps.Clock
	if clock == nil {
		clock = runtime.SystemClock{}
	}
	c := &Client{
		name:            cfg.Server.Name,
		set:             set,
		log:             log,
		clock:           clock,
		cli:             cli,
		SyncTimeout:     set.SyncTimeout,
		Retention:       ProcessedRetention,
		MaxSyncFailures: 5,
		ready:           make(chan struct{}),
		since:           cfg.Cursors[CursorSince],
		tr:              newTracker(set.UserID, cfg.Server.Name),
		invited:         map[string]bool{},
	}
	if c.SyncTimeout <= 0 {
		c.SyncTimeout = DefaultSyncTimeout
	}
	return c, nil
}

// Run logs in and syncs until ctx ends or the session fails.
func (c *Client) Run(ctx context.Context, emit runtime.Emitter, connected func(self *quiltv1.User)) error {
	if err := c.login(ctx); err != nil {
		return err
	}
	close(c.ready)
	self := c.set.UserID

	first := true
	failures := 0
	for {
		req := mautrix.ReqSync{Since: c.since, Timeout: int(c.SyncTimeout / time.Millisecond)}
		if first {
			// Answer at once: the runtime's maps are empty until this
			// response is processed.
			req.Timeout = 0
			req.FullState = c.since != ""
		}
		// A hung connection must not outlive the long-poll by much.
		sctx, cancel := context.WithTimeout(ctx, c.SyncTimeout+30*time.Second)
		resp, err := c.cli.FullSyncRequest(sctx, req)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			failures++
			if isAuthError(err) || failures >= c.MaxSyncFailures {
				return fmt.Errorf("matrix: server %s: sync: %w", c.name, err)
			}
			wait := time.Duration(failures) * time.Second
			c.log.Warn("sync failed; retrying", "error", err, "failures", failures, "wait", wait)
			if !sleepCtx(ctx, c.clock, wait) {
				return context.Cause(ctx)
			}
			continue
		}
		failures = 0
		now := c.clock.Now()
		res := c.tr.apply(resp, first && c.since == "", now)
		var cursors []*quiltv1.Cursor
		if resp.NextBatch != "" && resp.NextBatch != c.since {
			cursors = []*quiltv1.Cursor{{Server: c.name, Name: CursorSince, Value: resp.NextBatch}}
		}
		if err := emit.Emit(ctx, res.Events, cursors); err != nil {
			return err
		}
		if resp.NextBatch != "" {
			c.since = resp.NextBatch
		}
		c.tr.seen.prune(now.Add(-c.Retention))
		c.mu.Lock()
		c.synced++
		c.mu.Unlock()
		if first {
			// Connected only now: the runtime then joins the configured
			// rooms, and those joins must arrive as live JOINs, not inside
			// the initial sync, whose timelines are history.
			connected(&quiltv1.User{Transient: self, Persistent: self, Group: self, Display: localpart(self), Self: true})
		}
		first = false
		c.joinInvites(ctx, res.Invites)
	}
}

func (c *Client) login(ctx context.Context) error {
	if tok := c.set.AccessToken.Reveal(); tok != "" {
		c.cli.SetCredentials(id.UserID(c.set.UserID), tok)
		c.cli.DeviceID = id.DeviceID(c.set.DeviceID)
		who, err := c.cli.Whoami(ctx)
		if err != nil {
			return fmt.Errorf("matrix: server %s: access token check (whoami) for %s: %w", c.name, c.set.UserID, err)
		}
		if string(who.UserID) != c.set.UserID {
			return fmt.Errorf("matrix: server %s: access token belongs to %s, not user_id %s", c.name, who.UserID, c.set.UserID)
		}
		return nil
	}
	_, err := c.cli.Login(ctx, &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypePassword,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: c.set.UserID},
		Password:                 c.set.Password.Reveal(),
		DeviceID:                 id.DeviceID(c.set.DeviceID),
		InitialDeviceDisplayName: "quilt",
		StoreCredentials:         true,
	})
	if err != nil {
		return fmt.Errorf("matrix: server %s: password login as %s: %w", c.name, c.set.UserID, err)
	}
	if string(c.cli.UserID) != c.set.UserID {
		return fmt.Errorf("matrix: server %s: logged in as %s, not user_id %s", c.name, c.cli.UserID, c.set.UserID)
	}
	return nil
}

// joinInvites accepts invites when auto_join_invites is set; each room is
// tried once per session (a failed join is logged, not retried every sync).
func (c *Client) joinInvites(ctx context.Context, rooms []string) {
	for _, r := range rooms {
		if c.invited[r] {
			continue
		}
		c.invited[r] = true
		if !c.set.AutoJoinInvites {
			c.log.Info("invited; not joining (auto_join_invites is off)", "room", r)
			continue
		}
		if _, err := c.cli.JoinRoom(ctx, r, nil); err != nil {
			c.log.Warn("joining an invite failed", "room", r, "error", err)
		}
	}
}

// errRawUnsupported is Do's answer to RAW actions.
var errRawUnsupported = errors.New("matrix: RAW actions are not supported (Matrix has no raw protocol line); use SEND, JOIN, PART, KICK or TOPIC")

// Do carries out an action; it waits for the login of Run.
func (c *Client) Do(ctx context.Context, a *quiltv1.Action) (int, error) {
	select {
	case <-c.ready:
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
	switch a.Kind {
	case quiltv1.ActionKind_ACTION_KIND_SEND:
		room, err := c.roomID(ctx, a.Target)
		if err != nil {
			return 0, err
		}
		mt := event.MsgText
		switch a.Style {
		case quiltv1.SendStyle_SEND_STYLE_NOTICE:
			mt = event.MsgNotice
		case quiltv1.SendStyle_SEND_STYLE_EMOTE:
			mt = event.MsgEmote
		}
		content := &event.MessageEventContent{MsgType: mt, Body: a.Text}
		if _, err := c.cli.SendMessageEvent(ctx, room, event.EventMessage, content); err != nil {
			return 0, fmt.Errorf("matrix: send to %s: %w", a.Target, err)
		}
		return 1, nil
	case quiltv1.ActionKind_ACTION_KIND_JOIN:
		if !isRoomRef(a.Target) {
			return 0, fmt.Errorf("matrix: join: %q is neither a room id (!id:server) nor an alias (#name:server)", a.Target)
		}
		if _, err := c.cli.JoinRoom(ctx, a.Target, nil); err != nil {
			return 0, fmt.Errorf("matrix: join %s: %w", a.Target, err)
		}
		return 1, nil
	case quiltv1.ActionKind_ACTION_KIND_PART:
		room, err := c.roomID(ctx, a.Target)
		if err != nil {
			return 0, err
		}
		if _, err := c.cli.LeaveRoom(ctx, room, &mautrix.ReqLeave{Reason: a.Text}); err != nil {
			return 0, fmt.Errorf("matrix: leave %s: %w", a.Target, err)
		}
		return 1, nil
	case quiltv1.ActionKind_ACTION_KIND_KICK:
		room, err := c.roomID(ctx, a.Target)
		if err != nil {
			return 0, err
		}
		if !strings.HasPrefix(a.User, "@") || !strings.Contains(a.User, ":") {
			return 0, fmt.Errorf("matrix: kick: user %q is not a Matrix user id (@name:server)", a.User)
		}
		if _, err := c.cli.KickUser(ctx, room, &mautrix.ReqKickUser{UserID: id.UserID(a.User), Reason: a.Text}); err != nil {
			return 0, fmt.Errorf("matrix: kick %s from %s: %w", a.User, a.Target, err)
		}
		return 1, nil
	case quiltv1.ActionKind_ACTION_KIND_TOPIC:
		room, err := c.roomID(ctx, a.Target)
		if err != nil {
			return 0, err
		}
		if _, err := c.cli.SendStateEvent(ctx, room, event.StateTopic, "", &event.TopicEventContent{Topic: a.Text}); err != nil {
			return 0, fmt.Errorf("matrix: set topic of %s: %w", a.Target, err)
		}
		return 1, nil
	case quiltv1.ActionKind_ACTION_KIND_RAW:
		return 0, errRawUnsupported
	}
	return 0, fmt.Errorf("matrix: action kind %s is not supported", a.Kind)
}

// roomID resolves a room id or alias; a user id is refused, since sending
// to a person needs a direct-message room quilt does not manage yet.
func (c *Client) roomID(ctx context.Context, target string) (id.RoomID, error) {
	switch {
	case strings.HasPrefix(target, "!"):
		return id.RoomID(target), nil
	case strings.HasPrefix(target, "#"):
		r, err := c.cli.ResolveAlias(ctx, id.RoomAlias(target))
		if err != nil {
			return "", fmt.Errorf("matrix: resolve alias %s: %w", target, err)
		}
		return r.RoomID, nil
	case strings.HasPrefix(target, "@"):
		return "", fmt.Errorf("matrix: target %s is a user: direct messages are not supported yet; name a room", target)
	}
	return "", fmt.Errorf("matrix: target %q is neither a room id (!id:server) nor an alias (#name:server)", target)
}

func isRoomRef(s string) bool {
	return (strings.HasPrefix(s, "!") || strings.HasPrefix(s, "#")) && strings.Contains(s, ":")
}

// isAuthError: retrying cannot help, the token is gone.
func isAuthError(err error) bool {
	var he mautrix.HTTPError
	if errors.As(err, &he) && he.Response != nil {
		return he.Response.StatusCode == http.StatusUnauthorized
	}
	return errors.Is(err, mautrix.MUnknownToken) || errors.Is(err, mautrix.MMissingToken)
}

func sleepCtx(ctx context.Context, clock runtime.Clock, d time.Duration) bool {
	t := clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-ctx.Done():
		return false
	}
}

// Synced reports how many sync responses Run has processed (for tests).
func (c *Client) Synced() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.synced
}
