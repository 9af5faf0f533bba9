package matrix

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

func kinds(evs []*quiltv1.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, strings.TrimPrefix(e.Kind.String(), "EVENT_KIND_")+" "+e.Id)
	}
	return out
}

func find(evs []*quiltv1.Event, id string) *quiltv1.Event {
	for _, e := range evs {
		if e.Id == id {
			return e
		}
	}
	return nil
}

func TestInitialSyncRecordsRoomButEmitsNoHistory(t *testing.T) {
	f := newFakeHS(t, "sync_01_initial.json")
	c, em, _ := startClient(t, f, testServer(), nil)
	waitSynced(t, c, 1)
	evs := em.snapshot()
	// The snapshot events take the id of the newest state event they
	// reflect: carol's join for the members, the alias for the room info.
	if got := kinds(evs); !slices.Equal(got, []string{"MEMBERS $caroljoin", "CHANNEL_INFO $alias"}) {
		t.Errorf("initial sync emitted %v", got)
	}
	if got, want := em.members(testRoom), []string{alice, bob, carol}; !slices.Equal(got, want) {
		t.Errorf("members %v, want %v", got, want)
	}
	info := em.info[testRoom]
	if info == nil || info.DisplayName != "Quilt Room" || info.Topic != "old topic" || info.CanonicalAlias != "#quilt:localhost" || info.MemberCount != 3 {
		t.Errorf("room info %v", info)
	}
	// Four names: display = room displayname, else the localpart.
	m := find(evs, evs[0].Id)
	names := map[string]*quiltv1.User{}
	for _, mb := range m.Members {
		names[mb.User.Transient] = mb.User
	}
	if u := names[bob]; u.Display != "Bob" || u.Persistent != bob || u.Group != bob {
		t.Errorf("bob named %v", u)
	}
	if u := names[carol]; u.Display != "carol" {
		t.Errorf("carol (no displayname) named %v", u)
	}
	if u := names[alice]; !u.Self || u.Display != "Alice Bot" {
		t.Errorf("self named %v", u)
	}
	if got := em.lastCursor(); got != "s1_initial" {
		t.Errorf("cursor %q", got)
	}
	syncs := f.requests("/_matrix/client/v3/sync")
	if s := syncs[0]; s.Query["since"] != "" || s.Query["full_state"] != "" || s.Query["timeout"] != "0" {
		t.Errorf("first sync query %v", s.Query)
	}
	if syncs[0].Auth != "Bearer tok-from-login" {
		t.Errorf("sync auth %q", syncs[0].Auth)
	}
}

