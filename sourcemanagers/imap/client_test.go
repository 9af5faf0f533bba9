package imap

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

const (
	mailK = quiltv1.EventKind_EVENT_KIND_MAIL
	joinK = quiltv1.EventKind_EVENT_KIND_JOIN
)

func TestFirstStartSkipsExistingMailThenIdleDeliversNew(t *testing.T) {
	f := newFake(t, true)
	f.appendMail("INBOX", simpleMail("old@example.org", "old one", "x"))
	f.appendMail("INBOX", simpleMail("old@example.org", "old two", "x"))
	uv := f.uidValidity("INBOX")
	idling := watchIdle(t)
	r := startClient(t, f, uniqueSource(t), serverConfig([]string{"INBOX"}, true, time.Hour), nil)
	r.join(t, "INBOX")

	joins := r.rec.events(joinK)
	if len(joins) != 1 || joins[0].Channel != "INBOX" || !joins[0].User.GetSelf() || joins[0].User.GetTransient() != "alice" ||
		joins[0].ChannelInfo.GetAttrs()["uidvalidity"] != fmt.Sprint(uv) || joins[0].ChannelInfo.GetAttrs()["messages"] != "2" {
		t.Fatalf("JOIN events %v", joins)
	}
	if got := r.rec.cursor("uid:INBOX"); got != pos(uv, 2) {
		t.Fatalf("first-start cursor %q, want %q (UIDNEXT-1)", got, pos(uv, 2))
	}
	if m := r.rec.events(mailK); len(m) != 0 {
		t.Fatalf("existing mail emitted on first start: %v", m)
	}

	// The poll interval is an hour: only IDLE can bring this one.
	waitIdle(t, idling)
	uid := f.appendMail("INBOX", "From: \"Bob Example\" <Bob@Example.ORG>\r\nTo: alice@example.org, carol@example.org\r\n"+
		"Subject: =?utf-8?q?caf=C3=A9?= time\r\nMessage-ID: <m3@example.org>\r\n\r\nHello Alice\r\nline two\r\n")
	eventually(t, 5*time.Second, "the new MAIL", func() bool { return len(r.rec.events(mailK)) == 1 })
	e := r.rec.events(mailK)[0]
	if e.Id != fmt.Sprintf("mail/INBOX/%d/%d", uv, uid) || e.Channel != "INBOX" || e.Text != "café time" {
		t.Errorf("MAIL id/channel/text: %q %q %q", e.Id, e.Channel, e.Text)
	}
	u := e.User
	if u.Transient != "Bob@example.org" || u.Persistent != u.Transient || u.Group != u.Transient || u.Display != "Bob Example" {
		t.Errorf("four names %v", u)
	}
	m := e.Mail
	if m.MessageId != "m3@example.org" || m.From != "Bob@example.org" || strings.Join(m.To, ",") != "alice@example.org,carol@example.org" ||
		m.Subject != "café time" || m.Body != "Hello Alice\nline two" || m.Uid != uid || m.UidValidity != uv {
		t.Errorf("Mail %v", m)
	}
	if !e.Time.AsTime().Equal(time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)) {
		t.Errorf("time %v, want the INTERNALDATE", e.Time.AsTime())
	}
	// The cursor travels in the same Emit call as the mail.
	var together bool
	for _, c := range r.rec.snapshot() {
		if len(c.evs) == 1 && c.evs[0] == e {
			together = len(c.cursors) == 1 && c.cursors[0].Name == "uid:INBOX" && c.cursors[0].Value == pos(uv, uid) &&
				c.cursors[0].Server == "mail"
		}
	}
	if !together {
		t.Errorf("the MAIL's cursor was not emitted with it: %v", r.rec.snapshot())
	}
}

