package integration

// Helpers for cluster_test.go: the real quilt-qmd and quilt-smd binaries,
// built once per test run, started as processes with per-test configuration
// directories, logs in files whose tails are printed when a test fails.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure" // reading the store's file directly, as an operator would

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
	"github.com/quilt/quilt/quiltcore/testenv"

	quilt "github.com/quilt/quilt/clients/quilt"
)

// binDir holds the binaries built for this run; TestMain removes it.
var binDir string

var build struct {
	once sync.Once
	err  error
	took time.Duration
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "quilt-integration-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: temp dir for binaries:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// binaries builds quilt-qmd and quilt-smd on first use (in-process tests and
// benchmarks do not pay for it) and returns their paths. A failed build
// fails the test: the tree must build, there is nothing to skip.
func binaries(t testing.TB) (qmd, smd string) {
	t.Helper()
	build.once.Do(func() {
		root, err := testenv.RepoRoot()
		if err != nil {
			build.err = err
			return
		}
		gobin, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
		if err != nil {
			build.err = fmt.Errorf("go tool not found to build the daemons: %w", err)
			return
		}
		start := time.Now()
		cmd := exec.Command(gobin, "build", "-tags", "sqlite_fts5", "-o", binDir+string(os.PathSeparator),
			"./querymaster/cmd/quilt-qmd", "./sourcemanagers/cmd/quilt-smd")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod", "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build of quilt-qmd and quilt-smd: %v\n%s", err, out)
			return
		}
		build.took = time.Since(start)
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return filepath.Join(binDir, "quilt-qmd"), filepath.Join(binDir, "quilt-smd")
}

// ------------------------------------------------------------ configuration

// nodeConf is one quilt.cfg. Each quilt-qmd gets its own directory (listen,
// node and data_dir differ); source managers may share one.
type nodeConf struct {
	Registrar string // "embedded" or a Consul agent's host:port
	Listen    string // 127.0.0.1:PORT
	Node      string
	DataDir   string
	TTL       time.Duration // [registrar] ttl (0: 3s)
	LeaderKey string        // "" : the default
}

// smConf is one smd.d/NAME.cfg of the test protocol.
type smConf struct {
	Name    string
	Servers []string
	Rate    float64 // messages per second per server; 0: only `emit N`
	Users   int     // 0: 3
}

// writeConfig writes dir/quilt.cfg, dir/smd.d/*.cfg and an empty patterns
// dir, and returns dir.
func writeConfig(t testing.TB, dir string, n nodeConf, sms ...smConf) string {
	t.Helper()
	ttl := n.TTL
	if ttl == 0 {
		ttl = 3 * time.Second
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[registrar]\naddress = %s\nttl = %s\nderegister_after = 1m\n\n", n.Registrar, ttl)
	fmt.Fprintf(&b, "[query_master]\nlisten = %s\nnode = %s\nsource_timeout = 5s\nact_timeout = 10s\n", n.Listen, n.Node)
	if n.LeaderKey != "" {
		fmt.Fprintf(&b, "leader_key = %s\n", n.LeaderKey)
	}
	fmt.Fprintf(&b, "\n[mongodb]\ndata_dir = %s\n\n", n.DataDir)
	// A short heartbeat so a wedged source manager is noticed within the TTL.
	b.WriteString("[source_managers]\nheartbeat = 500ms\nconnection_cycle = 2s\n\n")
	b.WriteString("[log]\nlevel = debug\n\n")
	fmt.Fprintf(&b, "[daemon]\npid_dir = %s\nshutdown_timeout = 10s\n", filepath.Join(dir, "run"))
	for _, d := range []string{"smd.d", "patterns.d", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "quilt.cfg"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, sm := range sms {
		writeSM(t, dir, sm)
	}
	return dir
}

func writeSM(t testing.TB, dir string, sm smConf) {
	t.Helper()
	users := sm.Users
	if users == 0 {
		users = 3
	}
	var b strings.Builder
	b.WriteString("protocol = test\ndescription = integration test source manager\n")
	for _, s := range sm.Servers {
		fmt.Fprintf(&b, "\n[server %s]\nchannels = #c\nusers = %d\nreconnect_min = 100ms\nreconnect_max = 1s\n", s, users)
		if sm.Rate > 0 {
			fmt.Fprintf(&b, "rate = %g\n", sm.Rate)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "smd.d", sm.Name+".cfg"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func loopback(t testing.TB) string {
	return "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
}

// ---------------------------------------------------------------- processes

// daemonProc is one running quilt-qmd or quilt-smd.
type daemonProc struct {
	t       testing.TB
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error // valid once done is closed
}

var logSeq struct {
	sync.Mutex
	n int
}

// startDaemon starts bin with args; stdout and stderr go to a log file in
// logDir. The process is killed when the test ends, and its log tail is
// printed if the test failed.
func startDaemon(t testing.TB, logDir, name, bin string, args ...string) *daemonProc {
	t.Helper()
	logSeq.Lock()
	logSeq.n++
	n := logSeq.n
	logSeq.Unlock()
	logPath := filepath.Join(logDir, fmt.Sprintf("%02d-%s.log", n, strings.ReplaceAll(name, " ", "-")))
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &daemonProc{t: t, name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			// A stopped (SIGSTOP) process only dies of SIGKILL; wake it
			// anyway so nothing is left frozen if the kill races.
			_ = cmd.Process.Signal(syscall.SIGCONT)
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("---- %s (pid %d) log %s, tail:\n%s", p.name, cmd.Process.Pid, p.logPath, logTail(p.logPath, 40))
		}
	})
	t.Logf("started %s (pid %d), log %s", name, cmd.Process.Pid, logPath)
	return p
}

func (p *daemonProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill9 sends SIGKILL and waits for the process to be gone.
func (p *daemonProc) kill9() {
	p.t.Helper()
	_ = p.cmd.Process.Kill()
	<-p.done
	p.t.Logf("killed -9 %s", p.name)
}

// signal sends sig (SIGSTOP, SIGCONT...).
func (p *daemonProc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

// terminate sends SIGTERM and waits up to timeout for a clean exit.
func (p *daemonProc) terminate(timeout time.Duration) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatalf("%s: SIGTERM: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %s of SIGTERM", p.name, timeout)
	}
	if p.waitErr != nil {
		p.t.Fatalf("%s exited uncleanly after SIGTERM: %v", p.name, p.waitErr)
	}
}

func logTail(path string, n int) string {
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

// logLines returns the lines of the log at path that contain all of subs.
func logLines(t testing.TB, path string, subs ...string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(l, s)
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}

// field is the value after key (up to a space) in line, or "".
func field(line, key string) string {
	_, v, ok := strings.Cut(line, key)
	if !ok {
		return ""
	}
	v, _, _ = strings.Cut(v, " ")
	return v
}

// procsAlive fails the test at once if one of ps died: waiting out a
// timeout for a crashed daemon only hides the crash.
func procsAlive(t testing.TB, ps ...*daemonProc) {
	t.Helper()
	for _, p := range ps {
		if p.exited() {
			t.Fatalf("%s exited unexpectedly: %v", p.name, p.waitErr)
		}
	}
}

// waitFor polls cond every 25ms until it reports true or timeout passes;
// it returns how long that took. cond's text says what it last saw, for
// the failure message. watch lists daemons that must stay up meanwhile.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string), watch ...*daemonProc) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for {
		ok, seen := cond()
		if ok {
			return time.Since(start)
		}
		last = seen
		procsAlive(t, watch...)
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %s waiting for %s; last seen: %s", timeout, what, last)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// ------------------------------------------------------------------ clients

// dialMaster connects the client library straight to one query master.
func dialMaster(t testing.TB, addr string) *quilt.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := quilt.Dial(ctx, quilt.Options{Master: addr, Identity: "integration-test"})
	if err != nil {
		t.Fatalf("dial query master %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// mustConn is a raw gRPC connection, for calls the client library would
// retry or redirect.
func mustConn(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func rpcCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

func qmStatus(c *quilt.Client) (*quiltv1.StatusResponse, error) {
	ctx, cancel := rpcCtx()
	defer cancel()
	return c.Status(ctx)
}

func isLeader(c *quilt.Client) (bool, string) {
	st, err := qmStatus(c)
	if err != nil {
		return false, err.Error()
	}
	return st.Leader, fmt.Sprintf("master %s leader=%v attached=%d", st.MasterId, st.Leader, st.SourcesAttached)
}

// sourcesUp reports whether ListSources shows exactly the named sources
// attached with servers[name] servers each, all CONNECTED.
func sourcesUp(c *quilt.Client, servers map[string]int) (bool, string) {
	ctx, cancel := rpcCtx()
	defer cancel()
	list, err := c.Sources(ctx, false)
	if err != nil {
		return false, err.Error()
	}
	seen := describeSources(list)
	if len(list) != len(servers) {
		return false, seen
	}
	for _, s := range list {
		want, ok := servers[s.Name]
		if !ok || !s.Attached || len(s.Servers) != want {
			return false, seen
		}
		for _, sv := range s.Servers {
			if sv.State != quiltv1.ServerState_SERVER_STATE_CONNECTED {
				return false, seen
			}
		}
	}
	return true, seen
}

func describeSources(list []*quiltv1.SourceInfo) string {
	var parts []string
	for _, s := range list {
		var svs []string
		for _, sv := range s.Servers {
			svs = append(svs, sv.Name+"="+strings.TrimPrefix(sv.State.String(), "SERVER_STATE_"))
		}
		parts = append(parts, fmt.Sprintf("%s(attached=%v health=%q stored=%d servers=[%s])",
			s.Name, s.Attached, s.Health, s.EventsStored, strings.Join(svs, " ")))
	}
	if len(parts) == 0 {
		return "no sources"
	}
	return strings.Join(parts, ", ")
}

// ------------------------------------------------------------------- consul

var consulHTTP = &http.Client{Timeout: 5 * time.Second}

func consulGet(addr, path string, v any) error {
	resp, err := consulHTTP.Get("http://" + addr + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("consul %s: %s: %s", path, resp.Status, body)
	}
	return json.Unmarshal(body, v)
}

// catalogServices is GET /v1/catalog/services: service name → tags.
func catalogServices(addr string) (map[string][]string, error) {
	var m map[string][]string
	return m, consulGet(addr, "/v1/catalog/services", &m)
}

type healthEntry struct {
	Service struct {
		ID      string
		Service string
	}
	Checks []struct {
		CheckID   string
		ServiceID string
		Status    string
	}
}

// serviceHealth returns instance id → aggregated status of its own checks
// (critical beats warning beats passing) from /v1/health/service/NAME,
// and separately the ids Consul itself lists under ?passing.
func serviceHealth(addr, service string) (all map[string]string, passing map[string]bool, err error) {
	var entries, pass []healthEntry
	if err := consulGet(addr, "/v1/health/service/"+service, &entries); err != nil {
		return nil, nil, err
	}
	if err := consulGet(addr, "/v1/health/service/"+service+"?passing", &pass); err != nil {
		return nil, nil, err
	}
	all = map[string]string{}
	for _, e := range entries {
		st := "passing"
		for _, c := range e.Checks {
			if c.ServiceID != e.Service.ID {
				continue // node checks
			}
			switch {
			case c.Status == "critical":
				st = "critical"
			case c.Status == "warning" && st == "passing":
				st = "warning"
			}
		}
		all[e.Service.ID] = st
	}
	passing = map[string]bool{}
	for _, e := range pass {
		passing[e.Service.ID] = true
	}
	return all, passing, nil
}

// instanceState is "passing", "critical", "warning", or "gone", plus what
// was seen, for messages.
func instanceState(addr, service, id string) (string, string) {
	all, passing, err := serviceHealth(addr, service)
	if err != nil {
		return "error", err.Error()
	}
	st, ok := all[id]
	if !ok {
		st = "gone"
	}
	if st == "passing" && !passing[id] {
		// The filtered query must agree with the checks it filters on.
		st = "inconsistent"
	}
	return st, fmt.Sprintf("%s: %v (passing: %v)", service, all, passing)
}

// ------------------------------------------------------------------ store

// storedSession is what the store holds of one test-driver session.
type storedSession struct {
	rows     int               // rows with this session's ids
	distinct int               // distinct ids
	maxSeq   int               // highest N in SESSION:N
	messages int               // MESSAGE rows from users
	lastKind quiltv1.EventKind // kind of the event with seq maxSeq
}

// readStore opens the SQLite file of a stopped query master read-only and
// summarises source's events per session (the runtime's ids are
// SESSION:N, N counting from 1 in emission order, and every event of a
// session, the closing DISCONNECTED included, takes the next N).
func readStore(t testing.TB, dataDir, source string) map[string]*storedSession {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(dataDir, sqlitestore.FileName)+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("SELECT eid, kind, ukey FROM events WHERE source = ?", source)
	if err != nil {
		t.Fatalf("reading the store in %s: %v", dataDir, err)
	}
	defer rows.Close()
	out := map[string]*storedSession{}
	seen := map[string]bool{}
	for rows.Next() {
		var eid, ukey string
		var kind int32
		if err := rows.Scan(&eid, &kind, &ukey); err != nil {
			t.Fatal(err)
		}
		sess, n, ok := strings.Cut(eid, ":")
		seq, err := strconv.Atoi(n)
		if !ok || err != nil {
			t.Fatalf("event id %q of %s is not SESSION:N", eid, source)
		}
		s := out[sess]
		if s == nil {
			s = &storedSession{}
			out[sess] = s
		}
		s.rows++
		if !seen[eid] {
			seen[eid] = true
			s.distinct++
		}
		if seq > s.maxSeq {
			s.maxSeq, s.lastKind = seq, quiltv1.EventKind(kind)
		}
		if quiltv1.EventKind(kind) == quiltv1.EventKind_EVENT_KIND_MESSAGE && strings.HasPrefix(ukey, "user") {
			s.messages++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
