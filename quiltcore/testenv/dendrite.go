//go:build unix

package testenv

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // the shared-secret registration API is defined with HMAC-SHA1
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DendriteVersion is the Dendrite release `make dendrite` builds.
const DendriteVersion = "v0.13.8"

// DendriteServerName is the Matrix server name of test homeservers: user ids
// are @NAME:localhost.
const DendriteServerName = "localhost"

// dendriteSecret is the shared registration secret of test homeservers. It
// guards nothing: the server lives on loopback for one test.
const dendriteSecret = "quilt-test-registration-secret"

// DendriteServer is a private Dendrite homeserver started by Dendrite.
type DendriteServer struct {
	// URL is the client-server API base, "http://127.0.0.1:PORT".
	URL string
	// Accounts registered at start, by localpart.
	Accounts map[string]MatrixAccount
}

// MatrixAccount is a registered user with a fresh access token.
type MatrixAccount struct {
	UserID, Password, AccessToken, DeviceID string
}

// DendriteBinDir returns the directory holding dendrite, generate-keys and
// create-account: $QUILT_DENDRITE_BIN_DIR, else the repository's cache
// (make dendrite).
func DendriteBinDir() (string, error) {
	dir := os.Getenv("QUILT_DENDRITE_BIN_DIR")
	hint := "QUILT_DENDRITE_BIN_DIR"
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", fmt.Errorf("QUILT_DENDRITE_BIN_DIR unset and %v", err)
		}
		dir = filepath.Join(root, ".cache", "bin", "dendrite-"+DendriteVersion)
		hint = "run `make dendrite` or set QUILT_DENDRITE_BIN_DIR"
	}
	for _, b := range []string{"dendrite", "generate-keys"} {
		if _, err := checkExec(filepath.Join(dir, b), hint); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// RequireDendrite skips the test when the Dendrite binaries are missing, or
// fails it when QUILT_REQUIRE_DENDRITE=1. CI=true alone does not make it
// required: CI does not build Dendrite (about 6.5 minutes cold) yet.
func RequireDendrite(t testing.TB) {
	t.Helper()
	if _, err := DendriteBinDir(); err != nil {
		if os.Getenv("QUILT_REQUIRE_DENDRITE") == "1" {
			t.Fatalf("testenv: dendrite required (QUILT_REQUIRE_DENDRITE=1): %v", err)
		}
		t.Skipf("testenv: skipping, dendrite not available: %v", err)
	}
}

// Dendrite starts a private Dendrite (monolith, SQLite, no federation) on a
// free loopback port with its files in t.TempDir(), registers the given
// localparts (default alice and bob; password = localpart+"password")
// through shared-secret registration, and stops it when the test ends. Run
// as root, Dendrite runs as an unprivileged user (see runUser).
func Dendrite(t testing.TB, localparts ...string) *DendriteServer {
	t.Helper()
	RequireDendrite(t)
	bin, _ := DendriteBinDir()
	if len(localparts) == 0 {
		localparts = []string{"alice", "bob"}
	}
	uid, gid, err := runUser()
	if err != nil {
		t.Fatalf("testenv: dendrite: %v", err)
	}
	dir := t.TempDir()
	var d *DendriteServer
	for attempt := 1; attempt <= 3; attempt++ {
		d, err = startDendrite(t, bin, filepath.Join(dir, strconv.Itoa(attempt)), uid, gid)
		if err == nil || !retryable(err) {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	d.Accounts = map[string]MatrixAccount{}
	for _, lp := range localparts {
		d.Accounts[lp] = d.Register(t, lp, lp+"password")
	}
	return d
}

func startDendrite(t testing.TB, bin, dir, uid, gid string) (*DendriteServer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key := filepath.Join(dir, "matrix_key.pem")
	if out, err := exec.Command(filepath.Join(bin, "generate-keys"), "--private-key", key).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dendrite generate-keys: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "dendrite.yaml")
	if err := os.WriteFile(conf, []byte(dendriteConfig(dir)), 0o600); err != nil {
		return nil, fmt.Errorf("dendrite config: %w", err)
	}
	var cred *syscall.Credential
	if uid != "" {
		u, _ := strconv.Atoi(uid)
		g, _ := strconv.Atoi(gid)
		cred = &syscall.Credential{Uid: uint32(u), Gid: uint32(g)}
		// The unprivileged user needs to reach and own the data directory;
		// the test's own temp directories above it only need traversal.
		if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Chown(p, u, g)
		}); err != nil {
			return nil, fmt.Errorf("dendrite: chown %s: %w", dir, err)
		}
		for p := filepath.Dir(dir); strings.HasPrefix(p, os.TempDir()+string(filepath.Separator)); p = filepath.Dir(p) {
			if err := os.Chmod(p, 0o711); err != nil {
				return nil, fmt.Errorf("dendrite: chmod %s: %w", p, err)
			}
		}
	}
	logPath := filepath.Join(dir, "dendrite.log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(filepath.Join(bin, "dendrite"), "--config", conf,
		"--http-bind-address", addr, "--https-bind-address", "127.0.0.1:0")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.SysProcAttr = sysProcAttr()
	if cred != nil {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Credential = cred
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start dendrite: %w", err)
	}
	p := &proc{name: "dendrite", cmd: cmd, logPath: logPath, logFile: lf, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	base := "http://" + addr
	hc := &http.Client{Timeout: 2 * time.Second}
	err = waitFor(p, startTimeout, func() (bool, error) {
		resp, err := hc.Get(base + "/_matrix/client/versions")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	p.register(t)
	return &DendriteServer{URL: base}, nil
}

// Register creates an account through the shared-secret registration API
// (what Dendrite's create-account uses) and returns it with a token.
func (d *DendriteServer) Register(t testing.TB, localpart, password string) MatrixAccount {
	t.Helper()
	acct, err := d.register(localpart, password)
	if err != nil {
		t.Fatalf("testenv: dendrite: register %s: %v", localpart, err)
	}
	return acct
}

func (d *DendriteServer) register(localpart, password string) (MatrixAccount, error) {
	hc := &http.Client{Timeout: 30 * time.Second}
	const path = "/_synapse/admin/v1/register"
	resp, err := hc.Get(d.URL + path)
	if err != nil {
		return MatrixAccount{}, err
	}
	var n struct {
		Nonce string `json:"nonce"`
	}
	err = json.NewDecoder(resp.Body).Decode(&n)
	resp.Body.Close()
	if err != nil || n.Nonce == "" {
		return MatrixAccount{}, fmt.Errorf("GET %s: no nonce (%v)", path, err)
	}
	mac := hmac.New(sha1.New, []byte(dendriteSecret))
	mac.Write([]byte(n.Nonce + "\x00" + localpart + "\x00" + password + "\x00notadmin"))
	body, _ := json.Marshal(map[string]any{
		"nonce": n.Nonce, "username": localpart, "password": password, "admin": false,
		"mac": hex.EncodeToString(mac.Sum(nil)),
	})
	resp, err = hc.Post(d.URL+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return MatrixAccount{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
		ErrCode     string `json:"errcode"`
		Error       string `json:"error"`
	}
	if err := json.Unmarshal(b, &r); err != nil || resp.StatusCode != http.StatusOK {
		return MatrixAccount{}, fmt.Errorf("POST %s: HTTP %d %s %s", path, resp.StatusCode, r.ErrCode, r.Error)
	}
	return MatrixAccount{UserID: r.UserID, Password: password, AccessToken: r.AccessToken, DeviceID: r.DeviceID}, nil
}

func dendriteConfig(d string) string {
	return strings.NewReplacer("$D", d, "$NAME", DendriteServerName, "$SECRET", dendriteSecret).Replace(`# generated by quiltcore/testenv - monolith, SQLite, no federation
version: 2
global:
  server_name: $NAME
  private_key: $D/matrix_key.pem
  key_validity_period: 168h0m0s
  disable_federation: true
  trusted_third_party_id_servers: []
  presence: { enable_inbound: false, enable_outbound: false }
  report_stats: { enabled: false }
  server_notices: { enabled: false }
  jetstream:
    addresses: []
    storage_path: $D/jetstream
    topic_prefix: Dendrite
  metrics: { enabled: false }
  dns_cache: { enabled: false }
app_service_api:
  config_files: []
client_api:
  registration_disabled: true
  guests_disabled: true
  registration_shared_secret: "$SECRET"
  enable_registration_captcha: false
  rate_limiting: { enabled: false, threshold: 20, cooloff_ms: 500 }
federation_api:
  database: { connection_string: "file:$D/federationapi.db" }
  key_perspectives: []
  prefer_direct_fetch: false
key_server:
  database: { connection_string: "file:$D/keyserver.db" }
media_api:
  database: { connection_string: "file:$D/mediaapi.db" }
  base_path: $D/media
  max_file_size_bytes: 10485760
mscs:
  mscs: []
  database: { connection_string: "file:$D/mscs.db" }
relay_api:
  database: { connection_string: "file:$D/relayapi.db" }
room_server:
  database: { connection_string: "file:$D/roomserver.db" }
sync_api:
  database: { connection_string: "file:$D/syncapi.db" }
  search: { enabled: false, index_path: $D/searchindex }
user_api:
  bcrypt_cost: 4
  account_database: { connection_string: "file:$D/userapi.db" }
tracing: { enabled: false }
logging:
  - type: std
    level: warn
`)
}
