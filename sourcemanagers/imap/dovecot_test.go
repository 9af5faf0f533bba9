//go:build unix

package imap

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/querymaster/qmtest"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/testenv"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// qm is an in-process query master over bufconn with an in-memory store
// that drops duplicate (source, event id) pairs like the real stores.
type qm struct {
	st  *qmtest.MemStore
	lis *bufconn.Listener
	cli quiltv1.QueryMasterClient
}

func (q *qm) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return q.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
}

func startQM(t *testing.T) *qm {
	q := &qm{st: qmtest.NewMemStore(), lis: bufconn.Listen(4 << 20)}
	m, err := querymaster.New(querymaster.Options{Store: q.st, Node: "it", Logger: slogFor(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.WaitForHandlers(true))
	m.Register(srv)
	go srv.Serve(q.lis)
	m.Lead()
	t.Cleanup(func() { srv.Stop(); m.Shutdown() })
	cc, err := grpc.NewClient("passthrough:///qm", q.dialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	q.cli = quiltv1.NewQueryMasterClient(cc)
	return q
}

func (q *qm) events(match func(*quiltv1.Event) bool) []*quiltv1.Event {
	var out []*quiltv1.Event
	for _, e := range q.st.Events() {
		if match(e) {
			out = append(out, e)
		}
	}
	return out
}

func (q *qm) cursor(t *testing.T, source, name string) string {
	curs, err := q.st.Cursors(context.Background(), source)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range curs {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}

func startSM(t *testing.T, q *qm, cfg *config.SourceManager) (*runtime.Manager, func()) {
	m, err := runtime.New(runtime.Options{
		Config: cfg, Drivers: []runtime.Driver{Driver{}},
		Target: "passthrough:///qm", DialOptions: q.dialOptions(), Node: "it", Logger: slogFor(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				t.Error("source manager did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return m, stop
}

// appendAs is the second, independent IMAP client: a person's mail program
// or an MTA storing a mail over a real TCP connection.
func appendAs(t *testing.T, addr, user, pass, mailbox, raw string) uint32 {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	cmd := c.Append(mailbox, int64(len(raw)), nil)
	if _, err := cmd.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := cmd.Wait()
	if err != nil {
		t.Fatalf("APPEND to %s: %v", mailbox, err)
	}
	_ = c.Logout().Wait()
	return uint32(data.UID)
}

func createMailbox(t *testing.T, addr, user, pass, mailbox string) {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(mailbox, nil).Wait(); err != nil {
		t.Fatal(err)
	}
}

func uidValidity(t *testing.T, addr, user, pass, mailbox string) uint32 {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(mailbox, &goimap.StatusOptions{UIDValidity: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	return st.UIDValidity
}

func mailFrom(from, subject, body string) string {
	return "From: " + from + "\r\nTo: alice@test.localhost\r\nSubject: " + subject + "\r\nDate: " +
		time.Now().Format(time.RFC1123Z) + "\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", ".") +
		"@test.localhost>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"
}

// TestDovecot runs the driver inside the real runtime, attached to an
// in-process query master, against a real dovecot: mail appended by a second
// IMAP client arrives as MAIL events; a dovecot restart and a source manager
// restart, with mail arriving during each, neither lose nor repeat mail.
func TestDovecot(t *testing.T) {
	d := testenv.Dovecot(t)
	pass := d.Accounts["alice"]
	uv := uidValidity(t, d.Addr, "alice", pass, "INBOX")
	host, port, _ := net.SplitHostPort(d.Addr)
	var portN int
	fmt.Sscan(port, &portN)

	q := startQM(t)
	source := uniqueSource(t) // positions are remembered per process
	cfg := &config.SourceManager{Name: source, Protocol: config.ProtocolIMAP, Enabled: true, ConnectionCycle: 120 * time.Second,
		Servers: []config.Server{{
			Name: "bench", Enabled: true, ReconnectMin: 100 * time.Millisecond, ReconnectMax: time.Second, ReconnectFactor: 2,
			ConnectTimeout: 5 * time.Second, Channels: []config.Channel{{Name: "INBOX"}},
			IMAP: &config.IMAPSettings{Host: host, Port: portN, Username: "alice", Password: config.NewSecret(pass),
				Mailboxes: []string{"INBOX"}, Idle: true, PollInterval: 2 * time.Second},
		}}}
	sm, stop := startSM(t, q, cfg)

	isMail := func(subject string) func(*quiltv1.Event) bool {
		return func(e *quiltv1.Event) bool { return e.Kind == quiltv1.EventKind_EVENT_KIND_MAIL && e.Text == subject }
	}
	selfJoins := func() int {
		return len(q.events(func(e *quiltv1.Event) bool {
			return e.Kind == quiltv1.EventKind_EVENT_KIND_JOIN && e.Channel == "INBOX" && e.User.GetSelf()
		}))
	}
	eventually(t, 20*time.Second, "the bot's JOIN of INBOX stored", func() bool { return selfJoins() == 1 })
	eventually(t, 10*time.Second, "the first-start cursor stored", func() bool {
		return q.cursor(t, source, "uid:INBOX") == pos(uv, uint32(d.Seeded))
	})
	if got := q.events(func(e *quiltv1.Event) bool { return e.Kind == quiltv1.EventKind_EVENT_KIND_MAIL }); len(got) != 0 {
		t.Fatalf("the seeded mail was emitted as new: %v", got)
	}
	if ch := sm.Server("bench").Channels(); len(ch) != 1 || ch[0] != "INBOX" {
		t.Errorf("runtime channels %v", ch)
	}

	// A second, real IMAP client appends a mail: IDLE brings it.
	start := time.Now()
	uid := appendAs(t, d.Addr, "alice", pass, "INBOX",
		mailFrom("\"Bob Example\" <bob@test.localhost>", "hello over imap", "Hi Alice,\r\nquilt sees this."))
	var e *quiltv1.Event
	eventually(t, 10*time.Second, "the appended MAIL stored", func() bool {
		if m := q.events(isMail("hello over imap")); len(m) == 1 {
			e = m[0]
		}
		return e != nil
	})
	t.Logf("APPEND to stored MAIL event: %v", time.Since(start))
	if e.Id != fmt.Sprintf("bench/INBOX/%d/%d", uv, uid) || e.Channel != "INBOX" || e.Server != "bench" || e.Protocol != "imap" {
		t.Errorf("MAIL id/channel/server/protocol: %q %q %q %q", e.Id, e.Channel, e.Server, e.Protocol)
	}
	if u := e.User; u.Transient != "bob@test.localhost" || u.Persistent != u.Transient || u.Group != u.Transient || u.Display != "Bob Example" {
		t.Errorf("four names %v", u)
	}
	if m := e.Mail; m.Body != "Hi Alice,\nquilt sees this." || m.Uid != uid || m.UidValidity != uv ||
		m.MessageId != "hello.over.imap@test.localhost" || len(m.To) != 1 || m.To[0] != "alice@test.localhost" {
		t.Errorf("Mail %v", m)
	}

	// An action through the query master: watching a second mailbox.
	createMailbox(t, d.Addr, "alice", pass, "Lists")
	ctx := context.Background()
	res, err := q.cli.Act(ctx, &quiltv1.ActRequest{Action: &quiltv1.Action{Source: source, Server: "bench",
		Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: "Lists"}})
	if err != nil || !res.Ok {
		t.Fatalf("Act JOIN Lists: %v %v", res, err)
	}
	appendAs(t, d.Addr, "alice", pass, "Lists", mailFrom("list@test.localhost", "list digest", "digest"))
	eventually(t, 10*time.Second, "the Lists MAIL (polled beside IDLE)", func() bool {
		m := q.events(isMail("list digest"))
		return len(m) == 1 && m[0].Channel == "Lists"
	})
	// SEND is not IMAP: a clear Unimplemented.
	res, err = q.cli.Act(ctx, &quiltv1.ActRequest{Action: &quiltv1.Action{Source: source, Server: "bench",
		Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "INBOX", Text: "hi"}})
	if err != nil || res.Ok || codes.Code(res.Code) != codes.Unimplemented || !strings.Contains(res.Error, "SMTP") {
		t.Errorf("Act SEND: %v %v", res, err)
	}

	// Restart dovecot with a mail delivered while it is down: the driver
	// reconnects and the mail arrives once.
	d.Stop()
	d.Deliver(t, "alice", mailFrom("carol@test.localhost", "while dovecot was down", "x"))
	eventually(t, 10*time.Second, "the DISCONNECTED event", func() bool {
		return len(q.events(func(e *quiltv1.Event) bool { return e.Kind == quiltv1.EventKind_EVENT_KIND_DISCONNECTED })) >= 1
	})
	d.Restart(t)
	eventually(t, 20*time.Second, "the bot back in INBOX", func() bool { return selfJoins() == 2 })
	eventually(t, 10*time.Second, "the mail delivered while dovecot was down", func() bool {
		return len(q.events(isMail("while dovecot was down"))) == 1
	})

	// Restart the source manager (a new process: no remembered positions)
	// with a mail appended while it is down: it resumes from the stored
	// cursor and the mail arrives once.
	eventually(t, 10*time.Second, "everything acknowledged", func() bool { return sm.Pending() == 0 })
	stop()
	positions.Lock()
	clear(positions.m)
	positions.Unlock()
	appendAs(t, d.Addr, "alice", pass, "INBOX", mailFrom("dave@test.localhost", "while quilt was down", "y"))
	// The runtime connects its servers without waiting for the query
	// master's Welcome, whose cursors a session then misses (reported to
	// the runtime's owner). Until it waits, the restarted source manager
	// starts with the server disabled and an operator enables it: the
	// query master sends that after the Welcome, so the session gets the
	// stored cursor, which is what this part proves.
	cfg2 := *cfg
	cfg2.Servers = append([]config.Server(nil), cfg.Servers...)
	cfg2.Servers[0].Enabled = false
	sm2, stop2 := startSM(t, q, &cfg2)
	if _, err := q.cli.ControlServer(ctx, &quiltv1.ControlServerRequest{Source: source, Server: "bench",
		Op: quiltv1.ServerControlOp_SERVER_CONTROL_OP_ENABLE, RequestedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the bot back in INBOX after the restart", func() bool { return selfJoins() == 3 })
	eventually(t, 10*time.Second, "the mail appended while quilt was down", func() bool {
		return len(q.events(isMail("while quilt was down"))) == 1
	})
	// Let a few polls pass, then nothing may have been stored twice.
	time.Sleep(3 * time.Second)
	eventually(t, 10*time.Second, "everything acknowledged after the restart", func() bool { return sm2.Pending() == 0 })
	stop2()
	for _, subj := range []string{"hello over imap", "list digest", "while dovecot was down", "while quilt was down"} {
		if n := len(q.events(isMail(subj))); n != 1 {
			t.Errorf("%q stored %d times", subj, n)
		}
	}
	ids := map[string]bool{}
	for _, e := range q.st.Events() {
		if ids[e.Id] {
			t.Errorf("event %s stored twice", e.Id)
		}
		ids[e.Id] = true
	}
	if n := len(q.events(func(e *quiltv1.Event) bool { return e.Kind == quiltv1.EventKind_EVENT_KIND_MAIL })); n != 4 {
		t.Errorf("%d MAIL events stored, want 4", n)
	}
	t.Logf("stored %d events; INBOX cursor %s", len(q.st.Events()), q.cursor(t, source, "uid:INBOX"))
}
