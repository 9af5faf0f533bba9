//go:build unix

package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ProsodyDomain is the XMPP domain of test servers: accounts are
// NAME@localhost, MUC rooms ROOM@conference.localhost.
const (
	ProsodyDomain = "localhost"
	ProsodyMUC    = "conference." + ProsodyDomain
)

// ProsodyBin returns the prosody binary: $QUILT_PROSODY_BIN, else the Debian
// package's /usr/bin/prosody (scripts/ensure-deps.sh).
func ProsodyBin() (string, error) {
	if p := os.Getenv("QUILT_PROSODY_BIN"); p != "" {
		return checkExec(p, "QUILT_PROSODY_BIN")
	}
	return checkExec("/usr/bin/prosody", "scripts/ensure-deps.sh (Debian package prosody)")
}

// RequireProsody skips the test when prosody is missing, or fails it when
// CI=true.
func RequireProsody(t testing.TB) {
	t.Helper()
	if _, err := ProsodyBin(); err != nil {
		if IsCI() {
			t.Fatalf("testenv: prosody required under CI=true: %v", err)
		}
		t.Skipf("testenv: skipping, prosody not available: %v", err)
	}
}

// ProsodyServer is a private prosody 0.12 started by Prosody: c2s on one
// loopback port, STARTTLS offered (self-signed certificate for localhost and
// conference.localhost) but not required, PLAIN allowed, and a MUC service
// at ProsodyMUC where anyone may create rooms (unlocked at once).
type ProsodyServer struct {
	// Addr is "127.0.0.1:PORT" (c2s).
	Addr string
	// Accounts are the registered users: localpart → password.
	Accounts map[string]string
	// CertPEM is the server's self-signed certificate, for tests that
	// verify it instead of skipping verification.
	CertPEM []byte

	t    testing.TB
	bin  string
	dir  string
	conf string
	uid  string
	gid  string

	mu   sync.Mutex
	p    *proc
	runs int
}

// Prosody starts a prosody with the given accounts ("user:password" each).
// Its files live in a private temporary directory removed with the test;
// as root it runs as an unprivileged user (see runUser) through setpriv.
func Prosody(t testing.TB, accounts ...string) *ProsodyServer {
	t.Helper()
	RequireProsody(t)
	bin, _ := ProsodyBin()
	uid, gid, err := runUser()
	if err != nil {
		if IsCI() {
			t.Fatalf("testenv: prosody: %v", err)
		}
		t.Skipf("testenv: skipping, prosody cannot run: %v", err)
	}
	if uid != "" {
		if _, err := exec.LookPath("setpriv"); err != nil {
			t.Fatalf("testenv: prosody as root needs setpriv (util-linux) to drop privileges: %v", err)
		}
	}
	// Not t.TempDir(): its parent is private to root, and the server's
	// user must reach its data directory.
	dir, err := os.MkdirTemp("", "quilt-prosody-")
	if err != nil {
		t.Fatalf("testenv: prosody dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s := &ProsodyServer{Accounts: map[string]string{}, t: t, bin: bin, dir: dir, uid: uid, gid: gid}
	for _, a := range accounts {
		u, p, ok := strings.Cut(a, ":")
		if !ok || u == "" || p == "" {
			t.Fatalf("testenv: prosody account %q: want user:password", a)
		}
		s.Accounts[u] = p
	}
	if err := s.prepare(); err != nil {
		t.Fatalf("testenv: prosody: %v", err)
	}
	for attempt := 1; attempt <= 3; attempt++ {
		var port int
		if port, err = freePort(); err != nil {
			break
		}
		if err = s.start(port); err == nil {
			t.Cleanup(s.Stop)
			return s
		}
		if !retryable(err) {
			break
		}
	}
	t.Fatalf("testenv: %v", err)
	return nil
}

// prepare writes the certificate and the accounts. Accounts use the
// internal_plain store, written directly, which is much faster than
// prosodyctl register and keeps PLAIN and SCRAM both possible.
func (s *ProsodyServer) prepare() error {
	certs := filepath.Join(s.dir, "certs")
	acc := filepath.Join(s.dir, "data", ProsodyDomain, "accounts")
	for _, d := range []string{certs, acc} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	certPEM, keyPEM, err := selfSigned(ProsodyDomain, ProsodyMUC)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	s.CertPEM = certPEM
	if err := os.WriteFile(filepath.Join(certs, ProsodyDomain+".crt"), certPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(certs, ProsodyDomain+".key"), keyPEM, 0o600); err != nil {
		return err
	}
	for u, p := range s.Accounts {
		lua := fmt.Sprintf("return {\n\t[\"password\"] = %q;\n};\n", p)
		if err := os.WriteFile(filepath.Join(acc, u+".dat"), []byte(lua), 0o600); err != nil {
			return err
		}
	}
	if s.uid != "" {
		return chownTree(s.dir, s.uid, s.gid)
	}
	return nil
}

func chownTree(root, uid, gid string) error {
	u, err := strconv.Atoi(uid)
	if err != nil {
		return fmt.Errorf("uid %q: %w", uid, err)
	}
	g, err := strconv.Atoi(gid)
	if err != nil {
		return fmt.Errorf("gid %q: %w", gid, err)
	}
	return filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, u, g)
	})
}