func TestResumeFromStoredCursor(t *testing.T) {
	f := newFake(t, true)
	for i := 1; i <= 3; i++ {
		f.appendMail("INBOX", simpleMail("a@example.org", fmt.Sprintf("mail %d", i), "b"))
	}
	uv := f.uidValidity("INBOX")
	r := startClient(t, f, uniqueSource(t), serverConfig([]string{"INBOX"}, true, time.Hour),
		map[string]string{"uid:INBOX": pos(uv, 1)})
	r.join(t, "INBOX")
	eventually(t, 5*time.Second, "two MAILs", func() bool { return len(r.rec.events(mailK)) == 2 })
	got := r.rec.events(mailK)
	if got[0].Mail.Uid != 2 || got[1].Mail.Uid != 3 || got[0].Text != "mail 2" {
		t.Errorf("resumed mails %v", got)
	}
	if c := r.rec.cursor("uid:INBOX"); c != pos(uv, 3) {
		t.Errorf("cursor %q", c)
	}
	// The JOIN comes before the mail of its mailbox.
	if first := r.rec.snapshot()[0].evs[0]; first.Kind != joinK {
		t.Errorf("first event %v, want the JOIN", first)
	}
}

func TestUIDValidityChangeStartsOver(t *testing.T) {
	f := newFake(t, true)
	f.appendMail("INBOX", simpleMail("a@example.org", "one", "b"))
	uv := f.uidValidity("INBOX")
	r := startClient(t, f, uniqueSource(t), serverConfig([]string{"INBOX"}, true, time.Hour),
		map[string]string{"uid:INBOX": pos(uv+1000, 0)})
	r.join(t, "INBOX")
	if m := r.rec.events(mailK); len(m) != 0 {
		t.Fatalf("mail replayed after a UIDVALIDITY change: %v", m)
	}
	if c := r.rec.cursor("uid:INBOX"); c != pos(uv, 1) {
		t.Fatalf("cursor %q, want %q", c, pos(uv, 1))
	}
}

func TestBadStoredCursorIsIgnored(t *testing.T) {
	f := newFake(t, true)
	f.appendMail("INBOX", simpleMail("a@example.org", "one", "b"))
	r := startClient(t, f, uniqueSource(t), serverConfig([]string{"INBOX"}, true, time.Hour),
		map[string]string{"uid:INBOX": "garbage"})
	r.join(t, "INBOX")
	if c := r.rec.cursor("uid:INBOX"); c != pos(f.uidValidity("INBOX"), 1) || len(r.rec.events(mailK)) != 0 {
		t.Fatalf("cursor %q, mails %v", c, r.rec.events(mailK))
	}
}

func TestPollingWithoutIdle(t *testing.T) {
	for _, tc := range []struct {
		name      string
		serverHas bool // IDLE capability
		wantIdle  bool // idle = true in the config
	}{{"idle off", true, false}, {"server lacks IDLE", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.serverHas)
			r := startClient(t, f, uniqueSource(t), serverConfig([]string{"INBOX"}, tc.wantIdle, 50*time.Millisecond), nil)
			r.join(t, "INBOX")
			f.appendMail("INBOX", simpleMail("p@example.org", "polled", "b"))
			eventually(t, 5*time.Second, "the polled MAIL", func() bool { return len(r.rec.events(mailK)) == 1 })
		})
	}
}

func TestSecondMailboxIsPolledWhileIdling(t *testing.T) {
	f := newFake(t, true)
	f.create("Lists")
	r := startClient(t, f, uniqueSource(t), serverConfig([]string{"INBOX", "Lists"}, true, 100*time.Millisecond), nil)
	r.join(t, "INBOX")
	r.join(t, "Lists")
	f.appendMail("Lists", simpleMail("list@example.org", "digest", "b"))
	f.appendMail("INBOX", simpleMail("me@example.org", "direct", "b"))
	eventually(t, 5*time.Second, "both MAILs", func() bool { return len(r.rec.events(mailK)) == 2 })
	seen := map[string]string{}
	for _, e := range r.rec.events(mailK) {
		seen[e.Channel] = e.Text
	}
	if seen["Lists"] != "digest" || seen["INBOX"] != "direct" {
		t.Errorf("mails by mailbox %v", seen)
	}
	if r.rec.cursor("uid:Lists") == "" || r.rec.cursor("uid:INBOX") == "" {
		t.Error("a mailbox has no cursor")
	}
}