func TestLiveEventsMapping(t *testing.T) {
	f := newFakeHS(t, "sync_01_initial.json", "sync_02_live.json")
	c, em, _ := startClient(t, f, testServer(), nil)
	waitSynced(t, c, 2)
	evs := em.snapshot()
	want := []struct {
		id   string
		kind quiltv1.EventKind
		text string
	}{
		{"$m1", quiltv1.EventKind_EVENT_KIND_MESSAGE, "hello bot"},
		{"$m2", quiltv1.EventKind_EVENT_KIND_ACTION, "waves"},
		{"$m3", quiltv1.EventKind_EVENT_KIND_NOTICE, "a notice"},
		{"$davejoin", quiltv1.EventKind_EVENT_KIND_JOIN, ""},
		{"$davepart", quiltv1.EventKind_EVENT_KIND_PART, "gotta go"},
		{"$bobrename", quiltv1.EventKind_EVENT_KIND_NICK, "Bobby"},
		{"$topic2", quiltv1.EventKind_EVENT_KIND_TOPIC, "new topic"},
		{"$name2", quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO, "Quilt Room 2"},
		{"$power2", quiltv1.EventKind_EVENT_KIND_MODE, "power 50"},
		{"$carolkick", quiltv1.EventKind_EVENT_KIND_KICK, "spam"},
	}
	for _, w := range want {
		e := find(evs, w.id)
		if e == nil {
			t.Errorf("%s not emitted", w.id)
			continue
		}
		if e.Kind != w.kind || e.Text != w.text || e.Channel != testRoom {
			t.Errorf("%s: %v %q in %q, want %v %q", w.id, e.Kind, e.Text, e.Channel, w.kind, w.text)
		}
		if e.Time.AsTime().Year() != 2025 {
			t.Errorf("%s: time %v is not origin_server_ts", w.id, e.Time.AsTime())
		}
	}
	if n := find(evs, "$bobrename"); n != nil && (n.User.Display != "Bob" || n.TargetUser.Display != "Bobby" || n.TargetUser.Transient != bob) {
		t.Errorf("rename %v → %v", n.User, n.TargetUser)
	}
	if k := find(evs, "$carolkick"); k != nil && (k.User.Transient != bob || k.TargetUser.Transient != carol) {
		t.Errorf("kick by %v of %v", k.User, k.TargetUser)
	}
	if m := find(evs, "$power2"); m != nil && (m.TargetUser.Transient != carol || !slices.Equal(m.Members[0].Modes, []string{"mod"})) {
		t.Errorf("mode %v", m)
	}
	if got, want := em.members(testRoom), []string{alice, bob}; !slices.Equal(got, want) {
		t.Errorf("members %v, want %v", got, want)
	}
	if d := em.chans[testRoom][bob]; d != "Bobby" {
		t.Errorf("bob's display %q after rename", d)
	}
	if info := em.info[testRoom]; info.DisplayName != "Quilt Room 2" || info.Topic != "new topic" || info.TopicSetBy != bob {
		t.Errorf("room info %v", info)
	}
	if got := em.lastCursor(); got != "s2_live" {
		t.Errorf("cursor %q", got)
	}
	if len(em.double) > 0 {
		t.Errorf("double state changes: %v", em.double)
	}
	// The second sync long-polls from the first's token.
	if s := f.requests("/_matrix/client/v3/sync")[1]; s.Query["since"] != "s1_initial" || s.Query["timeout"] != "30000" || s.Query["full_state"] != "" {
		t.Errorf("second sync query %v", s.Query)
	}
}

