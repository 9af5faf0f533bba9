// Package ops tests the operator's view: `make install` into a temporary
// root, then the installed init scripts driving real quilt-qmd and
// quilt-smd processes (protocol = test), and the systemd units.
package ops

import (
	"bytes"
	"fmt"
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

// The binaries are built once for every test of the package.
var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// need finds a command or skips (fails under CI=true).
func need(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required under CI=true: %v", name, err)
		}
		t.Skipf("%s not found: %v", name, err)
	}
	return p
}

type root struct {
	t    *testing.T
	dir  string // DESTDIR
	repo string
	env  []string
}

func (r *root) path(p string) string { return filepath.Join(r.dir, p) }

// run runs an installed init script or binary; it returns the combined
// output and the exit code.
func (r *root) run(name string, args ...string) (string, int) {
	r.t.Helper()
	cmd := exec.Command(r.path(name), args...)
	cmd.Env = r.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		r.t.Fatalf("%s %v: %v", name, args, err)
	}
	r.t.Logf("$ %s %s → %d\n%s", name, strings.Join(args, " "), code, out.String())
	return out.String(), code
}

// expect runs and checks the exit code and that the output has each want.
func (r *root) expect(code int, name string, args ...string) func(want ...string) string {
	r.t.Helper()
	out, got := r.run(name, args...)
	if got != code {
		r.t.Fatalf("%s %s: exit %d, want %d:\n%s", name, strings.Join(args, " "), got, code, out)
	}
	return func(want ...string) string {
		r.t.Helper()
		for _, w := range want {
			if !strings.Contains(out, w) {
				r.t.Fatalf("%s %s: output lacks %q:\n%s", name, strings.Join(args, " "), w, out)
			}
		}
		return out
	}
}

