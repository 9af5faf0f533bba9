package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDir(t *testing.T) {
	t.Setenv(EnvDir, "")
	if got := Dir(""); got != DefaultDir {
		t.Errorf("Dir() = %q, want %q", got, DefaultDir)
	}
	t.Setenv(EnvDir, "/from/env")
	if got := Dir(""); got != "/from/env" {
		t.Errorf("Dir() with env = %q", got)
	}
	if got := Dir("/from/flag"); got != "/from/flag" {
		t.Errorf("Dir(flag) = %q", got)
	}
}

func TestLoadDefaults(t *testing.T) {
	for _, withFile := range []bool{false, true} {
		dir := t.TempDir()
		if withFile {
			writeFile(t, dir, FileName, "# only comments\n\n[log]\n")
		}
		c, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		host, _ := os.Hostname()
		if host == "" {
			host = "localhost"
		}
		want := Config{
			Dir:  dir,
			File: filepath.Join(dir, FileName),
			Registrar: RegistrarConfig{Address: Embedded, Embedded: true, TTL: 15 * time.Second,
				DeregisterAfter: time.Minute},
			QueryMaster: QueryMasterConfig{Listen: "127.0.0.1:7420", Advertise: "127.0.0.1:7420",
				ServiceName: "quilt-qmd", LeaderKey: "quilt/qmd/leader", Node: host, SourceTimeout: 2 * time.Second,
				SubscriberBuffer: 4096, ActTimeout: 10 * time.Second},
			MongoDB: MongoDBConfig{Embedded: true, Database: "quilt", DataDir: "/var/lib/quilt",
				Retention: 720 * time.Hour, ProcessedRetention: 720 * time.Hour, Timeout: 10 * time.Second},
			Managers: SourceManagersConfig{ConfigDir: filepath.Join(dir, "smd.d"), BufferEvents: 100000,
				BatchSize: 512, BatchDelay: 5 * time.Millisecond, MaxInFlight: 4, ConnectionCycle: 120 * time.Second,
				Heartbeat: 5 * time.Second},
			Testing:  TestingConfig{Includes: []string{"*_testcase.quilt"}, Dir: filepath.Join(dir, "tests")},
			Patterns: PatternsConfig{Dir: filepath.Join(dir, "patterns.d")},
			Log:      LogConfig{Level: "info", Format: "text"},
			Daemon:   DaemonConfig{PidDir: "/run/quilt", ShutdownTimeout: 10 * time.Second},
		}
		got := *c
		got.raw = nil
		if !reflect.DeepEqual(got, want) {
			t.Errorf("withFile=%v\n got  %+v\n want %+v", withFile, got, want)
		}
		if c.GetValue("log", "level", "dflt") != "dflt" {
			t.Errorf("GetValue of an unset key must return the caller's default")
		}
	}
}

