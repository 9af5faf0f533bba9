package bzflag

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

func loadServer(t *testing.T, body string) *config.Server {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bz.cfg")
	if err := os.WriteFile(p, []byte("protocol = bzflag\n\n[server game]\n"+body), 0o600); err != nil {
		t.Fatal(err)
	}
	sm, err := config.LoadSourceManager(p)
	if err != nil {
		t.Fatal(err)
	}
	return &sm.Servers[0]
}

func TestDriverSettings(t *testing.T) {
	s := loadServer(t, "host = 127.0.0.1\nport = 15154\ncallsign = quilt\nteam = hunted\nmotto = watching\n")
	d := Driver{}
	if d.Protocol() != "bzflag" {
		t.Fatal(d.Protocol())
	}
	if a := d.Addresses(s); len(a) != 1 || a[0] != "127.0.0.1:15154" {
		t.Fatalf("addresses %v", a)
	}
	if d.TLSConfig(s) != nil {
		t.Fatal("bzfs has no TLS")
	}
	set := SettingsFrom(s)
	if set.Callsign != "quilt" || set.Team != 6 || set.Motto != "watching" || set.JoinTimeout != s.ConnectTimeout*3 ||
		!strings.HasPrefix(set.Version, "2.4.0 quilt") {
		t.Fatalf("settings %+v", set)
	}
	if set := SettingsFrom(loadServer(t, "host = h\ncallsign = q\n")); set.Team != observerTeam {
		t.Fatalf("default team %d", set.Team)
	}
}

func TestPasswordIsWarnedAboutNeverLogged(t *testing.T) {
	s := loadServer(t, "host = 127.0.0.1\ncallsign = quilt\npassword = hunter2-secret\n")
	var log bytes.Buffer
	sess := Driver{}.NewSession(runtime.SessionConfig{Server: s, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if !strings.Contains(log.String(), "global login is not supported") || strings.Contains(log.String(), "hunter2") {
		t.Fatalf("log: %s", log.String())
	}
	// and it never reaches the wire (MsgEnter's token field is logged by bzfs)
	out := sess.Start(time.Now())
	out2 := sess.Input(time.Now(), hello(1))
	for _, b := range append(out.Send, out2.Send...) {
		if bytes.Contains(b, []byte("hunter2")) {
			t.Fatalf("password sent: %q", b)
		}
	}
	if len(out2.Send) != 1 {
		t.Fatalf("no MsgEnter: %q", out2.Send)
	}
}