func (r *root) pid(name string) int {
	b, err := os.ReadFile(r.path("run/quilt/" + name + ".pid"))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err != nil || !strings.Contains(string(st), ") Z ")
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// install builds the binaries and runs make install DESTDIR=dir
// PREFIX=/usr over an existing quilt.cfg and /etc/default/quilt.
func install(t *testing.T) *root {
	need(t, "make")
	need(t, "sh")
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	r := &root{t: t, dir: t.TempDir(), repo: repo}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "quilt-ops-bin-")
		if buildErr != nil {
			return
		}
		build := exec.Command("go", "build", "-tags", "sqlite_fts5", "-o", buildDir+"/",
			"./querymaster/cmd/quilt-qmd", "./sourcemanagers/cmd/quilt-smd", "./clients/cmd/quiltctl")
		build.Dir = repo
		if out, err := build.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	bin := buildDir
	// The machine's own configuration, there before the install.
	port := freePort(t)
	cfg := fmt.Sprintf(`# the operator's quilt.cfg: install must keep it
[registrar]
address = embedded

[query_master]
listen = 127.0.0.1:%d

[mongodb]
data_dir = %s

[daemon]
pid_dir = %s
shutdown_timeout = 5s
`, port, r.path("var/lib/quilt"), r.path("run/quilt"))
	write(t, r.path("etc/quilt/quilt.cfg"), cfg)
	defaults := fmt.Sprintf("QUILT_CFG_DIR=%s\nQUILT_BIN_DIR=%s\nQUILT_LIB=%s\nLOGDIR=%s\nSTART_TIMEOUT=30\nSTOP_TIMEOUT=10\n",
		r.path("etc/quilt"), r.path("usr/bin"), r.path("usr/lib/quilt/init-functions.sh"), r.path("var/log/quilt"))
	write(t, r.path("etc/default/quilt"), defaults)

	mk := exec.Command("make", "--no-print-directory", "install", "DESTDIR="+r.dir, "PREFIX=/usr", "NO_BUILD=1", "BIN="+bin)
	mk.Dir = repo
	out, err := mk.CombinedOutput()
	t.Logf("make install:\n%s", out)
	if err != nil {
		t.Fatalf("make install: %v", err)
	}
	for _, w := range []string{
		"kept " + r.path("etc/quilt/quilt.cfg") + " (yours); the shipped version is " + r.path("etc/quilt/quilt.cfg.dist"),
		"kept " + r.path("etc/default/quilt") + " (yours)",
	} {
		if !bytes.Contains(out, []byte(w)) {
			t.Errorf("make install does not say %q", w)
		}
	}
	if got, _ := os.ReadFile(r.path("etc/quilt/quilt.cfg")); string(got) != cfg {
		t.Fatalf("install overwrote quilt.cfg:\n%s", got)
	}
	shipped, _ := os.ReadFile(filepath.Join(repo, "etc/quilt/quilt.cfg"))
	if got, _ := os.ReadFile(r.path("etc/quilt/quilt.cfg.dist")); !bytes.Equal(got, shipped) {
		t.Fatal("quilt.cfg.dist is not the shipped quilt.cfg")
	}
	for _, f := range []string{"usr/bin/quilt-qmd", "usr/bin/quilt-smd", "usr/bin/quiltctl", "etc/init.d/quilt-qmd", "etc/init.d/quilt-smd",
		"usr/lib/systemd/system/quilt-qmd.service", "usr/lib/systemd/system/quilt-smd@.service", "usr/lib/quilt/init-functions.sh",
		"etc/quilt/smd.d/irc.cfg", "etc/quilt/tests/irc_testcase.quilt", "etc/quilt/patterns.d/lastseen.pattern"} {
		if _, err := os.Stat(r.path(f)); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	if fi, err := os.Stat(r.path("etc/quilt/smd.d/secrets/matrix.password")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("secrets are installed 0600: %v %v", fi, err)
	}
	for p, want := range map[string]string{"quilt-qmd.txt": "Usage: quilt-qmd", "quilt-smd.txt": "Usage: quilt-smd", "quiltctl.txt": "==== quiltctl test ===="} {
		if b, err := os.ReadFile(r.path("usr/share/doc/quilt/" + p)); err != nil || !bytes.Contains(b, []byte(want)) {
			t.Errorf("help page %s lacks %q: %v", p, want, err)
		}
	}
	if b, _ := os.ReadFile(r.path("etc/init.d/quilt-qmd")); !bytes.Contains(b, []byte("\nPREFIX=/usr\n")) {
		t.Error("the installed init script does not carry PREFIX=/usr")
	}
	r.env = append(os.Environ(), "QUILT_DEFAULTS="+r.path("etc/default/quilt"))
	return r
}

func TestInstallAndInitScripts(t *testing.T) {
	r := install(t)
	// Source managers: two of protocol test and one disabled, none shipped.
	// (Every protocol is built into quilt-smd now, so the init script's
	// "not built into this binary" skip cannot be provoked here.)
	smd := r.path("etc/quilt/smd.d")
	olds, _ := filepath.Glob(filepath.Join(smd, "*.cfg"))
	for _, f := range olds {
		os.Remove(f)
	}
	for _, n := range []string{"t1", "t2"} {
		write(t, filepath.Join(smd, n+".cfg"), "protocol = test\n\n[server main]\nusers = 3\nchannels = #test\n")
	}
	write(t, filepath.Join(smd, "off.cfg"), "protocol = test\nenabled = false\n\n[server main]\nusers = 1\n")
	t.Cleanup(func() {
		for _, s := range []string{"etc/init.d/quilt-smd", "etc/init.d/quilt-qmd"} {
			if _, err := os.Stat(r.path(s)); err == nil { // gone after make uninstall
				r.run(s, "stop")
			}
		}
		for _, n := range []string{"quilt-qmd", "quilt-smd-t1", "quilt-smd-t2", "quilt-smd-off", "quilt-smd-fresh"} {
			if p := r.pid(n); alive(p) {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})

	qmd, smdScript := "etc/init.d/quilt-qmd", "etc/init.d/quilt-smd"
	r.expect(3, qmd, "status")("quilt-qmd: not running")
	r.expect(2, qmd, "frobnicate")("Usage:")
	r.expect(7, qmd, "reload")

	r.expect(0, qmd, "start")("quilt-qmd: started (pid ")
	pid := r.pid("quilt-qmd")
	if !alive(pid) {
		t.Fatalf("quilt-qmd pid %d from its pid file is not running", pid)
	}
	r.expect(0, qmd, "status")(fmt.Sprintf("quilt-qmd: running (pid %d)", pid))
	r.expect(0, qmd, "start")(fmt.Sprintf("already running (pid %d)", pid))
	if r.pid("quilt-qmd") != pid {
		t.Fatal("a second start replaced the daemon")
	}
	if b, _ := os.ReadFile(r.path("var/log/quilt/quilt-qmd.log")); !bytes.Contains(b, []byte("msg=ready")) {
		t.Fatalf("quilt-qmd.log has no ready line:\n%s", b)
	}

	out := r.expect(0, smdScript, "start")("quilt-smd t1: started", "quilt-smd t2: started")
	if strings.Contains(out, "quilt-smd off") {
		t.Fatalf("the disabled source manager was started:\n%s", out)
	}
	r.expect(0, smdScript, "status")("quilt-smd t1: running (pid", "quilt-smd t2: running (pid")
	r.expect(0, smdScript, "status", "t1")("quilt-smd t1: running")
	r.expect(3, smdScript, "status", "off")("quilt-smd off: not running")
	r.expect(0, smdScript, "start", "t1")("quilt-smd t1: already running")

	// The installed quiltctl sees both through the embedded registrar, and
	// `quiltctl test --once` passes a case against the real daemons.
	cfgDir := r.path("etc/quilt")
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, code := r.run("usr/bin/quiltctl", "--config", cfgDir, "sources")
		if code == 0 && strings.Contains(out, "t1") && strings.Contains(out, "t2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("quiltctl sources did not list t1 and t2:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Registering a new source manager: sm add writes a validated file, the
	// init script starts it, and quiltctl sources lists it once attached.
	r.expect(0, "usr/bin/quiltctl", "--config", cfgDir, "sm", "add", "fresh", "--protocol", "test",
		"--set", "users=2", "--set", "channels=#fresh")("wrote ")
	r.expect(0, smdScript, "start", "fresh")("quilt-smd fresh: started")
	deadline = time.Now().Add(20 * time.Second)
	for {
		out, code := r.run("usr/bin/quiltctl", "--config", cfgDir, "sources")
		if code == 0 && strings.Contains(out, "fresh") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("quiltctl sources did not list the source manager added with sm add:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.expect(0, smdScript, "stop", "fresh")("quilt-smd fresh: stopped")

	write(t, filepath.Join(cfgDir, "tests", "t1_testcase.quilt"), `name t1 round trip
use t1
query servers
assert row state=connected within 10s
act send #test "ops canary ${RUN}"
expect event kind=message text="ops canary ${RUN}"
query members channel=#test
assert rows >= 3
`)
	junit := filepath.Join(t.TempDir(), "j.xml")
	out = r.expect(0, "usr/bin/quiltctl", "--config", cfgDir, "test", "--once", "--junit", junit, "t1")("--- PASS t1 round trip")
	if !strings.HasSuffix(out, "\n1 passed, 0 failed\n") {
		t.Fatalf("quiltctl test output does not end with the summary line:\n%s", out)
	}

	// reload: SIGHUP, same process, logged.
	r.expect(0, qmd, "reload")(fmt.Sprintf("SIGHUP to pid %d", pid))
	r.expect(0, smdScript, "reload", "t1")("quilt-smd t1: reloading")
	waitLog(t, r.path("var/log/quilt/quilt-qmd.log"), "msg=reloaded")
	waitLog(t, r.path("var/log/quilt/quilt-smd-t1.log"), "msg=reloaded")
	if r.pid("quilt-qmd") != pid || !alive(pid) {
		t.Fatal("reload restarted quilt-qmd")
	}

	// One source manager stopped: its status is 3, the overall one too.
	r.expect(0, smdScript, "stop", "t2")("quilt-smd t2: stopped")
	r.expect(3, smdScript, "status", "t2")
	r.expect(3, smdScript, "status")("quilt-smd t1: running", "quilt-smd t2: not running")

	// A crashed daemon leaves its pid file: status 1, start cleans up.
	t1 := r.pid("quilt-smd-t1")
	syscall.Kill(t1, syscall.SIGKILL)
	for alive(t1) {
		time.Sleep(20 * time.Millisecond)
	}
	r.expect(1, smdScript, "status", "t1")("quilt-smd t1: dead, but pid file")
	r.expect(0, smdScript, "start", "t1")("removing stale pid file", "quilt-smd t1: started")
	if n := r.pid("quilt-smd-t1"); n == t1 || !alive(n) {
		t.Fatalf("t1 restarted as %d (was %d)", n, t1)
	}
	r.expect(0, smdScript, "restart", "t1")("quilt-smd t1: stopped", "quilt-smd t1: started")

	// A bad file is refused before anything starts.
	write(t, filepath.Join(smd, "bad.cfg"), "protocol = test\n\n[server main]\nusers = many\n")
	r.expect(6, smdScript, "start", "bad")("quilt-smd bad: invalid configuration", "users")
	r.expect(6, smdScript, "start", "nosuch")("no " + filepath.Join(smd, "nosuch.cfg"))
	os.Remove(filepath.Join(smd, "bad.cfg"))

	r.expect(0, smdScript, "stop")("quilt-smd t1: stopped")
	r.expect(3, smdScript, "status")
	r.expect(0, qmd, "stop")("quilt-qmd: stopped")
	if alive(pid) {
		t.Fatal("quilt-qmd still runs after stop")
	}
	r.expect(3, qmd, "status")("not running")
	if _, err := os.Stat(r.path("run/quilt/quilt-qmd.pid")); !os.IsNotExist(err) {
		t.Fatalf("pid file left after stop: %v", err)
	}
	r.expect(0, qmd, "stop")("quilt-qmd: not running")

	// A pid file naming some other live process is stale, not "running".
	write(t, r.path("run/quilt/quilt-qmd.pid"), fmt.Sprintf("%d\n", os.Getpid()))
	r.expect(1, qmd, "status")("dead, but pid file")
	r.expect(0, qmd, "start")("removing stale pid file", "quilt-qmd: started")
	r.expect(0, qmd, "stop")("quilt-qmd: stopped")
	if !alive(os.Getpid()) {
		t.Fatal("unreachable")
	}

	// make uninstall keeps the configuration.
	mk := exec.Command("make", "--no-print-directory", "uninstall", "DESTDIR="+r.dir, "PREFIX=/usr")
	mk.Dir = r.repo
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	if _, err := os.Stat(r.path("usr/bin/quilt-qmd")); !os.IsNotExist(err) {
		t.Errorf("uninstall left quilt-qmd: %v", err)
	}
	if _, err := os.Stat(r.path("etc/quilt/quilt.cfg")); err != nil {
		t.Errorf("uninstall removed the configuration: %v", err)
	}
}

// A daemon that cannot start is reported with its log, exit 1.
func TestStartFailureShowsTheLog(t *testing.T) {
	r := install(t)
	write(t, r.path("etc/quilt/quilt.cfg"), "[query_master]\nlisten = not-an-address\n[daemon]\npid_dir = "+r.path("run/quilt")+"\n")
	out := r.expect(1, "etc/init.d/quilt-qmd", "start")("quilt-qmd: failed to start (exit code 3)", "last lines of")
	if !strings.Contains(out, "listen") {
		t.Fatalf("the failure does not show the daemon's error:\n%s", out)
	}
	r.expect(3, "etc/init.d/quilt-qmd", "status")
}

func waitLog(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte(want)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no %q:\n%s", path, want, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The installed units pass systemd-analyze verify (their ExecStart pointed
// at the installed binaries, which live under the temporary root).
func TestSystemdUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not found; units not verified")
	}
	r := install(t)
	dir := t.TempDir()
	for _, u := range []string{"quilt-qmd.service", "quilt-smd@.service"} {
		b, err := os.ReadFile(r.path("usr/lib/systemd/system/" + u))
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []string{"Type=notify", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "ExecStart=/usr/bin/"} {
			if !bytes.Contains(b, []byte(w)) {
				t.Errorf("%s lacks %s", u, w)
			}
		}
		b = bytes.ReplaceAll(b, []byte("ExecStart=/usr/bin/"), []byte("ExecStart="+r.path("usr/bin")+"/"))
		name := u
		if u == "quilt-smd@.service" {
			name = "quilt-smd@irc.service" // verify an instance, as systemd would run it
		}
		write(t, filepath.Join(dir, name), string(b))
	}
	cmd := exec.Command(sa, "verify", filepath.Join(dir, "quilt-qmd.service"), filepath.Join(dir, "quilt-smd@irc.service"))
	out, err := cmd.CombinedOutput()
	// Outside a booted systemd (containers) verify may complain about the
	// host; only messages about our units count.
	var ours []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "quilt-") {
			ours = append(ours, l)
		}
	}
	if len(ours) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, strings.Join(ours, "\n"))
	}
	t.Logf("systemd-analyze verify: ok (%v)\n%s", err, out)
}
