package imap

import (
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

const multipartMail = "From: =?iso-8859-1?q?Ren=E9?= <rene@EXAMPLE.org>\r\n" +
	"To: \"A\" <a@example.org>, b@example.org\r\n" +
	"Subject: =?utf-8?b?w7xiZXI=?= alles\r\n" +
	"Message-ID: <abc.123@example.org>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=outer\r\n\r\n" +
	"--outer\r\n" +
	"Content-Type: multipart/alternative; boundary=inner\r\n\r\n" +
	"--inner\r\n" +
	"Content-Type: text/html; charset=utf-8\r\n\r\n" +
	"<p>html version</p>\r\n" +
	"--inner\r\n" +
	"Content-Type: text/plain; charset=iso-8859-1\r\n" +
	"Content-Transfer-Encoding: quoted-printable\r\n\r\n" +
	"Gr=FC=DFe aus K=F6ln\r\n" +
	"--inner--\r\n" +
	"--outer\r\n" +
	"Content-Type: text/plain\r\n" +
	"Content-Disposition: attachment; filename=notes.txt\r\n\r\n" +
	"attached text, not the body\r\n" +
	"--outer--\r\n"

func TestParseMail(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  string
		want parsed
	}{
		{"plain", simpleMail("Ann <ann@Example.COM>", "hi there", "Body\r\n\r\n"),
			parsed{MessageID: "hi-there@example.org", From: "ann@example.com", FromName: "Ann", To: []string{"alice@example.org"},
				Subject: "hi there", Body: "Body"}},
		{"multipart, charsets, attachment skipped", multipartMail,
			parsed{MessageID: "abc.123@example.org", From: "rene@example.org", FromName: "René", To: []string{"a@example.org", "b@example.org"},
				Subject: "über alles", Body: "Grüße aus Köln"}},
		{"html only", "From: h@example.org\r\nContent-Type: text/html\r\n\r\n<html><head><style>p{}</style></head><body><h1>Title</h1><p>A &amp; B<br>next</p><script>x()</script></body></html>",
			parsed{From: "h@example.org", Body: "Title\nA & B\nnext"}},
		{"base64 body", "From: b@example.org\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
			base64.StdEncoding.EncodeToString([]byte("décodé")) + "\r\n",
			parsed{From: "b@example.org", Body: "décodé"}},
		{"no From: Sender", "Sender: s@example.org\r\nSubject: x\r\n\r\nb", parsed{From: "s@example.org", Subject: "x", Body: "b"}},
		{"unparsable From kept as text", "From: not an address\r\n\r\nb", parsed{From: "not an address", Body: "b"}},
		{"no header at all", "", parsed{}},
		{"unknown charset keeps the bytes", "From: u@example.org\r\nContent-Type: text/plain; charset=x-nonexistent\r\n\r\nplain ascii",
			parsed{From: "u@example.org", Body: "plain ascii"}},
		{"control characters cleaned from headers", "From: c@example.org\r\nSubject: a\x01b\r\n\tfolded\r\n\r\n",
			parsed{From: "c@example.org", Subject: "a b folded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parseMail([]byte(tc.raw))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

func TestParseMailTruncates(t *testing.T) {
	body := strings.Repeat("é", MaxBody) // 2 bytes each: the cut lands mid-rune half the time
	for _, extra := range []string{"", "x"} {
		got := parseMail([]byte("From: l@example.org\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + extra + body))
		if !got.Truncated || len(got.Body) > MaxBody || !utf8.ValidString(got.Body) || !strings.HasSuffix(got.Body, "é") {
			t.Errorf("prefix %q: truncated=%v len=%d valid=%v", extra, got.Truncated, len(got.Body), utf8.ValidString(got.Body))
		}
	}
	// A mail cut at MaxFetch in the middle of a multipart keeps what it has.
	cut := multipartMail[:strings.Index(multipartMail, "K=F6ln")]
	if got := parseMail([]byte(cut)); got.Body != "Grüße aus" || got.Subject != "über alles" {
		t.Errorf("cut mail: %#v", got)
	}
}

func TestMailEvent(t *testing.T) {
	e := mailEvent("INBOX", 7, 9, timeZero, []byte("Subject: s\r\n\r\nb"), timeNow)
	if e.Id != "INBOX/7/9" || e.User.Transient != UnknownSender || e.User.Display != UnknownSender || !e.Time.AsTime().Equal(timeNow) {
		t.Errorf("%v", e)
	}
	big := mailEvent("INBOX", 7, 10, timeNow, []byte("From: a@b.c\r\n\r\n"+strings.Repeat("x", MaxBody+1)), timeNow)
	if big.Tags["body_truncated"] != "true" || len(big.Mail.Body) != MaxBody {
		t.Errorf("truncated tags %v, body %d", big.Tags, len(big.Mail.Body))
	}
}

func FuzzParseMail(f *testing.F) {
	f.Add([]byte(multipartMail))
	f.Add([]byte(simpleMail("a@b.c", "s", "b")))
	f.Add([]byte("From: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"))
	f.Add([]byte("Content-Type: text/html\r\n\r\n<p>&lt;<script>"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		p := parseMail(raw)
		if len(p.Body) > MaxBody+len("\uFFFD") || !utf8.ValidString(p.Body) || !utf8.ValidString(p.Subject) ||
			!utf8.ValidString(p.From) || !utf8.ValidString(p.FromName) || !utf8.ValidString(p.MessageID) {
			t.Fatalf("parseMail(%q) = %#v", raw, p)
		}
		for _, s := range append([]string{p.Subject, p.From, p.FromName}, p.To...) {
			if strings.ContainsAny(s, "\r\n\x00") {
				t.Fatalf("header field with control characters: %q", s)
			}
		}
	})
}

// BenchmarkParseMail is the CPU cost of the inbound path per mail (the
// network round trips aside): parsing headers and picking the body text.
func BenchmarkParseMail(b *testing.B) {
	for _, tc := range []struct{ name, raw string }{
		{"plain", simpleMail("Ann <ann@example.com>", "a subject line", strings.Repeat("some body text ", 100))},
		{"multipart", multipartMail},
	} {
		b.Run(tc.name, func(b *testing.B) {
			raw := []byte(tc.raw)
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				mailEvent("INBOX", 1, 1, timeNow, raw, timeNow)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "mails/s")
		})
	}
}

var (
	timeZero time.Time
	timeNow  = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
)