// TestKickRejoinDuplicatesBan walks seed 002: the bot is kicked (its room
// state dropped), invited and re-joins (the server re-sends old events:
// none is emitted again and no state change happens twice), an event comes
// a second time (dropped), then the bot is banned.
func TestKickRejoinDuplicatesBan(t *testing.T) {
	f := newFakeHS(t, "sync_01_initial.json", "sync_02_live.json", "sync_03_kicked.json",
		"sync_04_invited.json", "sync_05_rejoin.json", "sync_06_dup.json", "sync_07_banned.json").step()
	f.allow(3)
	c, em, _ := startClient(t, f, testServer(func(m *config.MatrixSettings) { m.AutoJoinInvites = true }), nil)

	waitSynced(t, c, 3)
	evs := em.snapshot()
	kick := find(evs, "$alicekick")
	if kick == nil || kick.Kind != quiltv1.EventKind_EVENT_KIND_KICK || kick.TargetUser.Transient != alice || !kick.TargetUser.Self || kick.Text != "out you go" {
		t.Fatalf("kick of the bot: %v", kick)
	}
	if find(evs, "$m5") == nil {
		t.Error("message before the kick not emitted")
	}
	if m := em.members(testRoom); m != nil {
		t.Errorf("members after the bot's kick: %v", m)
	}
	if _, ok := c.tr.room(testRoom); ok || c.tr.rooms[testRoom] != nil {
		t.Error("tracker kept the room after the kick")
	}

	f.allow(1)
	waitSynced(t, c, 4)
	// The invite is joined (auto_join_invites).
	deadline := time.Now().Add(2 * time.Second)
	for len(f.requests("/_matrix/client/v3/join/")) == 0 && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	if j := f.requests("/_matrix/client/v3/join/"); len(j) != 1 || j[0].Path != "/_matrix/client/v3/join/%21qUiLtRoOm:localhost" {
		t.Errorf("invite join requests %v", j)
	}

	before := len(em.snapshot())
	f.allow(2)
	waitSynced(t, c, 6)
	after := em.snapshot()[before:]
	got := kinds(after)
	// The JOIN carries the RoomInfo; the member list cannot reuse the
	// JOIN's id in the same batch, so it takes its content hash.
	if len(got) < 3 || got[0] != "JOIN $alicerejoin" || !strings.HasPrefix(got[1], "MEMBERS state:hs:"+testRoom+":members:") ||
		got[2] != "MESSAGE $m6" {
		t.Errorf("re-join emitted %v", got)
	}
	if got[len(got)-1] != "MESSAGE $m7" || len(got) != 4 {
		t.Errorf("after the duplicate sync: %v, want only $m7 added", got)
	}
	for _, old := range []string{"$m1", "$m4", "$davejoin", "$davepart", "$m5", "$alicekick", "$aliceinvite"} {
		if find(after, old) != nil {
			t.Errorf("re-sent %s emitted again", old)
		}
	}
	if j := find(after, "$alicerejoin"); j == nil || j.ChannelInfo == nil || j.ChannelInfo.DisplayName != "Quilt Room 2" || j.ChannelInfo.MemberCount != 2 {
		t.Errorf("re-join RoomInfo: %v", j)
	}
	if m, want := em.members(testRoom), []string{alice, bob}; !slices.Equal(m, want) {
		t.Errorf("members after re-join %v, want %v", m, want)
	}
	if r, ok := c.tr.room(testRoom); !ok || !slices.Equal(r.Members, []string{alice, bob}) || c.tr.rooms[testRoom].members[bob].display != "Bobby" {
		t.Errorf("tracker after re-join: %v %v", r, ok)
	}
	if rs := c.tr.roomsOf(bob); !slices.Equal(rs, []string{testRoom}) {
		t.Errorf("bob's rooms %v", rs)
	}

	f.allow(1)
	waitSynced(t, c, 7)
	evs = em.snapshot()
	ban := find(evs, "$aliceban")
	if ban == nil || ban.Kind != quiltv1.EventKind_EVENT_KIND_KICK || ban.TargetUser.Transient != alice || ban.Tags["membership"] != "ban" {
		t.Fatalf("ban of the bot: %v", ban)
	}
	if m := em.members(testRoom); m != nil {
		t.Errorf("members after the bot's ban: %v", m)
	}
	if len(c.tr.rooms) != 0 {
		t.Errorf("tracker rooms after the ban: %v", c.tr.rooms)
	}
	if len(em.double) > 0 {
		t.Errorf("double state changes: %v", em.double)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		snap := e.Kind == quiltv1.EventKind_EVENT_KIND_MEMBERS || e.Kind == quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO && e.User.Self
		if seen[e.Id] && !snap {
			t.Errorf("event %s emitted twice", e.Id)
		}
		seen[e.Id] = true
	}
	if got := em.lastCursor(); got != "s7_banned" {
		t.Errorf("cursor %q", got)
	}
}

func TestInviteNotJoinedWithoutAutoJoin(t *testing.T) {
	f := newFakeHS(t, "sync_04_invited.json")
	c, _, _ := startClient(t, f, testServer(), nil)
	waitSynced(t, c, 1)
	time.Sleep(20 * time.Millisecond)
	if j := f.requests("/_matrix/client/v3/join/"); len(j) != 0 {
		t.Errorf("joined an invite with auto_join_invites off: %v", j)
	}
}