func TestManyNewMailsAreFetchedInChunksInOrder(t *testing.T) {
	f := newFake(t, true)
	const n = 2*fetchChunk + 5
	for i := 1; i <= n; i++ {
		f.appendMail("INBOX", simpleMail("bulk@example.org", fmt.Sprintf("bulk %d", i), "b"))
	}
	uv := f.uidValidity("INBOX")
	r := startClient(t, f, uniqueSource(t), serverConfig([]string{"INBOX"}, true, time.Hour), map[string]string{"uid:INBOX": pos(uv, 0)})
	r.join(t, "INBOX")
	got := r.rec.events(mailK)
	if len(got) != n {
		t.Fatalf("%d MAILs, want %d", len(got), n)
	}
	for i, e := range got {
		if e.Mail.Uid != uint32(i+1) {
			t.Fatalf("mail %d has uid %d: out of order", i, e.Mail.Uid)
		}
	}
	var withMail int
	for _, c := range r.rec.snapshot() {
		if len(c.evs) > 0 && c.evs[0].Kind == mailK {
			withMail++
			if len(c.evs) > fetchChunk || len(c.cursors) != 1 || c.cursors[0].Value != pos(uv, c.evs[len(c.evs)-1].Mail.Uid) {
				t.Errorf("chunk of %d with cursors %v", len(c.evs), c.cursors)
			}
		}
	}
	if withMail != 3 {
		t.Errorf("%d emits carried mail, want 3", withMail)
	}
}

func TestReconnectInProcessDoesNotRepeatMail(t *testing.T) {
	f := newFake(t, true)
	uv := f.uidValidity("INBOX")
	welcome := map[string]string{"uid:INBOX": pos(uv, 0)} // what the runtime hands every session
	source := uniqueSource(t)
	idling := watchIdle(t)
	r1 := startClient(t, f, source, serverConfig([]string{"INBOX"}, true, time.Hour), welcome)
	r1.join(t, "INBOX")
	waitIdle(t, idling)
	f.appendMail("INBOX", simpleMail("a@example.org", "before", "b"))
	eventually(t, 5*time.Second, "the first MAIL", func() bool { return len(r1.rec.events(mailK)) == 1 })
	r1.cancel()
	<-r1.done
	r1.done <- nil // for the cleanup

	f.appendMail("INBOX", simpleMail("a@example.org", "while down", "b"))
	r2 := startClient(t, f, source, serverConfig([]string{"INBOX"}, true, time.Hour), welcome)
	r2.join(t, "INBOX")
	got := r2.rec.events(mailK)
	if len(got) != 1 || got[0].Text != "while down" {
		t.Fatalf("after reconnect: %v (want only the mail that arrived while down)", got)
	}
}

