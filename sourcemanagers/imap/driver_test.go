package imap

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

func TestDriverSettings(t *testing.T) {
	if (Driver{}).Protocol() != "imap" {
		t.Fatal("protocol")
	}
	for _, bad := range []*config.Server{
		{Name: "x"},
		{Name: "x", IMAP: &config.IMAPSettings{Port: 143, Username: "u"}},
		{Name: "x", IMAP: &config.IMAPSettings{Host: "h", Port: 0, Username: "u"}},
		{Name: "x", IMAP: &config.IMAPSettings{Host: "h", Port: 143}},
	} {
		if _, err := (Driver{}).NewClient(runtime.SessionConfig{Server: bad}, runtime.ClientDeps{}); err == nil {
			t.Errorf("accepted %+v", bad.IMAP)
		}
	}
	c := &config.IMAPSettings{Host: "mail.example.org", Port: 993, TLS: true, TLSVerify: true}
	if Address(c) != "mail.example.org:993" {
		t.Error(Address(c))
	}
	if tc := TLSConfig(c); tc == nil || tc.InsecureSkipVerify || tc.ServerName != "mail.example.org" {
		t.Errorf("TLS config %+v", tc)
	}
	if TLSConfig(&config.IMAPSettings{Host: "h"}) != nil {
		t.Error("TLS config without tls")
	}
}

func TestInsecureSettingsAreWarnedAboutWithoutThePassword(t *testing.T) {
	for _, tc := range []struct {
		tls, verify bool
		host, want  string
	}{
		{true, false, "mail.example.org", "verification is OFF"},
		{false, false, "mail.example.org", "in clear"},
		{false, false, "127.0.0.1", ""},
		{true, true, "mail.example.org", ""},
	} {
		var buf bytes.Buffer
		srv := &config.Server{Name: "s", IMAP: &config.IMAPSettings{Host: tc.host, Port: 993, TLS: tc.tls, TLSVerify: tc.verify,
			Username: "u", Password: config.NewSecret("hunter2-secret")}}
		if _, err := NewClient(runtime.SessionConfig{Server: srv, Logger: slog.New(slog.NewTextHandler(&buf, nil))}, runtime.ClientDeps{}); err != nil {
			t.Fatal(err)
		}
		out := buf.String()
		if tc.want == "" && out != "" || tc.want != "" && !strings.Contains(out, tc.want) || strings.Contains(out, "hunter2") {
			t.Errorf("tls=%v verify=%v host=%s: log %q", tc.tls, tc.verify, tc.host, out)
		}
	}
}

func TestPositions(t *testing.T) {
	for _, s := range []string{"", "1", "0:5", "a:1", "1:-1", "1:2:3", "4294967296:1"} {
		if _, err := parsePosition(s); err == nil {
			t.Errorf("parsePosition(%q) accepted", s)
		}
	}
	p, err := parsePosition("123:45")
	if err != nil || p != (position{123, 45}) || p.String() != "123:45" {
		t.Errorf("%v %v", p, err)
	}
	a, b := position{7, 10}, position{7, 12}
	for _, tc := range []struct {
		stored   position
		hs       bool
		mem      position
		hm       bool
		want     position
		wantHave bool
	}{
		{a, true, b, true, b, true},
		{b, true, a, true, b, true},
		{a, true, position{8, 1}, true, position{8, 1}, true},
		{a, true, position{}, false, a, true},
		{position{}, false, b, true, b, true},
		{position{}, false, position{}, false, position{}, false},
	} {
		got, have := laterPosition(tc.stored, tc.hs, tc.mem, tc.hm)
		if got != tc.want || have != tc.wantHave {
			t.Errorf("laterPosition(%v,%v,%v,%v) = %v,%v", tc.stored, tc.hs, tc.mem, tc.hm, got, have)
		}
	}
}
