package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// wantErrors checks that err lists exactly the wanted problems, one per
// line, each line containing its wanted text (parts separated by "…" must
// appear in that order), and that every problem is a *Error.
func wantErrors(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %q", want)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Errorf("error %T is not a *config.Error", err)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(lines), len(want), err)
	}
	for i, w := range want {
		if !containsInOrder(lines[i], strings.Split(w, "…")) {
			t.Errorf("problem %d:\n got  %s\n want …%s…", i+1, lines[i], w)
		}
	}
}

func containsInOrder(s string, parts []string) bool {
	for _, p := range parts {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return true
}

func TestSourceManagerErrors(t *testing.T) {
	t.Setenv("QUILT_TEST_UNSET_VAR", "")
	os.Unsetenv("QUILT_TEST_UNSET_VAR")
	cases := []struct {
		name string
		text string
		want []string
	}{
		{"unknown key with suggestion", "protocol = irc\n[server a]\nhost = h\nnick = n\nnickk = x\n",
			[]string{`irc.cfg:5: [server a] key "nickk": unknown key, did you mean "nick"? (known: alt_nicks, channels, connect_timeout,`}},
		{"unknown key without suggestion", "protocol = irc\n[server a]\nhost = h\nnick = n\nfrobnicate = x\n",
			[]string{`irc.cfg:5: [server a] key "frobnicate": unknown key (known: `}},
		{"unknown top-level key", "protocol = irc\nprotocl = irc\n[server a]\nhost = h\nnick = n\n",
			[]string{`irc.cfg:2: key "protocl": unknown key, did you mean "protocol"?`}},
		{"unknown section", "protocol = irc\n[server a]\nhost = h\nnick = n\n[channels]\nx = 1\n",
			[]string{`irc.cfg:5: [channels]: unknown section: want [server NAME]`}},
		{"misspelt server section", "protocol = irc\n[sever a]\nhost = h\nnick = n\n",
			[]string{`irc.cfg: no [server NAME] section`,
				`irc.cfg:2: [sever a]: unknown section: want [server NAME], did you mean [server a]?`}},
		{"bad server name", "protocol = irc\n[server -x]\nhost = h\n",
			[]string{`irc.cfg: no [server NAME]`, `irc.cfg:2: [server -x]: invalid server section`}},
		{"duplicate server", "protocol = irc\n[server a]\nhost = h\nnick = n\n[server b]\nhost = h\nnick = n\n[server a]\nhost = h\nnick = n\n",
			[]string{`irc.cfg:8: [server a]: duplicate server name "a" (lines 2 and 8)`}},
		{"duplicate key", "protocol = irc\n[server a]\nhost = h\nnick = n\nhost = g\n",
			[]string{`irc.cfg:5: [server a] key "host": duplicate key (first set at line 3)`}},
		{"missing protocol", "[server a]\nhost = h\n",
			[]string{`irc.cfg: key "protocol": required: one of irc, xmpp, matrix, imap, bzflag, test`}},
		{"bad protocol", "protocol = ircc\n[server a]\nhost = h\n",
			[]string{`irc.cfg:1: key "protocol": invalid value "ircc": must be one of irc, xmpp, matrix, imap, bzflag, test; did you mean "irc"?`}},
		{"no servers", "protocol = irc\n", []string{`irc.cfg: no [server NAME] section`}},
		{"missing required keys", "protocol = irc\n\n[server a]\nport = 7000\n",
			[]string{`irc.cfg:3: [server a] key "host": required`, `irc.cfg:3: [server a] key "nick": required`}},
		{"bad duration", "protocol = irc\n[server a]\nhost = h\nnick = n\nthrottle = fast\n",
			[]string{`irc.cfg:5: [server a] key "throttle": invalid duration "fast"`}},
		{"bad int", "protocol = irc\n[server a]\nhost = h\nnick = n\nport = 66x\n",
			[]string{`irc.cfg:5: [server a] key "port": invalid integer "66x"`}},
		{"int out of range", "protocol = irc\n[server a]\nhost = h\nnick = n\nport = 70000\n",
			[]string{`irc.cfg:5: [server a] key "port": 70000 out of range [1, 65535]`}},
		{"bad bool", "protocol = irc\nenabled = maybe\n[server a]\nhost = h\nnick = n\n",
			[]string{`irc.cfg:2: key "enabled": invalid boolean "maybe"`}},
		{"bad float", "protocol = irc\n[server a]\nhost = h\nnick = n\nreconnect_factor = 0.5\n",
			[]string{`irc.cfg:5: [server a] key "reconnect_factor": 0.5 is below the minimum 1`}},
		{"reconnect range", "protocol = irc\n[server a]\nhost = h\nnick = n\nreconnect_min = 10s\nreconnect_max = 5s\n",
			[]string{`irc.cfg:6: [server a] key "reconnect_max": reconnect_max 5s is less than reconnect_min 10s`}},
		{"bad enum", "protocol = bzflag\n[server a]\nhost = h\ncallsign = c\nteam = purpel\n",
			[]string{`irc.cfg:5: [server a] key "team": invalid value "purpel": must be one of observer, rogue,…did you mean "purple"?`}},
		{"bad URL", "protocol = matrix\n[server a]\nhomeserver = ftp://x\nuser_id = @a:b\naccess_token = t\n",
			[]string{`irc.cfg:3: [server a] key "homeserver": invalid URL "ftp://x"`}},
		{"bad matrix user", "protocol = matrix\n[server a]\nhomeserver = https://x\nuser_id = alice\naccess_token = t\n",
			[]string{`irc.cfg:4: [server a] key "user_id": invalid user id "alice"`}},
		{"matrix needs a credential", "protocol = matrix\n[server a]\nhomeserver = https://x\nuser_id = @a:b\n",
			[]string{`irc.cfg:2: [server a] key "password": required: one of password or access_token`}},
		{"bad jid", "protocol = xmpp\n[server a]\njid = alice\npassword = p\n",
			[]string{`irc.cfg:3: [server a] key "jid": invalid JID "alice"`}},
		{"xmpp password required", "protocol = xmpp\n[server a]\njid = a@b\n",
			[]string{`irc.cfg:2: [server a] key "password": required: set password, password_file or password_env`}},
		{"imap keys", "protocol = imap\n[server a]\nhost = h\nusername = u\npassword = p\nchannels = INBOX\n",
			[]string{`irc.cfg:6: [server a] key "channels": unknown key`}},
		{"two secret forms", "protocol = imap\n[server a]\nhost = h\nusername = u\npassword = p\npassword_env = X\n",
			[]string{`irc.cfg:6: [server a] key "password_env": set only one of password, password_file and password_env`}},
		{"env secret unset", "protocol = imap\n[server a]\nhost = h\nusername = u\npassword_env = QUILT_TEST_UNSET_VAR\n",
			[]string{`irc.cfg:5: [server a] key "password_env": environment variable QUILT_TEST_UNSET_VAR is not set`}},
		{"file secret missing", "protocol = imap\n[server a]\nhost = h\nusername = u\npassword_file = nope.txt\n",
			[]string{`irc.cfg:5: [server a] key "password_file": cannot read secret file …nope.txt: no such file or directory`}},
		{"bad channel", "protocol = irc\n[server a]\nhost = h\nnick = n\nchannels = #ok, notachan\n",
			[]string{`irc.cfg:5: [server a] key "channels": channel "notachan": IRC channel names start with`}},
		{"channel with too many words", "protocol = irc\n[server a]\nhost = h\nnick = n\nchannels = #a k extra\n",
			[]string{`irc.cfg:5: [server a] key "channels": channel "#a": want NAME or NAME KEY`}},
		{"syntax: no delimiter", "protocol = irc\n[server a]\nhost h\nnick = n\n[server b\n",
			[]string{"irc.cfg:3: [server a]: expected `key = value`", `irc.cfg:5: unclosed section header "[server b"`}},
		{"syntax: explicit DEFAULT", "[DEFAULT]\nprotocol = irc\n",
			[]string{`irc.cfg:1: [DEFAULT]: explicit [DEFAULT] section is not supported`}},
		{"syntax: unterminated multi-line", "protocol = irc\n[server a]\ndescription = \"\"\"abc\n",
			[]string{`irc.cfg:3: [server a] key "description": unterminated """ quoted value`}},
		{"several problems at once", "protocol = irc\n[server a]\nhost = h\nnick = n\nnickk = x\nport = p\n[server a]\nhost = h\n",
			[]string{`irc.cfg:5: [server a] key "nickk": unknown key`, `irc.cfg:6: [server a] key "port": invalid integer "p"`,
				`irc.cfg:7: [server a]: duplicate server name "a" (lines 2 and 7)`, `irc.cfg:7: [server a] key "nick": required`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "irc.cfg", tc.text)
			sm, err := LoadSourceManager(p)
			if sm != nil {
				t.Errorf("got a SourceManager despite errors")
			}
			wantErrors(t, err, tc.want...)
		})
	}
}

func TestSourceManagerFileErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadSourceManager(filepath.Join(dir, "absent.cfg"))
	wantErrors(t, err, "absent.cfg: cannot read: no such file or directory")

	p := writeFile(t, dir, "Bad.Name.cfg", "protocol = test\n[server a]\n")
	_, err = LoadSourceManager(p)
	wantErrors(t, err, `Bad.Name.cfg: invalid source manager name "Bad.Name"`)

	if os.Geteuid() != 0 { // root reads anything
		p = writeFile(t, dir, "locked.cfg", "protocol = test\n[server a]\n")
		if err := os.Chmod(p, 0); err != nil {
			t.Fatal(err)
		}
		_, err = LoadSourceManager(p)
		wantErrors(t, err, "locked.cfg: cannot read: permission denied")
	}
}

func TestSourceManagerDefaults(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "irc.cfg", `
# comment
; another comment
protocol = irc
description = "  spaced  "

[server libera]
host = irc.example.org
nick = quilt
channels = #a, #b secretkey,, &c
password = pa#ss;word$HOME
`)
	sm, err := LoadSourceManager(p)
	if err != nil {
		t.Fatal(err)
	}
	if sm.Name != "irc" || sm.Path != p || sm.Protocol != ProtocolIRC || !sm.Enabled ||
		sm.ConnectionCycle != 120*time.Second || sm.Description != "  spaced  " {
		t.Errorf("top level: %+v", sm)
	}
	if len(sm.Servers) != 1 {
		t.Fatalf("servers: %+v", sm.Servers)
	}
	s := sm.Servers[0]
	if s.Name != "libera" || s.Line != 7 || !s.Enabled || s.Throttle != 500*time.Millisecond || s.ThrottleBurst != 4 ||
		s.ReconnectMin != 2*time.Second || s.ReconnectMax != 5*time.Minute || s.ReconnectFactor != 2 ||
		s.ReconnectAttempts != 0 || s.ConnectTimeout != 20*time.Second {
		t.Errorf("common: %+v", s)
	}
	if s.XMPP != nil || s.Matrix != nil || s.IMAP != nil || s.BZFlag != nil || s.Test != nil || s.IRC == nil {
		t.Fatalf("want only IRC settings: %+v", s)
	}
	if len(s.Channels) != 3 || s.Channels[0].Name != "#a" || s.Channels[0].Key.IsSet() ||
		s.Channels[1].Name != "#b" || s.Channels[1].Key.Reveal() != "secretkey" || s.Channels[2].Name != "&c" {
		t.Errorf("channels: %+v", s.Channels)
	}
	irc := s.IRC
	if irc.Host != "irc.example.org" || irc.Port != 6697 || !irc.TLS || !irc.TLSVerify || irc.Nick != "quilt" ||
		irc.User != "quilt" || irc.Realname != "quilt" || irc.PingInterval != time.Minute ||
		irc.PingTimeout != 2*time.Minute || irc.LineLimit != 512 || irc.SASLUser != "" || irc.SASLPassword.IsSet() {
		t.Errorf("irc: %+v", irc)
	}
	// No inline comments and no $VAR expansion: the literal survives intact.
	if got := irc.Password.Reveal(); got != "pa#ss;word$HOME" {
		t.Errorf("password = %q", got)
	}

	// Plain-text IRC port default, and per-protocol defaults elsewhere.
	p = writeFile(t, dir, "plain.cfg", "protocol = irc\nconnection_cycle = 30s\n[server a]\nhost = h\nnick = n\ntls = false\nsasl_password = x\n")
	sm, err = LoadSourceManager(p)
	if err != nil {
		t.Fatal(err)
	}
	if sm.ConnectionCycle != 30*time.Second || sm.Servers[0].IRC.Port != 6667 || sm.Servers[0].IRC.SASLUser != "n" {
		t.Errorf("plain irc: %+v %+v", sm, sm.Servers[0].IRC)
	}

	p = writeFile(t, dir, "x.cfg", "protocol = xmpp\n[server a]\njid = alice@example.org\npassword = p\nchannels = room@muc.example.org key\n")
	sm, err = LoadSourceManager(p)
	if err != nil {
		t.Fatal(err)
	}
	x := sm.Servers[0].XMPP
	if x.Host != "example.org" || x.Port != 5222 || !x.TLS || !x.TLSVerify || x.Nick != "alice" || x.Resource != "quilt" ||
		x.PingInterval != time.Minute || x.PingTimeout != 30*time.Second ||
		sm.Servers[0].Throttle != 0 || sm.Servers[0].ThrottleBurst != 0 || sm.Servers[0].Channels[0].Key.Reveal() != "key" {
		t.Errorf("xmpp: %+v %+v", x, sm.Servers[0])
	}

	p = writeFile(t, dir, "m.cfg", "protocol = matrix\n[server a]\nhomeserver = https://m.example.org\nuser_id = @a:example.org\naccess_token = tok\nchannels = !id:example.org, #alias:example.org\n")
	sm, err = LoadSourceManager(p)
	if err != nil {
		t.Fatal(err)
	}
	m := sm.Servers[0].Matrix
	if m.AccessToken.Reveal() != "tok" || m.Password.IsSet() || m.AutoJoinInvites || m.SyncTimeout != 30*time.Second || len(sm.Servers[0].Channels) != 2 {
		t.Errorf("matrix: %+v", m)
	}

	p = writeFile(t, dir, "i.cfg", "protocol = imap\n[server a]\nhost = h\nusername = u\npassword = p\n")
	sm, err = LoadSourceManager(p)
	if err != nil {
		t.Fatal(err)
	}
	i := sm.Servers[0].IMAP
	if i.Port != 993 || !i.Idle || i.PollInterval != time.Minute || len(i.Mailboxes) != 1 || i.Mailboxes[0] != "INBOX" ||
		len(sm.Servers[0].Channels) != 1 || sm.Servers[0].Channels[0].Name != "INBOX" {
		t.Errorf("imap: %+v", i)
	}

	p = writeFile(t, dir, "b.cfg", "protocol = bzflag\n[server a]\nhost = h\ncallsign = c\n")
	sm, err = LoadSourceManager(p)
	if err != nil {
		t.Fatal(err)
	}
	if b := sm.Servers[0].BZFlag; b.Port != 5154 || b.Team != "observer" || b.Password.IsSet() {
		t.Errorf("bzflag: %+v", b)
	}

	writeFile(t, dir, "scripts/run.txt", "x")
	p = writeFile(t, dir, "t.cfg", "protocol = test\nenabled = false\n[server a]\nscript = scripts/run.txt\nrate = 2.5\n[server b]\nenabled = no\n")
	sm, err = LoadSourceManager(p)
	if err != nil {
		t.Fatal(err)
	}
	if sm.Enabled || len(sm.Servers) != 2 || sm.Servers[1].Enabled {
		t.Errorf("test: %+v", sm)
	}
	if ts := sm.Servers[0].Test; ts.Users != 10 || ts.Rate != 2.5 || ts.Script != filepath.Join(dir, "scripts/run.txt") {
		t.Errorf("test settings: %+v", ts)
	}
}