func TestActions(t *testing.T) {
	f := newFake(t, true)
	r := startClient(t, f, uniqueSource(t), serverConfig([]string{"INBOX"}, true, time.Hour), nil)
	code := func(err error) codes.Code {
		var ae *ActionError
		if errors.As(err, &ae) {
			return ae.Code()
		}
		return codes.OK
	}
	err := r.do(t, quiltv1.ActionKind_ACTION_KIND_SEND, "INBOX")
	if code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "SMTP") {
		t.Errorf("SEND: %v", err)
	}
	for _, k := range []quiltv1.ActionKind{quiltv1.ActionKind_ACTION_KIND_KICK, quiltv1.ActionKind_ACTION_KIND_TOPIC, quiltv1.ActionKind_ACTION_KIND_RAW} {
		if err := r.do(t, k, "INBOX"); code(err) != codes.Unimplemented {
			t.Errorf("%s: %v", k, err)
		}
	}
	if err := r.do(t, quiltv1.ActionKind_ACTION_KIND_JOIN, ""); code(err) != codes.InvalidArgument {
		t.Errorf("JOIN without target: %v", err)
	}
	if err := r.do(t, quiltv1.ActionKind_ACTION_KIND_JOIN, "Nope"); code(err) != codes.NotFound || !strings.Contains(err.Error(), `"Nope"`) {
		t.Errorf("JOIN of a missing mailbox: %v", err)
	}
	if err := r.do(t, quiltv1.ActionKind_ACTION_KIND_PART, "INBOX"); code(err) != codes.NotFound {
		t.Errorf("PART of an unwatched mailbox: %v", err)
	}
	r.join(t, "INBOX")
	r.join(t, "INBOX") // again: no second JOIN event
	if n := len(r.rec.events(joinK)); n != 1 {
		t.Errorf("%d JOIN events", n)
	}
	if err := r.do(t, quiltv1.ActionKind_ACTION_KIND_PART, "INBOX"); err != nil {
		t.Fatalf("PART: %v", err)
	}
	parts := r.rec.events(quiltv1.EventKind_EVENT_KIND_PART)
	if len(parts) != 1 || parts[0].Channel != "INBOX" || !parts[0].User.GetSelf() {
		t.Errorf("PART events %v", parts)
	}
	f.appendMail("INBOX", simpleMail("a@example.org", "unwatched", "b"))
	time.Sleep(200 * time.Millisecond)
	if m := r.rec.events(mailK); len(m) != 0 {
		t.Errorf("mail of a parted mailbox: %v", m)
	}

	// RECONNECT ends the session; the runtime then connects anew.
	if err := r.do(t, quiltv1.ActionKind_ACTION_KIND_RECONNECT, ""); err != nil {
		t.Fatalf("RECONNECT: %v", err)
	}
	select {
	case err := <-r.done:
		if !errors.Is(err, errReconnect) {
			t.Errorf("Run after RECONNECT: %v", err)
		}
		r.done <- err
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not end after RECONNECT")
	}
	if err := r.do(t, quiltv1.ActionKind_ACTION_KIND_JOIN, "INBOX"); code(err) != codes.Unavailable {
		t.Errorf("JOIN after the session ended: %v", err)
	}
}

func TestConnectionLossEndsRun(t *testing.T) {
	f := newFake(t, true)
	r := startClient(t, f, uniqueSource(t), serverConfig([]string{"INBOX"}, true, time.Hour), nil)
	r.join(t, "INBOX")
	f.peer(0).Drop(errDropped)
	select {
	case err := <-r.done:
		if err == nil || !strings.Contains(err.Error(), "imap: server mail") {
			t.Errorf("Run: %v", err)
		}
		r.done <- err
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not end when the connection dropped")
	}
}

func TestLoginFailureNamesUserNotPassword(t *testing.T) {
	f := newFake(t, true)
	srv := serverConfig([]string{"INBOX"}, true, time.Hour)
	srv.IMAP.Password = configSecret("wrong-secret-pw")
	c, err := NewClient(sessionConfig(t, srv), depsFor(f))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(t.Context(), &recorder{}, func(*quiltv1.User) { t.Error("connected with a wrong password") })
	if err == nil || !strings.Contains(err.Error(), "login as alice") || strings.Contains(err.Error(), "wrong-secret-pw") {
		t.Fatalf("Run: %v", err)
	}
}

// watchIdle reports each IDLE the driver starts. imapmemserver sends an
// update queued before IDLE only at the next command (dovecot sends it at
// once), so tests that prove IDLE append only while it runs.
func watchIdle(t *testing.T) chan struct{} {
	ch := make(chan struct{}, 64)
	idleStarted = func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	t.Cleanup(func() { idleStarted = nil })
	return ch
}

func waitIdle(t *testing.T, ch chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no IDLE within 5s")
	}
	// imapmemserver answers "+ idling" before its session starts listening
	// for updates, and drops the wake-up of a mail stored in between.
	time.Sleep(50 * time.Millisecond)
}
