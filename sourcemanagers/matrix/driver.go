// Package matrix is quilt's Matrix source manager driver (protocol =
// matrix), a runtime.ClientDriver on maunium.net/go/mautrix without its
// end-to-end encryption machine (no maunium.net/go/mautrix/crypto, no cgo).
//
// # Session
//
// A Client logs in with the access token (checked with /whoami) or the
// password of its [server] section, makes a first /sync (timeout 0) and
// only then reports CONNECTED, then long-polls /sync with the configured
// sync_timeout. The runtime joins the configured rooms (ids or aliases)
// through Do(JOIN) once connected, so those joins come back as live JOIN
// events and not inside the initial sync; invites are joined when
// auto_join_invites is set. Every HTTP request goes through
// ClientDeps.HTTP.
//
// # Resume position
//
// The since-token goes up as Cursor{server, "since", next_batch} in the same
// Emit call as the events of that sync response, so the query master stores
// both in one write: a restart resumes exactly after what was stored, with
// neither replay nor loss. The first sync of every session asks for
// full_state, because the runtime cleared its maps when the previous session
// ended and needs the rooms' members again; that state goes up as MEMBERS
// and CHANNEL_INFO events that take the id of the newest Matrix state event
// they reflect, which the store usually holds already: a restart adds
// nothing to the room's stored events (see tracker.snapshot).
//
// With no stored token (the bot's very first start) the initial sync's
// timelines are history from before quilt watched: rooms and members are
// recorded, but no old message, join or topic change is emitted as new.
// The same holds for the timeline before the bot's own join when it joins
// or re-joins a room (the server re-sends old events then).
//
// # Seed 002
//
// Every timeline event with a room and an event id is checked against the
// processed-event record and recorded before it is handled (see tracker).
// The store's unique (source, event id) index is the durable record, the
// Matrix event id being Event.id; the driver's own record, cleaned up by
// time range, keeps re-sent events away from the runtime's maps. A kick,
// ban or leave of the bot drops all member state of the room (the runtime
// clears its channel on the KICK/PART whose target is the bot).
//
// Event mapping: m.room.message m.text/m.notice/m.emote → MESSAGE/NOTICE/
// ACTION (other msgtypes → MESSAGE with their body, tag msgtype); member
// join → JOIN; leave by oneself → PART; leave by another → KICK; ban →
// KICK with tag membership=ban; displayname change → NICK from the old to
// the new display name (the MXID does not change); m.room.topic → TOPIC;
// m.room.name and m.room.canonical_alias → CHANNEL_INFO; power levels →
// MODE ("admin" ≥ 100, "mod" ≥ 50). Channel is always the room id.
package matrix

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// Driver serves `protocol = matrix`.
type Driver struct{}

var _ runtime.ClientDriver = Driver{}

// Protocol implements runtime.Driver.
func (Driver) Protocol() string { return string(config.ProtocolMatrix) }

// NewClient implements runtime.ClientDriver. It checks the settings and
// touches no network.
func (Driver) NewClient(cfg runtime.SessionConfig, deps runtime.ClientDeps) (runtime.Client, error) {
	return NewClient(cfg, deps)
}

// DefaultSyncTimeout is used when sync_timeout is unset.
const DefaultSyncTimeout = 30 * time.Second

// ProcessedRetention is how long the driver remembers handled event ids.
// Re-sent events older than that still never reach the store twice (its
// index is the durable record).
const ProcessedRetention = 24 * time.Hour

func checkSettings(s *config.Server) (*config.MatrixSettings, error) {
	if s == nil || s.Matrix == nil {
		return nil, errors.New("matrix: server section has no matrix settings")
	}
	m := s.Matrix
	u, err := url.Parse(m.Homeserver)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("matrix: server %s: homeserver %q is not an http(s) URL", s.Name, m.Homeserver)
	}
	if !strings.HasPrefix(m.UserID, "@") || !strings.Contains(m.UserID, ":") {
		return nil, fmt.Errorf("matrix: server %s: user_id %q is not a Matrix user id (@name:server)", s.Name, m.UserID)
	}
	if m.Password.Reveal() == "" && m.AccessToken.Reveal() == "" {
		return nil, fmt.Errorf("matrix: server %s: neither password nor access_token is set", s.Name)
	}
	return m, nil
}

func httpClient(deps runtime.ClientDeps) *http.Client {
	if deps.HTTP != nil {
		return deps.HTTP
	}
	return &http.Client{}
}