func TestSecretForms(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "secrets/pw", "from-file\r\n\n")
	t.Setenv("QUILT_TEST_PW", "from-env")
	for _, tc := range []struct{ line, want string }{
		{"password = literal $X", "literal $X"},
		{"password_file = secrets/pw", "from-file"},
		{"password_file = " + filepath.Join(dir, "secrets/pw"), "from-file"},
		{"password_env = QUILT_TEST_PW", "from-env"},
	} {
		p := writeFile(t, dir, "s.cfg", "protocol = xmpp\n[server a]\njid = a@b\n"+tc.line+"\n")
		sm, err := LoadSourceManager(p)
		if err != nil {
			t.Fatalf("%s: %v", tc.line, err)
		}
		if got := sm.Servers[0].XMPP.Password.Reveal(); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.line, got, tc.want)
		}
	}

	// An empty secret file is an error, and no message may carry a value.
	writeFile(t, dir, "secrets/empty", "\n")
	p := writeFile(t, dir, "s.cfg", "protocol = xmpp\n[server a]\njid = a@b\npassword_file = secrets/empty\n")
	_, err := LoadSourceManager(p)
	wantErrors(t, err, `s.cfg:4: [server a] key "password_file": secret file `)

	p = writeFile(t, dir, "s.cfg", "protocol = xmpp\n[server a]\njid = a@b\npassword = hunter2\npassword_file = secrets/pw\n#broken line follows\nhunter3\n")
	_, err = LoadSourceManager(p)
	if err == nil || strings.Contains(err.Error(), "hunter") {
		t.Errorf("error must exist and not echo secrets: %v", err)
	}
}

