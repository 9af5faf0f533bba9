package matrix

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

const (
	testRoom = "!qUiLtRoOm:localhost"
	alice    = "@alice:localhost"
	bob      = "@bob:localhost"
	carol    = "@carol:localhost"
	dave     = "@dave:localhost"
)

// request is one HTTP request the fake homeserver received.
type request struct {
	Method, Path string
	Query        map[string]string
	Body         string
	Auth         string
}

// fakeHS is an http.RoundTripper playing a homeserver: /sync answers come
// from recorded responses in order (then it long-polls until the request's
// context ends), the other endpoints answer like Dendrite does.
type fakeHS struct {
	t     testing.TB
	mu    sync.Mutex
	syncs [][]byte
	reqs  []request
	// syncFail, when > 0, makes that many /sync requests fail with 502.
	syncFail int
	// gated: a /sync request is answered only once allow has made room,
	// so a test can look at the state between two responses.
	gated   bool
	allowed int
	wake    chan struct{}
}

// step makes f answer one recorded /sync response per allow call.
func (f *fakeHS) step() *fakeHS {
	f.gated = true
	f.wake = make(chan struct{}, 1)
	return f
}

func (f *fakeHS) allow(n int) {
	f.mu.Lock()
	f.allowed += n
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func newFakeHS(t testing.TB, fixtures ...string) *fakeHS {
	f := &fakeHS{t: t}
	for _, name := range fixtures {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		f.syncs = append(f.syncs, b)
	}
	return f
}

func (f *fakeHS) requests(pathPrefix string) []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []request
	for _, r := range f.reqs {
		if strings.HasPrefix(r.Path, pathPrefix) {
			out = append(out, r)
		}
	}
	return out
}