func (s *ProsodyServer) start(port int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runs++
	s.conf = filepath.Join(s.dir, "prosody.cfg.lua")
	if err := os.WriteFile(s.conf, []byte(prosodyConfig(s.dir, port)), 0o600); err != nil {
		return fmt.Errorf("prosody config: %w", err)
	}
	if s.uid != "" {
		if err := chownTree(s.dir, s.uid, s.gid); err != nil {
			return err
		}
	}
	logPath := filepath.Join(s.dir, fmt.Sprintf("prosody-%d.log", s.runs))
	bin, args := s.bin, []string{"-F", "--config", s.conf}
	if s.uid != "" {
		args = append([]string{"--reuid=" + s.uid, "--regid=" + s.gid, "--clear-groups", "--inh-caps=-all", bin}, args...)
		bin, _ = exec.LookPath("setpriv")
	}
	p, err := startProc("prosody", s.dir, logPath, nil, bin, args...)
	if err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	// prosody logs the activation only after its own bind succeeded, so a
	// connectable port is ours and not a process that raced us to it.
	activated := fmt.Sprintf("Activated service 'c2s' on [127.0.0.1]:%d", port)
	mainLog := filepath.Join(s.dir, "prosody.log")
	err = waitFor(p, startTimeout, func() (bool, error) {
		b, _ := os.ReadFile(mainLog)
		if !strings.Contains(string(b), activated) {
			return false, nil
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
	if err != nil {
		p.stop()
		if strings.Contains(tail(mainLog, 30), "Failed to open server port") {
			return errExited{fmt.Errorf("prosody port %d taken: %w", port, err)}
		}
		return err
	}
	s.p = p
	s.Addr = addr
	return nil
}

// Stop shuts the server down (SIGTERM, then SIGKILL); Start brings it back
// on the same port with the same data.
func (s *ProsodyServer) Stop() {
	s.mu.Lock()
	p := s.p
	s.p = nil
	s.mu.Unlock()
	if p == nil {
		return
	}
	p.stop()
	if s.t.Failed() {
		s.t.Logf("testenv: prosody log (tail):\n%s", tail(filepath.Join(s.dir, "prosody.log"), 40))
		s.t.Logf("testenv: prosody stderr (tail):\n%s", tail(p.logPath, 20))
	}
}

// Freeze suspends the server (SIGSTOP): its connections stay open and the
// kernel still accepts bytes, but nothing answers, as with a hung server or
// a connection a NAT dropped. Thaw resumes it.
func (s *ProsodyServer) Freeze(t testing.TB) { s.signal(t, syscall.SIGSTOP) }

// Thaw resumes a frozen server (SIGCONT).
func (s *ProsodyServer) Thaw(t testing.TB) { s.signal(t, syscall.SIGCONT) }

func (s *ProsodyServer) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	s.mu.Lock()
	p := s.p
	s.mu.Unlock()
	if p == nil {
		t.Fatalf("testenv: prosody is not running")
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("testenv: prosody %v: %v", sig, err)
	}
}

// Start restarts a stopped server on its previous port. Clients that
// reconnect find it at the same Addr.
func (s *ProsodyServer) Start(t testing.TB) {
	t.Helper()
	_, portStr, _ := net.SplitHostPort(s.Addr)
	port, _ := strconv.Atoi(portStr)
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		// The port can linger a moment after the old process exits.
		if err = s.start(port); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("testenv: prosody restart on %s: %v", s.Addr, err)
}

func prosodyConfig(dir string, port int) string {
	return fmt.Sprintf(`-- generated by quiltcore/testenv
pidfile = %[1]q
data_path = %[2]q
certificates = %[3]q
admin_socket = %[4]q
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_ports = { %[5]d }
c2s_direct_tls_ports = { }
s2s_ports = { }
component_ports = { }
http_ports = { }
https_ports = { }
modules_enabled = { "roster"; "saslauth"; "tls"; "disco"; "ping"; "version"; "uptime"; "time" }
modules_disabled = { "s2s" }
authentication = "internal_plain"
storage = "internal"
-- test only: plain sockets on loopback
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_require_encryption = false
log = { info = %[6]q; error = %[7]q }

VirtualHost %[8]q

Component %[9]q "muc"
	restrict_room_creation = false
	muc_room_locking = false
`, filepath.Join(dir, "prosody.pid"), filepath.Join(dir, "data"), filepath.Join(dir, "certs"),
		filepath.Join(dir, "prosody.sock"), port, filepath.Join(dir, "prosody.log"),
		filepath.Join(dir, "prosody.err"), ProsodyDomain, ProsodyMUC)
}

// selfSigned makes a certificate for the given DNS names (ECDSA P-256:
// generated in a millisecond, unlike RSA).
func selfSigned(names ...string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: names[0]},
		DNSNames:              names,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}
