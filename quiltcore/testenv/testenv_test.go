package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func TestConsul(t *testing.T) {
	t.Parallel()
	addr := Consul(t)
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("Consul address %q is not on 127.0.0.1", addr)
	}
	var leader string
	c := &http.Client{Timeout: 5 * time.Second}
	if !getJSON(c, "http://"+addr+"/v1/status/leader", &leader) || leader == "" {
		t.Fatalf("GET /v1/status/leader on %s: no leader (%q)", addr, leader)
	}
	// A key written through the agent reads back: the store, not just the
	// status endpoint, works.
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/v1/kv/quilt/testenv", strings.NewReader("v1"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("PUT kv: %v", err)
	}
	resp.Body.Close()
	var kv []struct{ Value []byte }
	if !getJSON(c, "http://"+addr+"/v1/kv/quilt/testenv", &kv) || len(kv) != 1 || string(kv[0].Value) != "v1" {
		t.Fatalf("GET kv after PUT: %+v", kv)
	}
}

func TestConsulTwoAgentsAreIndependent(t *testing.T) {
	t.Parallel()
	a, b := Consul(t), Consul(t)
	if a == b {
		t.Fatalf("two agents share address %s", a)
	}
}

func TestFerretDB(t *testing.T) {
	t.Parallel()
	uri := FerretDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetTimeout(10 * time.Second))
	if err != nil {
		t.Fatalf("mongo.Connect(%s): %v", uri, err)
	}
	defer client.Disconnect(context.Background())
	if err := client.Ping(ctx, nil); err != nil {
		t.Fatalf("ping %s: %v", uri, err)
	}
	coll := client.Database(DatabaseName(t)).Collection("docs")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "a"}, {Key: "n", Value: 42}}); err != nil {
		t.Fatalf("InsertOne: %v", err)
	}
	var got struct {
		ID string `bson:"_id"`
		N  int    `bson:"n"`
	}
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "a"}}).Decode(&got); err != nil {
		t.Fatalf("FindOne: %v", err)
	}
	if got.ID != "a" || got.N != 42 {
		t.Fatalf("FindOne = %+v, want {a 42}", got)
	}
	// A second insert with the same _id must be refused: a real server, not a stub.
	_, err = coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "a"}})
	if !mongo.IsDuplicateKeyError(err) {
		t.Fatalf("duplicate InsertOne: err = %v, want duplicate key error", err)
	}
}

func TestNGIRCd(t *testing.T) {
	t.Parallel()
	addr := NGIRCd(t, NGIRCdOptions{Unthrottled: true, OperName: "oper", OperPassword: "operpw"})
	c := dialIRC(t, addr, "alice")
	c.send("OPER oper operpw")
	c.expect(" 381 ") // RPL_YOUREOPER: the generated [Operator] block is in effect
	c.send("QUIT :bye")
}

func TestNGIRCdPassword(t *testing.T) {
	t.Parallel()
	addr := NGIRCd(t, NGIRCdOptions{Password: "secret"})
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "PASS wrong\r\nNICK bob\r\nUSER bob 0 * :bob\r\n")
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading from %s: %v (want ERROR for a wrong password)", addr, err)
		}
		if strings.Contains(line, " 001 ") {
			t.Fatalf("registered with a wrong server password: %q", line)
		}
		if strings.HasPrefix(line, "ERROR") {
			return
		}
	}
}

type ircClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialIRC(t *testing.T, addr, nick string) *ircClient {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &ircClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.send("NICK " + nick)
	c.send("USER " + nick + " 0 * :" + nick)
	c.expect(" 001 " + nick + " ")
	return c
}

func (c *ircClient) send(line string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(line + "\r\n")); err != nil {
		c.t.Fatalf("send %q: %v", line, err)
	}
}

func (c *ircClient) expect(substr string) string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("waiting for %q: %v", substr, err)
		}
		if strings.HasPrefix(line, "PING ") {
			c.send("PONG " + strings.TrimSpace(line[5:]))
			continue
		}
		if strings.Contains(line, substr) {
			return line
		}
	}
}

func TestRequireUnknownComponent(t *testing.T) {
	if err := Available("nosuch"); err == nil {
		t.Fatal("Available(nosuch) = nil, want an error")
	}
}

func TestMissingBinaryIsReported(t *testing.T) {
	t.Setenv("QUILT_CONSUL_BIN", filepath.Join(t.TempDir(), "absent"))
	err := Available(ComponentConsul)
	if err == nil || !strings.Contains(err.Error(), "QUILT_CONSUL_BIN") {
		t.Fatalf("Available(consul) with a missing binary = %v, want an error naming QUILT_CONSUL_BIN", err)
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "quiltcore", "testenv", "testenv.go")); err != nil {
		t.Fatalf("RepoRoot() = %s, which does not contain this package: %v", root, err)
	}
}

func TestDatabaseName(t *testing.T) {
	a, b := DatabaseName(t), DatabaseName(t)
	if a == b {
		t.Fatalf("DatabaseName twice = %q", a)
	}
	long := strings.Repeat("x", 100)
	t.Run(long+"/with.dots and spaces", func(t *testing.T) {
		n := DatabaseName(t)
		if len(n) > 63 || strings.ContainsAny(n, "/. \"$") {
			t.Fatalf("DatabaseName = %q: not a valid MongoDB database name", n)
		}
	})
}
