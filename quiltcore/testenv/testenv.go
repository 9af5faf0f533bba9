// Package testenv starts real external servers (Consul, a MongoDB-wire server,
// ngircd) for integration tests of other quilt packages.
//
// Every server is private to one test: it binds 127.0.0.1 on free ports, keeps
// its files and logs in t.TempDir(), and is killed by t.Cleanup. When a test
// fails, the tail of each server's log is printed with the test output.
//
// Binaries are found through environment variables first (the Makefile exports
// them), then in the repository's cache, so `go test` works from any package
// directory once `make tools` has run:
//
//	QUILT_CONSUL_BIN     default <repo>/.cache/bin/consul-1.16.3     (make consul)
//	QUILT_FERRETDB_BIN   default <repo>/.cache/bin/ferretdb-1.24.0   (make ferretdb)
//	QUILT_NGIRCD_BIN     default /usr/sbin/ngircd                    (scripts/ensure-deps.sh)
//	QUILT_TEST_MONGODB_URI  a real MongoDB to use instead of FerretDB
//
// A missing component skips the test with a message naming the command that
// provides it, except when CI=true: there a skip would hide an untested path,
// so the test fails instead.
//
// This package must not import other quilt packages: every package may use it
// in its tests without creating import cycles.
package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Versions of the tools built by mk/tools.mk; the cached binaries carry them in
// their names so a version bump never runs a stale binary.
const (
	ConsulVersion   = "1.16.3"
	FerretDBVersion = "1.24.0"
)

// Names accepted by Require.
const (
	ComponentConsul   = "consul"
	ComponentFerretDB = "ferretdb"
	ComponentMongoDB  = "mongodb" // QUILT_TEST_MONGODB_URI, or FerretDB
	ComponentNGIRCd   = "ngircd"
)

// startTimeout bounds how long a server may take to become ready. Generous:
// CI machines with two cores run many test binaries at once.
const startTimeout = 60 * time.Second

// Require skips the test when component what is not available, or fails it
// when env CI=true. The Consul, FerretDB and NGIRCd starters call it
// themselves; call it directly to skip before expensive setup.
func Require(t testing.TB, what string) {
	t.Helper()
	if err := Available(what); err != nil {
		if IsCI() {
			t.Fatalf("testenv: %s required under CI=true: %v", what, err)
		}
		t.Skipf("testenv: skipping, %s not available: %v", what, err)
	}
}

// Available reports why component what cannot be started, or nil.
func Available(what string) error {
	switch what {
	case ComponentConsul:
		_, err := ConsulBin()
		return err
	case ComponentFerretDB:
		_, err := FerretDBBin()
		return err
	case ComponentMongoDB:
		if os.Getenv("QUILT_TEST_MONGODB_URI") != "" {
			return nil
		}
		_, err := FerretDBBin()
		return err
	case ComponentNGIRCd:
		_, err := NGIRCdBin()
		return err
	}
	return fmt.Errorf("unknown component %q (want %s, %s, %s or %s)",
		what, ComponentConsul, ComponentFerretDB, ComponentMongoDB, ComponentNGIRCd)
}

// IsCI reports whether missing components must fail tests instead of skipping them.
func IsCI() bool { return os.Getenv("CI") == "true" }

// ConsulBin returns the Consul binary to run.
func ConsulBin() (string, error) {
	return findBin("QUILT_CONSUL_BIN", "consul-"+ConsulVersion, "make consul")
}

// FerretDBBin returns the FerretDB wrapper binary to run.
func FerretDBBin() (string, error) {
	return findBin("QUILT_FERRETDB_BIN", "ferretdb-"+FerretDBVersion, "make ferretdb")
}

// NGIRCdBin returns the ngircd binary to run.
func NGIRCdBin() (string, error) {
	if p := os.Getenv("QUILT_NGIRCD_BIN"); p != "" {
		return checkExec(p, "QUILT_NGIRCD_BIN")
	}
	return checkExec("/usr/sbin/ngircd", "scripts/ensure-deps.sh (Debian package ngircd)")
}

func findBin(env, cached, how string) (string, error) {
	if p := os.Getenv(env); p != "" {
		return checkExec(p, env)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("%s unset and %v", env, err)
	}
	return checkExec(filepath.Join(root, ".cache", "bin", cached), "run `"+how+"` or set "+env)
}

func checkExec(path, hint string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w (%s)", path, err, hint)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s: not an executable file (%s)", path, hint)
	}
	return path, nil
}

const modulePath = "github.com/quilt/quilt"

