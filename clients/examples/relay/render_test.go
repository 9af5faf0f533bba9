package main

import (
	"testing"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

func TestRender(t *testing.T) {
	e := &quiltv1.Event{Source: "irc", Server: "libera", Channel: "#a", Text: "hi {nick}",
		User: &quiltv1.User{Transient: "alice", Display: "Alice A."}}
	anon := &quiltv1.Event{Text: "x", User: &quiltv1.User{Transient: "bob"}}
	cases := []struct {
		format string
		e      *quiltv1.Event
		want   string
	}{
		{"<{nick}> {text}", e, "<alice> hi {nick}"}, // text is not expanded again
		{"{text}", e, "hi {nick}"},
		{"{display}@{source}/{server}{channel}", e, "Alice A.@irc/libera#a"},
		{"{display}", anon, "bob"},
		{"{nick}{nick}", anon, "bobbob"},
		{"{unknown} {nick", e, "{unknown} {nick"},
		{"{{text}}", anon, "{x}"},
		{"", e, ""},
		{"plain", e, "plain"},
	}
	for _, c := range cases {
		if got := Render(c.format, c.e); got != c.want {
			t.Errorf("Render(%q) = %q, want %q", c.format, got, c.want)
		}
	}
}
