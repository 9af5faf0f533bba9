package model

import (
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

func TestGlob(t *testing.T) {
	cases := []struct {
		pat, s string
		want   bool
	}{
		{"alice", "Alice", true},
		{"alice", "alice2", false},
		{"al*", "ALICE", true},
		{"*ice", "alice", true},
		{"a?ice", "alice", true},
		{"a?ice", "aice", false},
		{"*@example.org", "bob@EXAMPLE.org", true},
		{"*a*b*c*", "xxaYYbZZc", true},
		{"*a*b*c*", "xxaYYcZZb", false},
		{"?", "é", true},
		{"", "anything", true},
		{"[nick]", "[NICK]", true},
		{"a**", "a", true},
	}
	for _, c := range cases {
		if got := CompileGlob(c.pat).Match(c.s); got != c.want {
			t.Errorf("Glob(%q).Match(%q) = %v, want %v", c.pat, c.s, got, c.want)
		}
	}
}

func TestGlobMatchUserAnyName(t *testing.T) {
	u := &User{Transient: "al", Persistent: "~a@host.example", Display: "Alice L", Group: "alice"}
	for _, p := range []string{"al", "*@host.*", "alice l", "ALICE"} {
		if !CompileGlob(p).MatchUser(u) {
			t.Errorf("%q should match %+v", p, u)
		}
	}
	if CompileGlob("bob*").MatchUser(u) {
		t.Error("bob* matched alice")
	}
	if !CompileGlob("*host*").MatchProto(u.Proto()) {
		t.Error("MatchProto misses the persistent name")
	}
}

func TestUserUpdateFill(t *testing.T) {
	u := &User{Transient: "n", Display: "old"}
	if !u.Update(&quiltv1.User{Transient: "ignored", Persistent: "p", Display: ""}) {
		t.Fatal("Update reported no change")
	}
	if u.Transient != "n" || u.Persistent != "p" || u.Display != "old" {
		t.Fatalf("Update: %+v", u)
	}
	if u.Update(&quiltv1.User{Persistent: "p"}) {
		t.Fatal("Update with same value reported a change")
	}
	p := &quiltv1.User{Transient: "n", Display: "given"}
	u.Group = "g"
	u.Fill(p)
	if p.Persistent != "p" || p.Display != "given" || p.Group != "g" {
		t.Fatalf("Fill: %+v", p)
	}
	back := FromProto(u.Proto())
	if back.Names() != u.Names() {
		t.Fatalf("round trip %+v != %+v", back, u)
	}
}

func TestKindNames(t *testing.T) {
	names := KindNames()
	if len(names) != 18 {
		t.Fatalf("want 18 kinds, got %d: %v", len(names), names)
	}
	for _, n := range names {
		k, err := ParseKind(n)
		if err != nil || KindName(k) != n {
			t.Errorf("%q: %v %v", n, k, err)
		}
	}
	if k, err := ParseKind("EVENT_KIND_GAME_CHAT"); err != nil || k != quiltv1.EventKind_EVENT_KIND_GAME_CHAT {
		t.Errorf("full enum name: %v %v", k, err)
	}
	if k, _ := ParseKind("Channel-Info"); k != quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO {
		t.Errorf("channel-info: %v", k)
	}
	if _, err := ParseKind("bogus"); err == nil {
		t.Error("bogus kind accepted")
	}
	ks, err := ParseKinds("join, part,,quit")
	if err != nil || len(ks) != 3 {
		t.Errorf("ParseKinds: %v %v", ks, err)
	}
}

func TestNewMessage(t *testing.T) {
	now := time.Unix(100, 0)
	e := NewMessage(now, U("a"), "", "hi")
	if !e.Private || e.Kind != quiltv1.EventKind_EVENT_KIND_MESSAGE || !e.Time.AsTime().Equal(now) {
		t.Fatalf("%v", e)
	}
}