var moduleLine = regexp.MustCompile(`(?m)^module\s+"?` + regexp.QuoteMeta(modulePath) + `"?\s*$`)

// RepoRoot walks up from the working directory (a test's package directory)
// to the quilt module's go.mod. Nested modules such as tools/consul are
// passed over because their module path differs.
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && moduleLine.Match(b) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above %s", modulePath, wd)
		}
		dir = parent
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another
// process may take it before the caller binds it; the starters here retry
// with new ports when a server dies during startup.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freePorts(n int) ([]int, error) {
	// Hold all listeners until every port is chosen so the n ports differ.
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_]+`)

var nameSeq struct {
	sync.Mutex
	n int
}

// DatabaseName returns a database name unique to this test run, valid for
// MongoDB (at most 63 bytes, no '/', '.', ' ', '"', '$'), so tests that share
// one real MongoDB through QUILT_TEST_MONGODB_URI do not see each other's data.
func DatabaseName(t testing.TB) string {
	nameSeq.Lock()
	nameSeq.n++
	n := nameSeq.n
	nameSeq.Unlock()
	suffix := "_" + strconv.Itoa(os.Getpid()) + "_" + strconv.Itoa(n)
	base := strings.Trim(unsafeName.ReplaceAllString(t.Name(), "_"), "_")
	if max := 63 - len(suffix); len(base) > max {
		base = base[:max]
	}
	return base + suffix
}

// ---------------------------------------------------------------- processes

// proc is one child server process with its log file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done is closed
}

// startProc starts bin with args, stdout and stderr appended to logPath. If
// stdout is not nil it also receives the child's stdout.
func startProc(name, dir, logPath string, stdout *lineCatcher, bin string, args ...string) (*proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stderr = lf
	cmd.Stdout = lf
	if stdout != nil {
		stdout.w = lf
		cmd.Stdout = stdout
	}
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, logFile: lf, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop terminates the process: SIGTERM, then SIGKILL if it lingers.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(termSignal)
	select {
	case <-p.done:
		return
	case <-time.After(10 * time.Second):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// failure describes a process that died or did not get ready, with its log tail.
func (p *proc) failure(what string) error {
	state := "still running"
	if p.exited() {
		state = fmt.Sprintf("exited: %v", p.waitErr)
	}
	return fmt.Errorf("%s %s (%s); log %s:\n%s", p.name, what, state, p.logPath, tail(p.logPath, 30))
}

// register arranges for the process to be stopped at the end of the test and
// for its log tail to be printed if the test failed.
func (p *proc) register(t testing.TB) {
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("testenv: %s log %s (tail):\n%s", p.name, p.logPath, tail(p.logPath, 40))
		}
	})
}

// tail returns the last n lines of a file, for failure messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  | " + strings.Join(lines, "\n  | ")
}

// lineCatcher passes a child's stdout through to w and hands over its first
// line, which is how the FerretDB wrapper announces its URI.
type lineCatcher struct {
	w     *os.File
	mu    sync.Mutex
	buf   bytes.Buffer
	sent  bool
	first chan string
}

func newLineCatcher() *lineCatcher { return &lineCatcher{first: make(chan string, 1)} }

func (c *lineCatcher) Write(b []byte) (int, error) {
	c.mu.Lock()
	if !c.sent {
		c.buf.Write(b)
		if line, err := bufio.NewReader(bytes.NewReader(c.buf.Bytes())).ReadString('\n'); err == nil {
			c.first <- strings.TrimSpace(line)
			c.sent = true
		}
	}
	c.mu.Unlock()
	return c.w.Write(b)
}

// waitFor polls ready until it reports true, the process exits, or the
// timeout passes.
func waitFor(p *proc, timeout time.Duration, ready func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for delay := 10 * time.Millisecond; ; {
		ok, err := ready()
		if err != nil {
			return p.failure(err.Error())
		}
		if ok {
			return nil
		}
		if p.exited() {
			return errExited{p.failure("exited during startup")}
		}
		if time.Now().After(deadline) {
			return p.failure(fmt.Sprintf("not ready after %v", timeout))
		}
		time.Sleep(delay)
		if delay < 200*time.Millisecond {
			delay *= 2
		}
	}
}

// errExited marks a startup failure worth retrying on other ports: the
// usual cause is a port taken between FreePort and the server's bind.
type errExited struct{ error }

func (e errExited) Unwrap() error { return e.error }

func retryable(err error) bool {
	var e errExited
	return errors.As(err, &e)
}
