package testenv

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DovecotBin returns the dovecot binary: QUILT_DOVECOT_BIN, else Debian's.
func DovecotBin() (string, error) {
	if p := os.Getenv("QUILT_DOVECOT_BIN"); p != "" {
		return checkExec(p, "QUILT_DOVECOT_BIN")
	}
	return checkExec("/usr/sbin/dovecot", "scripts/ensure-deps.sh (Debian package dovecot-imapd)")
}

// RequireDovecot skips the test when dovecot is missing, or fails it when
// CI=true (see Require).
func RequireDovecot(t testing.TB) {
	t.Helper()
	if _, err := DovecotBin(); err != nil {
		if IsCI() {
			t.Fatalf("testenv: dovecot required under CI=true: %v", err)
		}
		t.Skipf("testenv: skipping, dovecot not available: %v", err)
	}
}

// DovecotServer is a private IMAP server: plain IMAP (no TLS) on 127.0.0.1,
// PLAIN/LOGIN authentication from a passwd-file, one Maildir per account.
type DovecotServer struct {
	Addr     string            // 127.0.0.1:PORT
	Accounts map[string]string // user -> password
	// Seeded is the number of mails each account's INBOX starts with.
	Seeded int

	dir, bin string
	port     int
	cred     *syscall.Credential

	mu        sync.Mutex
	proc      *proc
	runs      int
	delivered int
}

// Dovecot starts a private dovecot with accounts alice/alicepw and
// bob/bobpw (or the given "user:password" pairs), each INBOX seeded with two
// mails, in t.TempDir(); it is stopped when the test ends. Run as root, the
// whole server runs as an unprivileged user (see runUser), as it would for
// a user without root.
func Dovecot(t testing.TB, accounts ...string) *DovecotServer {
	t.Helper()
	RequireDovecot(t)
	bin, _ := DovecotBin()
	if len(accounts) == 0 {
		accounts = []string{"alice:alicepw", "bob:bobpw"}
	}
	d := &DovecotServer{Accounts: map[string]string{}, Seeded: 2, dir: t.TempDir(), bin: bin}
	for _, a := range accounts {
		u, p, ok := strings.Cut(a, ":")
		if !ok || u == "" || p == "" || strings.ContainsAny(a, " \t\n/") {
			t.Fatalf("testenv: dovecot account %q is not user:password", a)
		}
		d.Accounts[u] = p
	}
	uid, gid, err := runUser()
	if err != nil {
		t.Fatalf("testenv: dovecot: %v", err)
	}
	runUID, runGID := os.Getuid(), os.Getgid()
	if uid != "" {
		runUID, _ = strconv.Atoi(uid)
		runGID, _ = strconv.Atoi(gid)
		d.cred = &syscall.Credential{Uid: uint32(runUID), Gid: uint32(runGID)}
	}
	if err := d.prepare(runUID, runGID); err != nil {
		t.Fatalf("testenv: dovecot: %v", err)
	}
	for attempt := 1; attempt <= 3; attempt++ {
		if d.port, err = freePort(); err != nil {
			break
		}
		d.Addr = "127.0.0.1:" + strconv.Itoa(d.port)
		if err = d.writeConfig(runUID, runGID); err != nil {
			break
		}
		if err = d.start(); err == nil || !retryable(err) {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		d.Stop()
		if t.Failed() {
			t.Logf("testenv: dovecot log (tail):\n%s", tail(filepath.Join(d.dir, "dovecot.log"), 40))
		}
	})
	return d
}

// Stop stops the server (SIGTERM, then SIGKILL); the mailboxes stay.
func (d *DovecotServer) Stop() {
	d.mu.Lock()
	p := d.proc
	d.proc = nil
	d.mu.Unlock()
	if p != nil {
		stopGroup(p)
	}
}

// stopGroup stops dovecot's whole process group: the master alone leaves
// the imap processes of connected clients running (they keep serving an
// IDLE until the client goes), which is neither a restart nor clean.
func stopGroup(p *proc) {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
}

// Deliver puts a mail into user's INBOX the way a local delivery agent
// does (a file in Maildir/new), so mail can arrive while the server is down.
func (d *DovecotServer) Deliver(t testing.TB, user, raw string) {
	t.Helper()
	if _, ok := d.Accounts[user]; !ok {
		t.Fatalf("testenv: dovecot has no account %q", user)
	}
	d.mu.Lock()
	d.delivered++
	n := d.delivered
	d.mu.Unlock()
	md := filepath.Join(d.dir, "home", user, "Maildir")
	name := fmt.Sprintf("%d.D%dP%d.quilt", time.Now().Unix(), n, os.Getpid())
	tmp := filepath.Join(md, "tmp", name)
	if err := os.WriteFile(tmp, []byte(raw), 0o600); err != nil {
		t.Fatalf("testenv: dovecot deliver: %v", err)
	}
	if d.cred != nil {
		if err := os.Chown(tmp, int(d.cred.Uid), int(d.cred.Gid)); err != nil {
			t.Fatalf("testenv: dovecot deliver: %v", err)
		}
	}
	if err := os.Rename(tmp, filepath.Join(md, "new", name)); err != nil {
		t.Fatalf("testenv: dovecot deliver: %v", err)
	}
}