func TestSourceManagersEnumeration(t *testing.T) {
	dir := t.TempDir()
	smd := filepath.Join(dir, "smd.d")
	for _, n := range []string{"zeta.cfg", "alpha.cfg", "b_2-x.cfg", "notes.txt", "secrets/x.cfg"} {
		writeFile(t, smd, n, "protocol = test\n[server a]\n")
	}
	if err := os.Mkdir(filepath.Join(smd, "dir.cfg"), 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	names, err := c.SourceManagers()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names, " "); got != "alpha b_2-x zeta" {
		t.Errorf("names = %q", got)
	}
	sms, err := c.LoadSourceManagers()
	if err != nil || len(sms) != 3 || sms[2].Name != "zeta" {
		t.Fatalf("LoadSourceManagers: %v %v", sms, err)
	}

	writeFile(t, smd, "Bad.cfg", "")
	writeFile(t, smd, "_x.cfg", "")
	_, err = c.SourceManagers()
	wantErrors(t, err, `Bad.cfg: invalid source manager name "Bad"`, `_x.cfg: invalid source manager name "_x"`)

	if _, err := (&Config{Managers: SourceManagersConfig{ConfigDir: filepath.Join(dir, "nope")}}).SourceManagers(); err == nil ||
		!strings.Contains(err.Error(), "nope: source manager directory") {
		t.Errorf("missing dir: %v", err)
	}
}

