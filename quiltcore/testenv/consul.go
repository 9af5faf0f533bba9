package testenv

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// consulNode is the dev agent's node name, fixed so readiness can check that
// the node is in the catalog (sessions and locks fail until it is).
const consulNode = "quilt-test"

// Consul starts a private Consul dev agent (in-memory state, single server)
// on free loopback ports and returns its HTTP address "127.0.0.1:PORT". The
// agent is the leader and its node is registered when Consul returns. It is
// killed when the test ends.
func Consul(t testing.TB) string {
	t.Helper()
	Require(t, ComponentConsul)
	bin, _ := ConsulBin()
	dir := t.TempDir()
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var addr string
		addr, err = startConsul(t, bin, dir, attempt)
		if err == nil {
			return addr
		}
		if !retryable(err) {
			break
		}
	}
	t.Fatalf("testenv: %v", err)
	return ""
}

func startConsul(t testing.TB, bin, dir string, attempt int) (string, error) {
	ports, err := freePorts(4)
	if err != nil {
		return "", err
	}
	httpPort, lanPort, wanPort, serverPort := ports[0], ports[1], ports[2], ports[3]
	logPath := filepath.Join(dir, fmt.Sprintf("consul-%d.log", attempt))
	p, err := startProc("consul", dir, logPath, nil, bin, "agent", "-dev",
		"-node", consulNode,
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise", "127.0.0.1",
		"-http-port", strconv.Itoa(httpPort),
		// gRPC (xDS for Envoy) and DNS are not used by quilt: off, fewer ports to race for.
		"-grpc-port", "-1", "-grpc-tls-port", "-1", "-dns-port", "-1",
		"-serf-lan-port", strconv.Itoa(lanPort),
		"-serf-wan-port", strconv.Itoa(wanPort),
		"-server-port", strconv.Itoa(serverPort),
	)
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(httpPort)
	// The leader's address carries our server port, which proves the HTTP
	// port answering is this agent and not another process that took it.
	wantLeader := "127.0.0.1:" + strconv.Itoa(serverPort)
	client := &http.Client{Timeout: 2 * time.Second}
	err = waitFor(p, startTimeout, func() (bool, error) {
		var leader string
		if !getJSON(client, "http://"+addr+"/v1/status/leader", &leader) || leader == "" {
			return false, nil
		}
		if leader != wantLeader {
			return false, fmt.Errorf("answers on %s with leader %q, want %q: port taken by another agent?", addr, leader, wantLeader)
		}
		var node map[string]any
		return getJSON(client, "http://"+addr+"/v1/catalog/node/"+consulNode, &node) && node != nil, nil
	})
	if err != nil {
		p.stop()
		return "", err
	}
	p.register(t)
	return addr, nil
}

// getJSON reports whether url answered 200 with JSON that decoded into v.
// Errors are not returned: during startup they only mean "not yet".
func getJSON(c *http.Client, url string, v any) bool {
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return false
	}
	return json.NewDecoder(resp.Body).Decode(v) == nil
}