func TestLoadValues(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "consul.token", "tok\n")
	writeFile(t, dir, FileName, `
[registrar]
address = 127.0.0.1:8500
token_file = consul.token
datacenter = dc1
tls = true
tls_ca_file = certs/ca.pem
tls_cert_file = ${QUILT_CFG}/certs/c.pem
tls_key_file = /abs/k.pem
ttl = 3s
deregister_after = 2m

[query_master]
listen = 0.0.0.0:0
advertise = qm.example.org:7420
node = n1
source_timeout = 250ms
subscriber_buffer = 8
act_timeout = 1s

[mongodb]
uri = mongodb://u:pw@db.example.org/quilt
database = q
data_dir = data
username = u
password_env = QUILT_TEST_MONGO_PW
retention = 1h
processed_retention = 2h
timeout = 3s

[source_managers]
config_dir = /srv/smd
buffer_events = 10
batch_size = 2
batch_delay = 0
max_in_flight = 7
connection_cycle = 30s
heartbeat = 1s

[testing]
includes = a_*.quilt, b_*.quilt
sleep = 1.5
dir = $QUILT_CFG/../t

[patterns]
dir = pats

[log]
level = debug
format = json
file = quilt.log

[daemon]
pid_dir = run
shutdown_timeout = 3s
`)
	t.Setenv("QUILT_TEST_MONGO_PW", "mpw")
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := c.Registrar
	if r.Embedded || r.Address != "127.0.0.1:8500" || r.Token.Reveal() != "tok" || r.Datacenter != "dc1" || !r.TLS ||
		r.TLSCAFile != filepath.Join(dir, "certs/ca.pem") || r.TLSCertFile != filepath.Join(dir, "certs/c.pem") ||
		r.TLSKeyFile != "/abs/k.pem" || r.TTL != 3*time.Second || r.DeregisterAfter != 2*time.Minute {
		t.Errorf("registrar: %+v", r)
	}
	q := c.QueryMaster
	if q.Listen != "0.0.0.0:0" || q.Advertise != "qm.example.org:7420" || q.Node != "n1" ||
		q.SourceTimeout != 250*time.Millisecond || q.SubscriberBuffer != 8 || q.ActTimeout != time.Second {
		t.Errorf("query_master: %+v", q)
	}
	m := c.MongoDB
	if m.Embedded || m.Database != "q" || m.DataDir != filepath.Join(dir, "data") || m.Password.Reveal() != "mpw" ||
		m.Retention != time.Hour || m.ProcessedRetention != 2*time.Hour || m.Timeout != 3*time.Second {
		t.Errorf("mongodb: %+v", m)
	}
	if strings.Contains(m.RedactedURI(), ":pw@") || !strings.Contains(m.RedactedURI(), "db.example.org") {
		t.Errorf("RedactedURI = %q", m.RedactedURI())
	}
	if sm := c.Managers; sm.ConfigDir != "/srv/smd" || sm.BufferEvents != 10 || sm.BatchSize != 2 || sm.BatchDelay != 0 || sm.MaxInFlight != 7 ||
		sm.ConnectionCycle != 30*time.Second || sm.Heartbeat != time.Second {
		t.Errorf("source_managers: %+v", sm)
	}
	if tc := c.Testing; !reflect.DeepEqual(tc.Includes, []string{"a_*.quilt", "b_*.quilt"}) ||
		tc.Sleep != 1500*time.Millisecond || tc.Dir != filepath.Join(filepath.Dir(dir), "t") {
		t.Errorf("testing: %+v", tc)
	}
	if c.Patterns.Dir != filepath.Join(dir, "pats") || c.Log.Level != "debug" || c.Log.Format != "json" ||
		c.Log.File != filepath.Join(dir, "quilt.log") || c.Daemon.PidDir != filepath.Join(dir, "run") ||
		c.Daemon.ShutdownTimeout != 3*time.Second {
		t.Errorf("patterns/log/daemon: %+v %+v %+v", c.Patterns, c.Log, c.Daemon)
	}
	if c.Log.SlogLevel().String() != "DEBUG" {
		t.Errorf("SlogLevel = %v", c.Log.SlogLevel())
	}
	// GetValue: raw text with $QUILT_CFG expanded, relative paths as written.
	for _, g := range []struct{ sec, key, want string }{
		{"patterns", "dir", "pats"},
		{"testing", "dir", dir + "/../t"},
		{"registrar", "tls_cert_file", dir + "/certs/c.pem"},
		{"testing", "sleep", "1.5"},
		{"log", "nokey", "def"},
		{"nosection", "x", "def"},
	} {
		if got := c.GetValue(g.sec, g.key, "def"); got != g.want {
			t.Errorf("GetValue(%s, %s) = %q, want %q", g.sec, g.key, got, g.want)
		}
	}
}