// TestRestartResumesFromStoredSince: a client created with the cursor
// stored by the query master resumes from it, asking for full state so the
// runtime's cleared maps are filled again, and re-emits nothing old: the
// snapshot has the same ids as before (duplicates for the store).
func TestRestartResumesFromStoredSince(t *testing.T) {
	f1 := newFakeHS(t, "sync_01_initial.json")
	c1, em1, stop1 := startClient(t, f1, testServer(), nil)
	waitSynced(t, c1, 1)
	stop1()
	since := em1.lastCursor()

	// The restart's full-state sync of an unchanged room: the same state,
	// an empty timeline.
	var first map[string]any
	b, _ := readFixture(t, "sync_01_initial.json")
	if err := json.Unmarshal(b, &first); err != nil {
		t.Fatal(err)
	}
	join := first["rooms"].(map[string]any)["join"].(map[string]any)[testRoom].(map[string]any)
	state := join["state"].(map[string]any)["events"].([]any)
	hist := join["timeline"].(map[string]any)["events"].([]any)
	join["state"] = map[string]any{"events": append(state, hist[1])} // carol's join is state by now
	join["timeline"] = map[string]any{"events": []any{}, "limited": false}
	first["next_batch"] = since
	b, _ = json.Marshal(first)

	f2 := &fakeHS{t: t, syncs: [][]byte{b}}
	c2, em2, _ := startClient(t, f2, testServer(), map[string]string{CursorSince: since})
	waitSynced(t, c2, 1)
	s := f2.requests("/_matrix/client/v3/sync")[0]
	if s.Query["since"] != since || s.Query["full_state"] != "true" || s.Query["timeout"] != "0" {
		t.Errorf("restart sync query %v, want since=%s full_state=true timeout=0", s.Query, since)
	}
	ids1, ids2 := map[string]bool{}, []string{}
	for _, e := range em1.snapshot() {
		ids1[e.Id] = true
	}
	for _, e := range em2.snapshot() {
		ids2 = append(ids2, e.Id)
		if !ids1[e.Id] {
			t.Errorf("restart emitted %s %s, new to the store", e.Kind, e.Id)
		}
	}
	if len(ids2) != 2 {
		t.Errorf("restart emitted %v, want the two snapshot events", ids2)
	}
	if got, want := em2.members(testRoom), []string{alice, bob, carol}; !slices.Equal(got, want) {
		t.Errorf("members after restart %v, want %v", got, want)
	}
	if em2.lastCursor() != "" {
		t.Errorf("unchanged token stored again: %q", em2.lastCursor())
	}
}

func readFixture(t *testing.T, name string) ([]byte, error) {
	f := newFakeHS(t, name)
	return f.syncs[0], nil
}

func TestSyncRetriesThenFails(t *testing.T) {
	f := newFakeHS(t, "sync_01_initial.json")
	f.syncFail = 1
	c, _, _ := startClient(t, f, testServer(), nil)
	waitSynced(t, c, 1) // one failure, retried after 1s

	f2 := newFakeHS(t)
	f2.syncFail = 100
	cl, err := NewClient(runtime.SessionConfig{Server: testServer()}, runtime.ClientDeps{HTTP: &http.Client{Transport: f2}})
	if err != nil {
		t.Fatal(err)
	}
	cl.MaxSyncFailures = 2
	err = cl.Run(context.Background(), newMapsEmitter(t), func(*quiltv1.User) {})
	if err == nil || !strings.Contains(err.Error(), "sync") || !strings.Contains(err.Error(), "502") {
		t.Errorf("Run after repeated sync failures: %v", err)
	}
}

