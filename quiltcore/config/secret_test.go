package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretRedaction(t *testing.T) {
	const value = "s3cr3t-VALUE"
	s := NewSecret(value)
	if s.Reveal() != value || !s.IsSet() {
		t.Fatalf("Reveal = %q", s.Reveal())
	}
	type holder struct {
		Password Secret
		hidden   Secret // fmt does not call methods on unexported fields
		Ptr      *Secret
	}
	h := holder{Password: s, hidden: s, Ptr: &s}
	srv := Server{Name: "a", Channels: []Channel{{Name: "#c", Key: s}}, IRC: &IRCSettings{Password: s, SASLPassword: s}}

	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10.3s"} {
		outs = append(outs, fmt.Sprintf(verb, s), fmt.Sprintf(verb, h), fmt.Sprintf(verb, &h),
			fmt.Sprintf(verb, srv), fmt.Sprintf(verb, *srv.IRC), fmt.Sprintf(verb, []Secret{s}))
	}
	outs = append(outs, fmt.Sprint(s), fmt.Sprintln(h), s.String(), s.GoString())

	var buf bytes.Buffer
	for _, hd := range []slog.Handler{slog.NewTextHandler(&buf, nil), slog.NewJSONHandler(&buf, nil)} {
		l := slog.New(hd)
		l.Info("m", "secret", s, "holder", h, "server", srv, "irc", srv.IRC, slog.Any("any", s), slog.Group("g", "s", s))
	}
	outs = append(outs, buf.String())

	j, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	outs = append(outs, string(j))

	for _, o := range outs {
		if strings.Contains(o, value) || strings.Contains(o, fmt.Sprintf("%x", value)) {
			t.Errorf("secret leaked: %s", o)
		}
	}
	if got := fmt.Sprintf("%v", s); got != "[redacted]" {
		t.Errorf("%%v = %q", got)
	}
	if !strings.Contains(buf.String(), `secret=[redacted]`) || !strings.Contains(buf.String(), `"secret":"[redacted]"`) {
		t.Errorf("slog output lacks the redaction marker:\n%s", buf.String())
	}

	var unset Secret
	if unset.IsSet() || unset.Reveal() != "" || fmt.Sprint(unset) != "" || NewSecret("").IsSet() {
		t.Errorf("unset secret: %q", fmt.Sprint(unset))
	}
}

func TestConfigPrintingHidesLiteralSecrets(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "quilt.cfg", "[registrar]\ntoken = tok-VALUE\n[mongodb]\npassword = pw-VALUE\n")
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.Registrar.Token.Reveal() != "tok-VALUE" || c.MongoDB.Password.Reveal() != "pw-VALUE" {
		t.Fatalf("secrets not loaded")
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("cfg", "c", c, "v", *c)
	for _, o := range []string{fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", *c), fmt.Sprintf("%v", *c), buf.String()} {
		if strings.Contains(o, "VALUE") {
			t.Errorf("secret leaked: %s", o)
		}
	}
}