// Restart starts a stopped server again on the same port with the same
// mailboxes (Stop first if it runs).
func (d *DovecotServer) Restart(t testing.TB) {
	t.Helper()
	d.Stop()
	var err error
	// The port was ours a moment ago; a short retry covers a slow release.
	for attempt := 0; attempt < 3; attempt++ {
		if err = d.start(); err == nil || !retryable(err) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("testenv: dovecot restart: %v", err)
}

func (d *DovecotServer) start() error {
	d.mu.Lock()
	d.runs++
	n := d.runs
	d.mu.Unlock()
	conf := filepath.Join(d.dir, "dovecot.conf")
	// -F: foreground, so the process is ours to stop; the master forks the
	// imap-login, auth and imap processes, which die with it.
	cmd := exec.Command(d.bin, "-F", "-c", conf)
	logPath := filepath.Join(d.dir, fmt.Sprintf("dovecot.stdout-%d.log", n))
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd.Dir = d.dir
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "HOME="+d.dir)
	cmd.SysProcAttr = sysProcAttr()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true // see stopGroup
	cmd.SysProcAttr.Credential = d.cred
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start dovecot: %w", err)
	}
	p := &proc{name: "dovecot", cmd: cmd, logPath: filepath.Join(d.dir, "dovecot.log"), logFile: lf, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	// Ready when it greets: a bare connect could reach another process that
	// raced us to the port.
	err = waitFor(p, startTimeout, func() (bool, error) {
		c, err := net.DialTimeout("tcp", d.Addr, time.Second)
		if err != nil {
			return false, nil
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		return err == nil && strings.HasPrefix(line, "* OK") && strings.Contains(line, "quilt test dovecot"), nil
	})
	if err != nil {
		stopGroup(p)
		return err
	}
	d.mu.Lock()
	d.proc = p
	d.mu.Unlock()
	return nil
}

// prepare writes the users file and seeds the Maildirs, owned by the user
// the server runs as.
func (d *DovecotServer) prepare(uid, gid int) error {
	for _, sub := range []string{"run", "lib", "home"} {
		if err := os.MkdirAll(filepath.Join(d.dir, sub), 0o700); err != nil {
			return err
		}
	}
	var users strings.Builder
	ts := time.Now().Unix()
	for u, p := range d.Accounts {
		home := filepath.Join(d.dir, "home", u)
		fmt.Fprintf(&users, "%s:{PLAIN}%s:%d:%d::%s::\n", u, p, uid, gid, home)
		md := filepath.Join(home, "Maildir")
		for _, sub := range []string{"new", "cur", "tmp"} {
			if err := os.MkdirAll(filepath.Join(md, sub), 0o700); err != nil {
				return err
			}
		}
		for i := 1; i <= d.Seeded; i++ {
			msg := fmt.Sprintf("From: Seed Sender <sender@seed.localhost>\r\nTo: %s@test.localhost\r\n"+
				"Subject: seed message %d for %s\r\nDate: %s\r\nMessage-ID: <seed-%d-%s-%d@test.localhost>\r\n"+
				"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello %s, this is seed message %d.\r\n",
				u, i, u, time.Now().Format(time.RFC1123Z), i, u, ts, u, i)
			name := filepath.Join(md, "new", fmt.Sprintf("%d.M%dP%d.quilt", ts, i, os.Getpid()))
			if err := os.WriteFile(name, []byte(msg), 0o600); err != nil {
				return err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(d.dir, "users"), []byte(users.String()), 0o600); err != nil {
		return err
	}
	if d.cred == nil {
		return nil
	}
	// The unprivileged user owns the server's files; the test's own temp
	// directories above them only need traversal.
	if err := filepath.Walk(d.dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	}); err != nil {
		return fmt.Errorf("chown %s: %w", d.dir, err)
	}
	for p := filepath.Dir(d.dir); strings.HasPrefix(p, os.TempDir()+string(filepath.Separator)); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o711); err != nil {
			return fmt.Errorf("chmod %s: %w", p, err)
		}
	}
	return nil
}

func (d *DovecotServer) writeConfig(uid, gid int) error {
	userName, groupName := strconv.Itoa(uid), strconv.Itoa(gid)
	if u, err := user.LookupId(userName); err == nil {
		userName = u.Username
	}
	if g, err := user.LookupGroupId(groupName); err == nil {
		groupName = g.Name
	}
	conf := strings.NewReplacer("$D", d.dir, "$PORT", strconv.Itoa(d.port), "$USER", userName, "$GROUP", groupName,
		"$UID", strconv.Itoa(uid), "$GID", strconv.Itoa(gid)).Replace(dovecotConfig)
	p := filepath.Join(d.dir, "dovecot.conf")
	if err := os.WriteFile(p, []byte(conf), 0o600); err != nil {
		return err
	}
	if d.cred != nil {
		return os.Chown(p, uid, gid)
	}
	return nil
}

// dovecotConfig is standalone (it does not include /etc/dovecot) and runs
// every process as one unprivileged user.
const dovecotConfig = `# generated by quiltcore/testenv
base_dir = $D/run
state_dir = $D/lib
instance_name = quilt-test-$PORT
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = $D/dovecot.log
info_log_path = $D/dovecot.log
login_greeting = quilt test dovecot ready.
default_internal_user = $USER
default_internal_group = $GROUP
default_login_user = $USER
first_valid_uid = $UID
last_valid_uid = $UID
first_valid_gid = $GID
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n $D/users
}
userdb {
  driver = passwd-file
  args = username_format=%n $D/users
}
service imap-login {
  chroot =
  inet_listener imap {
    address = 127.0.0.1
    port = $PORT
  }
  inet_listener imaps {
    port = 0
  }
}
service anvil {
  chroot =
}
service auth-worker {
  user = $default_internal_user
}
protocol imap {
  imap_idle_notify_interval = 2 mins
}
`