func TestLogin(t *testing.T) {
	f := newFakeHS(t)
	srv := testServer(func(m *config.MatrixSettings) { m.Password = config.NewSecret("wrong-pw") })
	c, err := NewClient(runtime.SessionConfig{Server: srv}, runtime.ClientDeps{HTTP: &http.Client{Transport: f}})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(context.Background(), newMapsEmitter(t), func(*quiltv1.User) { t.Error("connected after a failed login") })
	if err == nil || !strings.Contains(err.Error(), "M_FORBIDDEN") || strings.Contains(err.Error(), "wrong-pw") {
		t.Errorf("bad password: %v", err)
	}
	lr := f.requests("/_matrix/client/v3/login")
	var body map[string]any
	_ = json.Unmarshal([]byte(lr[0].Body), &body)
	if body["type"] != "m.login.password" || body["identifier"].(map[string]any)["user"] != alice {
		t.Errorf("login body %v", body)
	}

	for _, tc := range []struct {
		token string
		ok    bool
	}{{"good-token", true}, {"stale-token", false}} {
		f := newFakeHS(t, "sync_04_invited.json")
		srv := testServer(func(m *config.MatrixSettings) {
			m.Password = config.Secret{}
			m.AccessToken = config.NewSecret(tc.token)
		})
		c, err := NewClient(runtime.SessionConfig{Server: srv}, runtime.ClientDeps{HTTP: &http.Client{Transport: f}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var self *quiltv1.User
		err = c.Run(ctx, newMapsEmitter(t), func(u *quiltv1.User) { self = u; cancel() })
		cancel()
		if tc.ok && (self == nil || self.Transient != alice || !self.Self) {
			t.Errorf("token login: self %v, err %v", self, err)
		}
		if !tc.ok && (self != nil || err == nil || strings.Contains(err.Error(), tc.token)) {
			t.Errorf("stale token: self %v, err %v", self, err)
		}
		if len(f.requests("/_matrix/client/v3/login")) != 0 {
			t.Error("password login with an access token configured")
		}
	}
}

func TestNewClientChecksSettings(t *testing.T) {
	for _, mod := range []func(*config.MatrixSettings){
		func(m *config.MatrixSettings) { m.Homeserver = "hs.example.org" },
		func(m *config.MatrixSettings) { m.UserID = "alice" },
		func(m *config.MatrixSettings) { m.Password = config.Secret{} },
	} {
		if _, err := NewClient(runtime.SessionConfig{Server: testServer(mod)}, runtime.ClientDeps{}); err == nil {
			t.Errorf("accepted %+v", testServer(mod).Matrix)
		}
	}
	if _, err := (Driver{}).NewClient(runtime.SessionConfig{Server: &config.Server{Name: "x"}}, runtime.ClientDeps{}); err == nil {
		t.Error("accepted a server without matrix settings")
	}
}

func TestDoActions(t *testing.T) {
	f := newFakeHS(t)
	c, _, _ := startClient(t, f, testServer(), nil)
	ctx := context.Background()
	rq := "/_matrix/client/v3/rooms/%21qUiLtRoOm:localhost"
	cases := []struct {
		a            *quiltv1.Action
		method, path string
		body         map[string]any
	}{
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: testRoom, Text: "hi"},
			"PUT", rq + "/send/m.room.message/", map[string]any{"msgtype": "m.text", "body": "hi"}},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: testRoom, Text: "fyi", Style: quiltv1.SendStyle_SEND_STYLE_NOTICE},
			"PUT", rq + "/send/m.room.message/", map[string]any{"msgtype": "m.notice", "body": "fyi"}},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#quilt:localhost", Text: "dances", Style: quiltv1.SendStyle_SEND_STYLE_EMOTE},
			"PUT", rq + "/send/m.room.message/", map[string]any{"msgtype": "m.emote", "body": "dances"}},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: "#quilt:localhost"},
			"POST", "/_matrix/client/v3/join/%23quilt:localhost", map[string]any{}},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_PART, Target: testRoom, Text: "bye"},
			"POST", rq + "/leave", map[string]any{"reason": "bye"}},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_KICK, Target: testRoom, User: bob, Text: "behave"},
			"POST", rq + "/kick", map[string]any{"user_id": bob, "reason": "behave"}},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_TOPIC, Target: testRoom, Text: "fresh topic"},
			"PUT", rq + "/state/m.room.topic/", map[string]any{"topic": "fresh topic"}},
	}
	for _, tc := range cases {
		n0 := len(f.requests("/_matrix/client/v3/rooms/")) + len(f.requests("/_matrix/client/v3/join/"))
		sent, err := c.Do(ctx, tc.a)
		if err != nil || sent != 1 {
			t.Errorf("%v: sent %d, %v", tc.a, sent, err)
			continue
		}
		all := append(f.requests("/_matrix/client/v3/rooms/"), f.requests("/_matrix/client/v3/join/")...)
		if len(all) != n0+1 {
			t.Errorf("%v: %d requests, want 1", tc.a.Kind, len(all)-n0)
			continue
		}
		var r request
		for _, x := range f.requests("/_matrix/client/v3/") {
			if strings.HasPrefix(x.Path, "/_matrix/client/v3/rooms/") || strings.HasPrefix(x.Path, "/_matrix/client/v3/join/") {
				r = x
			}
		}
		if r.Method != tc.method || !strings.HasPrefix(r.Path, tc.path) || r.Auth != "Bearer tok-from-login" {
			t.Errorf("%v: %s %s (auth %q), want %s %s", tc.a.Kind, r.Method, r.Path, r.Auth, tc.method, tc.path)
		}
		var body map[string]any
		if err := json.Unmarshal([]byte(r.Body), &body); err != nil {
			t.Errorf("%v: body %q: %v", tc.a.Kind, r.Body, err)
		}
		for k, v := range tc.body {
			if body[k] != v {
				t.Errorf("%v: body %v, want %s=%v", tc.a.Kind, body, k, v)
			}
		}
	}
	if d := f.requests("/_matrix/client/v3/directory/room/"); len(d) != 1 || d[0].Path != "/_matrix/client/v3/directory/room/%23quilt:localhost" {
		t.Errorf("alias resolution requests %v", d)
	}
	n := len(f.requests("/"))
	if _, err := c.Do(ctx, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: "{}"}); !errors.Is(err, errRawUnsupported) {
		t.Errorf("RAW: %v", err)
	}
	for _, a := range []*quiltv1.Action{
		{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: bob, Text: "dm"},
		{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "general", Text: "x"},
		{Kind: quiltv1.ActionKind_ACTION_KIND_KICK, Target: testRoom, User: "bob"},
		{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: "quilt"},
		{Kind: quiltv1.ActionKind_ACTION_KIND_RECONNECT},
	} {
		if _, err := c.Do(ctx, a); err == nil {
			t.Errorf("%v accepted", a)
		}
	}
	if len(f.requests("/")) != n {
		t.Errorf("refused actions sent requests: %v", f.requests("/")[n:])
	}
}