func TestConfigSourceManagerDefaults(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "quilt.cfg", "[source_managers]\nconfig_dir = managers\nconnection_cycle = 45s\n")
	writeFile(t, dir, "managers/secrets/pw", "pw\n")
	writeFile(t, dir, "managers/one.cfg", "protocol = xmpp\n[server a]\njid = a@b\npassword_file = $QUILT_CFG/managers/secrets/pw\n")
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	sm, err := c.LoadSourceManager("one")
	if err != nil {
		t.Fatal(err)
	}
	if sm.ConnectionCycle != 45*time.Second || sm.Servers[0].XMPP.Password.Reveal() != "pw" {
		t.Errorf("%+v", sm)
	}
}

// The line scanner and ini.v1 must agree on multi-line values, quoting and
// the `key: value` form, or later line numbers would be wrong.
func TestLineNumbersAfterMultilineValues(t *testing.T) {
	p := writeFile(t, t.TempDir(), "m.cfg", "protocol: test\r\n"+
		"description = \"\"\"first\nsecond\nthird\"\"\"\n"+
		"[server a]\n"+
		"script = `x\ny`\n"+
		"users = 'nine'\n")
	_, err := LoadSourceManager(p)
	wantErrors(t, err,
		`m.cfg:6: [server a] key "script": script …x\ny: no such file or directory`,
		`m.cfg:8: [server a] key "users": invalid integer "nine"`)

	p = writeFile(t, t.TempDir(), "d.cfg", "protocol = test\ndescription = \"\"\"a\nb\"\"\"\n[server a]\n")
	sm, err := LoadSourceManager(p)
	if err != nil {
		t.Fatal(err)
	}
	if sm.Description != "a\nb" || sm.Servers[0].Line != 4 {
		t.Errorf("description %q, server line %d", sm.Description, sm.Servers[0].Line)
	}
}