func (f *fakeHS) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body.Close()
	}
	q := map[string]string{}
	for k, v := range req.URL.Query() {
		q[k] = v[0]
	}
	path := req.URL.EscapedPath()
	f.mu.Lock()
	f.reqs = append(f.reqs, request{Method: req.Method, Path: path, Query: q, Body: string(body), Auth: req.Header.Get("Authorization")})
	f.mu.Unlock()

	const v3 = "/_matrix/client/v3/"
	switch {
	case path == v3+"sync":
		f.mu.Lock()
		if f.syncFail > 0 {
			f.syncFail--
			f.mu.Unlock()
			return reply(req, 502, `{"errcode":"M_UNKNOWN","error":"bad gateway"}`), nil
		}
		for f.gated && f.allowed == 0 {
			f.mu.Unlock()
			select {
			case <-f.wake:
			case <-req.Context().Done():
				return nil, req.Context().Err()
			}
			f.mu.Lock()
		}
		if len(f.syncs) > 0 {
			if f.gated {
				f.allowed--
			}
			b := f.syncs[0]
			f.syncs = f.syncs[1:]
			f.mu.Unlock()
			return reply(req, 200, string(b)), nil
		}
		f.mu.Unlock()
		<-req.Context().Done()
		return nil, req.Context().Err()
	case path == v3+"login":
		if !strings.Contains(string(body), `"password":"secret-pw"`) {
			return reply(req, 403, `{"errcode":"M_FORBIDDEN","error":"Invalid username or password"}`), nil
		}
		return reply(req, 200, `{"user_id":"@alice:localhost","access_token":"tok-from-login","device_id":"QUILTDEV"}`), nil
	case path == v3+"account/whoami":
		if req.Header.Get("Authorization") != "Bearer good-token" {
			return reply(req, 401, `{"errcode":"M_UNKNOWN_TOKEN","error":"Unknown token"}`), nil
		}
		return reply(req, 200, `{"user_id":"@alice:localhost","device_id":"QUILTDEV"}`), nil
	case strings.HasPrefix(path, v3+"directory/room/"):
		return reply(req, 200, `{"room_id":"`+testRoom+`","servers":["localhost"]}`), nil
	case strings.HasPrefix(path, v3+"join/"):
		return reply(req, 200, `{"room_id":"`+testRoom+`"}`), nil
	case strings.Contains(path, "/send/"), strings.Contains(path, "/state/"):
		return reply(req, 200, `{"event_id":"$sent"}`), nil
	case strings.HasSuffix(path, "/leave"), strings.HasSuffix(path, "/kick"):
		return reply(req, 200, `{}`), nil
	}
	return reply(req, 404, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`), nil
}

func reply(req *http.Request, code int, body string) *http.Response {
	return &http.Response{
		StatusCode: code, Status: fmt.Sprintf("%d %s", code, http.StatusText(code)),
		Header:  http.Header{"Content-Type": {"application/json"}},
		Body:    io.NopCloser(bytes.NewBufferString(body)),
		Request: req, ProtoMajor: 1, ProtoMinor: 1,
	}
}

// mapsEmitter stands in for the runtime: it records what is emitted and
// keeps channel → members the way the runtime's maps do, failing the test
// on a state change applied twice (a JOIN of a member already there, a PART
// or KICK of one who is not).
type mapsEmitter struct {
	t       testing.TB
	mu      sync.Mutex
	self    string
	events  []*quiltv1.Event
	cursors []*quiltv1.Cursor
	chans   map[string]map[string]string // channel → MXID → display
	info    map[string]*quiltv1.ChannelInfo
	double  []string
	emits   int
}

func newMapsEmitter(t testing.TB) *mapsEmitter {
	return &mapsEmitter{t: t, chans: map[string]map[string]string{}, info: map[string]*quiltv1.ChannelInfo{}}
}

func (m *mapsEmitter) Emit(_ context.Context, evs []*quiltv1.Event, cursors []*quiltv1.Cursor) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.emits++
	for _, e := range evs {
		m.apply(e)
		m.events = append(m.events, e)
	}
	m.cursors = append(m.cursors, cursors...)
	return nil
}

func (m *mapsEmitter) apply(e *quiltv1.Event) {
	ch := m.chans[e.Channel]
	who := e.GetUser().GetTransient()
	switch e.Kind {
	case quiltv1.EventKind_EVENT_KIND_JOIN:
		if who == m.self {
			ch = map[string]string{}
			m.chans[e.Channel] = ch
		} else if ch == nil {
			m.double = append(m.double, "JOIN into unknown "+e.Channel)
			return
		} else if _, ok := ch[who]; ok {
			m.double = append(m.double, "JOIN twice: "+who+" "+e.Id)
		}
		ch[who] = e.User.Display
		if e.ChannelInfo != nil {
			m.info[e.Channel] = e.ChannelInfo
		}
	case quiltv1.EventKind_EVENT_KIND_PART, quiltv1.EventKind_EVENT_KIND_KICK:
		gone := who
		if e.Kind == quiltv1.EventKind_EVENT_KIND_KICK {
			gone = e.GetTargetUser().GetTransient()
		}
		if gone == m.self {
			delete(m.chans, e.Channel)
			delete(m.info, e.Channel)
			return
		}
		if _, ok := ch[gone]; !ok {
			m.double = append(m.double, "leave of a non-member: "+gone+" "+e.Id)
		}
		delete(ch, gone)
	case quiltv1.EventKind_EVENT_KIND_MEMBERS:
		ch = map[string]string{}
		for _, mb := range e.Members {
			ch[mb.User.Transient] = mb.User.Display
		}
		m.chans[e.Channel] = ch
	case quiltv1.EventKind_EVENT_KIND_NICK:
		if _, ok := ch[who]; ok {
			ch[who] = e.TargetUser.Display
		}
	case quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO, quiltv1.EventKind_EVENT_KIND_TOPIC:
		if ch != nil && e.ChannelInfo != nil {
			m.info[e.Channel] = e.ChannelInfo
		}
	}
}

func (m *mapsEmitter) members(ch string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for mx := range m.chans[ch] {
		out = append(out, mx)
	}
	sort.Strings(out)
	return out
}

func (m *mapsEmitter) snapshot() []*quiltv1.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*quiltv1.Event(nil), m.events...)
}

func (m *mapsEmitter) lastCursor() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.cursors) == 0 {
		return ""
	}
	return m.cursors[len(m.cursors)-1].Value
}

func testServer(opts ...func(*config.MatrixSettings)) *config.Server {
	s := &config.Server{Name: "hs", Enabled: true, Matrix: &config.MatrixSettings{
		Homeserver: "http://hs.invalid:8008", UserID: alice, Password: config.NewSecret("secret-pw"),
		SyncTimeout: 30 * time.Second,
	}}
	for _, o := range opts {
		o(s.Matrix)
	}
	return s
}

// startClient runs a client against f until the test ends; it returns the
// client, the emitter and a stop function.
func startClient(t *testing.T, f *fakeHS, srv *config.Server, cursors map[string]string) (*Client, *mapsEmitter, func() error) {
	t.Helper()
	c, err := NewClient(runtime.SessionConfig{Source: "mx", Server: srv, Cursors: cursors, SessionID: "S1"},
		runtime.ClientDeps{HTTP: &http.Client{Transport: f}})
	if err != nil {
		t.Fatal(err)
	}
	em := newMapsEmitter(t)
	em.self = alice
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var self *quiltv1.User
	go func() {
		done <- c.Run(ctx, em, func(u *quiltv1.User) { self = u })
	}()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(5 * time.Second):
				t.Error("Run did not return after cancel")
			}
			if self == nil {
				t.Log("connected was not called")
			}
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	return c, em, stop
}

func waitSynced(t *testing.T, c *Client, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Synced() < n {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d syncs (have %d)", n, c.Synced())
		}
		time.Sleep(2 * time.Millisecond)
	}
}