func TestDoWaitsForLogin(t *testing.T) {
	c, err := NewClient(runtime.SessionConfig{Server: testServer()}, runtime.ClientDeps{HTTP: &http.Client{Transport: newFakeHS(t)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Do(ctx, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: testRoom, Text: "x"}); err == nil {
		t.Error("Do before login succeeded")
	}
}

func TestProcessedPruneByTimeRange(t *testing.T) {
	p := newProcessed()
	t0 := time.Unix(1000, 0)
	for i, id := range []string{"$a", "$b", "$c"} {
		if !p.add(testRoom, id, t0.Add(time.Duration(i)*time.Hour)) {
			t.Fatalf("%s not new", id)
		}
	}
	if p.add(testRoom, "$b", t0) || !p.add("!other:localhost", "$b", t0.Add(3*time.Hour)) {
		t.Error("check keyed by (room, event id)")
	}
	if n := p.prune(t0.Add(90 * time.Minute)); n != 2 || p.has(testRoom, "$a") || p.has(testRoom, "$b") || !p.has(testRoom, "$c") {
		t.Errorf("pruned %d; left %d", n, p.len())
	}
	// A clock stepping back does not unsort the index.
	p.add(testRoom, "$d", t0)
	if n := p.prune(t0.Add(150 * time.Minute)); n != 1 || !p.has(testRoom, "$d") {
		t.Errorf("after a clock step back: pruned %d", n)
	}
}