func TestExpandCfg(t *testing.T) {
	for in, want := range map[string]string{
		"$QUILT_CFG/x":          "/c/x",
		"${QUILT_CFG}x":         "/cx",
		"$QUILT_CFGx":           "$QUILT_CFGx",
		"$QUILT_CFG_DIR/x":      "$QUILT_CFG_DIR/x",
		"$HOME/$QUILT_CFG":      "$HOME//c",
		"a$QUILT_CFG$QUILT_CFG": "a/c/c",
		"no dollar":             "no dollar",
		"$":                     "$",
		"${QUILT_CFG":           "${QUILT_CFG",
	} {
		if got := expandCfg(in, "/c"); got != want {
			t.Errorf("expandCfg(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	cases := []struct {
		name string
		text string
		want []string
	}{
		{"unknown section with suggestion", "[registar]\naddress = embedded\n",
			[]string{`quilt.cfg:1: [registar]: unknown section, did you mean [registrar]? (known: registrar, query_master,`}},
		{"unknown key", "[query_master]\nlisten = 127.0.0.1:1\nlisen = x\n",
			[]string{`quilt.cfg:3: [query_master] key "lisen": unknown key, did you mean "listen"? (known: act_timeout, advertise, leader_key, listen,`}},
		{"key outside section", "level = debug\n[log]\n",
			[]string{`quilt.cfg:1: key "level": key outside any section`}},
		{"duplicate section", "[log]\nlevel = info\n\n[log]\nformat = json\n",
			[]string{`quilt.cfg:4: [log]: duplicate section (first at line 1)`}},
		{"bad duration", "[mongodb]\nretention = 30d\n",
			[]string{`quilt.cfg:2: [mongodb] key "retention": invalid duration "30d"`}},
		{"duration below minimum", "[registrar]\nderegister_after = 30s\n",
			[]string{`quilt.cfg:2: [registrar] key "deregister_after": duration 30s is below the minimum 1m0s`}},
		{"bad int", "[source_managers]\nbuffer_events = lots\nbatch_size = 0\n",
			[]string{`quilt.cfg:2: [source_managers] key "buffer_events": invalid integer "lots"`,
				`quilt.cfg:3: [source_managers] key "batch_size": 0 out of range [1, 1048576]`}},
		{"bad bool", "[registrar]\ntls = yesplease\n",
			[]string{`quilt.cfg:2: [registrar] key "tls": invalid boolean "yesplease"`}},
		{"bad enum", "[log]\nlevel = verbose\nformat = jsn\n",
			[]string{`quilt.cfg:2: [log] key "level": invalid value "verbose": must be one of debug, info, warn, error`,
				`quilt.cfg:3: [log] key "format": invalid value "jsn": must be one of text, json; did you mean "json"?`}},
		{"bad address", "[registrar]\naddress = consul\n[query_master]\nlisten = 127.0.0.1:99999\n",
			[]string{`quilt.cfg:2: [registrar] key "address": invalid address "consul": want host:port`,
				`quilt.cfg:4: [query_master] key "listen": invalid port "99999"`}},
		{"bad mongo uri is not echoed", "[mongodb]\nuri = http://u:hunter2@x\n",
			[]string{`quilt.cfg:2: [mongodb] key "uri": invalid URI: must start with mongodb://`}},
		{"bad glob", "[testing]\nincludes = [a\n",
			[]string{`quilt.cfg:2: [testing] key "includes": invalid glob "[a"`}},
		{"tls pair", "[registrar]\ntls_cert_file = c.pem\n",
			[]string{`quilt.cfg:1: [registrar] key "tls_key_file": tls_cert_file and tls_key_file must be set together`}},
		{"secret env unset", "[registrar]\ntoken_env = QUILT_TEST_SURELY_UNSET\n",
			[]string{`quilt.cfg:2: [registrar] key "token_env": environment variable QUILT_TEST_SURELY_UNSET is not set`}},
		{"syntax error", "[log\nlevel = info\n",
			[]string{`quilt.cfg:1: unclosed section header "[log"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, FileName, tc.text)
			c, err := Load(dir)
			if c != nil {
				t.Error("got a Config despite errors")
			}
			wantErrors(t, err, tc.want...)
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("secret echoed: %v", err)
			}
		})
	}
}

func TestLoadDirErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := Load(missing)
	wantErrors(t, err, missing+": configuration directory: no such file or directory")

	file := writeFile(t, t.TempDir(), "plain", "")
	_, err = Load(file)
	wantErrors(t, err, file+": configuration directory: not a directory")

	if os.Geteuid() != 0 {
		dir := t.TempDir()
		p := writeFile(t, dir, FileName, "")
		if err := os.Chmod(p, 0); err != nil {
			t.Fatal(err)
		}
		_, err = Load(dir)
		wantErrors(t, err, "quilt.cfg: cannot read: permission denied")
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	// No quilt.cfg and no smd.d: a qmd-only host is valid.
	if err := Check(dir); err != nil {
		t.Errorf("empty dir: %v", err)
	}
	writeFile(t, dir, FileName, "[log]\nlevel = loud\n")
	writeFile(t, dir, "smd.d/a.cfg", "protocol = test\n[server x]\n")
	writeFile(t, dir, "smd.d/b.cfg", "protocol = irc\n[server x]\nhost = h\n")
	writeFile(t, dir, "smd.d/c.cfg", "protocol = test\n[server x]\nusers = many\n")
	err := Check(dir)
	wantErrors(t, err,
		`quilt.cfg:2: [log] key "level": invalid value "loud"`,
		`smd.d/b.cfg:2: [server x] key "nick": required`,
		`smd.d/c.cfg:3: [server x] key "users": invalid integer "many"`)

	// An explicitly configured smd.d that does not exist is an error.
	dir = t.TempDir()
	writeFile(t, dir, FileName, "[source_managers]\nconfig_dir = managers\n")
	wantErrors(t, Check(dir), "managers: source manager directory ([source_managers] config_dir): no such file or directory")

	missing := filepath.Join(t.TempDir(), "absent")
	wantErrors(t, Check(missing), missing+": configuration directory")
}
