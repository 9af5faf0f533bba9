package mongostore_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quilt/quilt/quiltcore/store/mongostore"
)

func TestRedactURI(t *testing.T) {
	for in, want := range map[string]string{
		"mongodb://u:s3cret@h1:27017,h2/db?replicaSet=rs": "mongodb://u:xxxxx@h1:27017,h2/db?replicaSet=rs",
		"mongodb://h1/db":              "mongodb://h1/db",
		"mongodb+srv://u@cluster.x/db": "mongodb+srv://u@cluster.x/db",
		"mongodb://u:p@ss@h/":          "mongodb://u:xxxxx@h/",
		"not a uri":                    "(unparsable uri)",
	} {
		if got := mongostore.RedactURI(in); got != want {
			t.Errorf("RedactURI(%q) = %q, want %q", in, got, want)
		}
	}
	if got := mongostore.Hosts("mongodb://u:p@h1:1,h2:2/db?x=y"); got != "h1:1,h2:2" {
		t.Errorf("Hosts = %q", got)
	}
}

func TestOpenUnreachable(t *testing.T) {
	// A port nothing listens on: bind, note it, close.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = mongostore.Open(context.Background(), mongostore.Options{URI: "mongodb://quilt:hunter22@" + addr + "/?connectTimeoutMS=300", Timeout: 500 * time.Millisecond})
	if err == nil {
		t.Fatal("Open of an unreachable server succeeded")
	}
	msg := err.Error()
	if !strings.Contains(msg, "mongodb at "+addr+" unreachable") || !strings.Contains(msg, "check [mongodb] uri") {
		t.Errorf("error does not name the server and the setting: %v", err)
	}
	if strings.Contains(msg, "hunter22") {
		t.Errorf("error leaks the password: %v", err)
	}
}

func TestOpenBadURI(t *testing.T) {
	for _, uri := range []string{"http://x", "mongodb://u:hunter22@h/?replicaSet=a&directConnection=true&connect=bogus", "mongodb://u:hunter22@/"} {
		_, err := mongostore.Open(context.Background(), mongostore.Options{URI: uri, Timeout: 300 * time.Millisecond})
		if err == nil {
			t.Errorf("Open(%s) succeeded", mongostore.RedactURI(uri))
			continue
		}
		if strings.Contains(err.Error(), "hunter22") || !strings.Contains(err.Error(), "[mongodb] uri") {
			t.Errorf("Open(%s): %v", mongostore.RedactURI(uri), err)
		}
	}
}
