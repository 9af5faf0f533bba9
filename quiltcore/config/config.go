// Package config locates and parses quilt's configuration: the cluster-wide
// quilt.cfg and one smd.d/NAME.cfg file per source manager.
//
// The configuration directory is the daemon's -config flag, else
// $QUILT_CFG_DIR, else /etc/quilt (see Dir). Load reads DIR/quilt.cfg into a
// typed Config in which every key has its documented default (the shipped
// etc/quilt/quilt.cfg lists them all). SourceManagers and LoadSourceManager
// read smd.d.
//
// Values are taken literally with one exception: $QUILT_CFG and
// ${QUILT_CFG} expand to the configuration directory. No other $VAR is
// expanded, so a password such as "pa$word" stays as written; to take a
// secret from the environment use `password_env = VARNAME`. Relative paths
// resolve against the directory of the file that holds them (for quilt.cfg,
// the configuration directory).
//
// Every problem is reported as an *Error naming file, line, section and key;
// a load that finds several problems returns them all as Errors.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

const (
	// EnvDir names the environment variable that locates the configuration
	// directory when no -config flag is given.
	EnvDir = "QUILT_CFG_DIR"
	// DefaultDir is used when neither the flag nor EnvDir is set.
	DefaultDir = "/etc/quilt"
	// FileName is the main configuration file inside the directory.
	FileName = "quilt.cfg"
	// Embedded is the [registrar] address value that selects the in-process
	// registrar instead of a Consul agent.
	Embedded = "embedded"
)

// Config is the parsed quilt.cfg. Paths are absolute; durations are
// parsed. A Config is never modified after Load and may be shared.
type Config struct {
	// Dir is the absolute configuration directory ($QUILT_CFG).
	Dir string
	// File is the path of quilt.cfg, which may not exist (all defaults).
	File string

	Registrar   RegistrarConfig
	QueryMaster QueryMasterConfig
	MongoDB     MongoDBConfig
	// Managers is the [source_managers] section.
	Managers SourceManagersConfig
	Testing  TestingConfig
	Patterns PatternsConfig
	Log      LogConfig
	Daemon   DaemonConfig

	// raw backs GetValue. It sits behind a pointer because it may hold
	// literal secrets and fmt prints unexported fields without calling
	// their methods; a pointer below the top level prints as an address.
	raw *rawValues
}

type rawValues struct {
	m map[string]map[string]string
}

// RegistrarConfig is [registrar]: where daemons register and find each
// other.
type RegistrarConfig struct {
	// Address is "embedded" or host:port of a Consul agent.
	Address string
	// Embedded is true when Address is "embedded" or was left empty.
	Embedded bool
	// Token is the Consul ACL token (token, token_file or token_env).
	Token           Secret
	Datacenter      string
	TLS             bool
	TLSCAFile       string
	TLSCertFile     string
	TLSKeyFile      string
	TLSSkipVerify   bool
	TTL             time.Duration // TTL of health checks
	DeregisterAfter time.Duration // critical services are removed after this
}

// QueryMasterConfig is [query_master].
type QueryMasterConfig struct {
	Listen string
	// Advertise is the address registered for others to dial; defaults to
	// Listen.
	Advertise        string
	ServiceName      string
	LeaderKey        string
	Node             string        // defaults to os.Hostname()
	SourceTimeout    time.Duration // live-query deadline per source
	SubscriberBuffer int
	ActTimeout       time.Duration
}

// MongoDBConfig is [mongodb]: the event store.
type MongoDBConfig struct {
	// URI of MongoDB; empty selects the embedded SQLite store in DataDir.
	// It may embed credentials: log RedactedURI, never URI.
	URI      string
	Embedded bool
	Database string
	DataDir  string
	Username string
	// Password comes from password, password_file or password_env.
	Password           Secret
	Retention          time.Duration
	ProcessedRetention time.Duration
	Timeout            time.Duration
}

// RedactedURI is URI with any password replaced, for logs.
func (m MongoDBConfig) RedactedURI() string {
	u, err := url.Parse(m.URI)
	if err != nil {
		if m.URI == "" {
			return ""
		}
		return redacted
	}
	return u.Redacted()
}

// SourceManagersConfig is [source_managers].
type SourceManagersConfig struct {
	ConfigDir string
	// BufferEvents is the most unacknowledged events kept per source manager.
	BufferEvents int
	BatchSize    int
	BatchDelay   time.Duration
	// MaxInFlight is the most batches sent and not yet acknowledged.
	MaxInFlight     int
	ConnectionCycle time.Duration // default for smd.d files
	Heartbeat       time.Duration
}

// TestingConfig is [testing].
type TestingConfig struct {
	Includes []string      // globs of test case files inside Dir
	Sleep    time.Duration // > 0: repeat the tests after sleeping this long
	Dir      string
}

// PatternsConfig is [patterns].
type PatternsConfig struct {
	Dir string
}

// LogConfig is [log].
type LogConfig struct {
	Level  string // debug, info, warn or error
	Format string // text or json
	File   string // "" means stderr
}

// SlogLevel converts Level.
func (l LogConfig) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// DaemonConfig is [daemon].
type DaemonConfig struct {
	PidDir          string
	ShutdownTimeout time.Duration
}

// Dir returns the configuration directory: flagValue when not empty (the
// daemons' -config flag), else $QUILT_CFG_DIR when not empty, else
// /etc/quilt.
func Dir(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := os.Getenv(EnvDir); v != "" {
		return v
	}
	return DefaultDir
}

// Load reads DIR/quilt.cfg. A missing quilt.cfg gives the defaults; a
// missing or unusable dir is an error. On failure the error is Errors (or a
// single *Error) listing every problem, and the Config is nil.
func Load(dir string) (*Config, error) {
	c, errs := load(dir)
	if err := errs.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// load always returns a usable Config (defaults where a value was bad) so
// Check can go on to smd.d after problems in quilt.cfg.
func load(dir string) (*Config, Errors) {
	var errs Errors
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = filepath.Clean(dir)
	}
	file := filepath.Join(abs, FileName)
	st, err := os.Stat(abs)
	switch {
	case err != nil:
		errs = append(errs, &Error{File: dir, Msg: "configuration directory: " + osErrText(err)})
	case !st.IsDir():
		errs = append(errs, &Error{File: dir, Msg: "configuration directory: not a directory"})
	}
	data, err := os.ReadFile(file)
	doc := &document{file: file, sections: []*rawSection{{}}}
	switch {
	case err == nil:
		d, perrs := parseDocument(file, data)
		errs = append(errs, perrs...)
		if d != nil {
			doc = d
		}
	case errors.Is(err, fs.ErrNotExist):
		// All defaults.
	case len(errs) == 0:
		errs = append(errs, &Error{File: file, Msg: "cannot read: " + osErrText(err)})
	}
	c := &Config{Dir: abs, File: file}
	c.fill(doc, &errs)
	return c, errs
}

// sectionNames lists the quilt.cfg sections in the order the shipped file
// documents them.
var sectionNames = []string{"registrar", "query_master", "mongodb", "source_managers", "testing", "patterns", "log", "daemon"}

func (c *Config) fill(doc *document, errs *Errors) {
	c.raw = &rawValues{m: map[string]map[string]string{}}
	secs := map[string]*section{}
	seen := map[string]int{}
	for _, rs := range doc.sections {
		if rs.name == "" {
			for _, k := range rs.keys {
				*errs = append(*errs, &Error{File: doc.file, Line: k.line, Key: k.name,
					Msg: "key outside any section; quilt.cfg keys belong to a [section]"})
			}
			continue
		}
		if !slices.Contains(sectionNames, rs.name) {
			msg := fmt.Sprintf("unknown section (known: %s)", strings.Join(sectionNames, ", "))
			if g := suggest(rs.name, sectionNames); g != "" {
				msg = fmt.Sprintf("unknown section, did you mean [%s]? (known: %s)", g, strings.Join(sectionNames, ", "))
			}
			*errs = append(*errs, &Error{File: doc.file, Line: rs.line, Section: rs.name, Msg: msg})
			continue
		}
		if first, dup := seen[rs.name]; dup {
			*errs = append(*errs, &Error{File: doc.file, Line: rs.line, Section: rs.name,
				Msg: fmt.Sprintf("duplicate section (first at line %d)", first)})
			continue
		}
		seen[rs.name] = rs.line
		s := newSection(doc.file, rs, c.Dir, c.Dir, errs)
		secs[rs.name] = s
		raw := map[string]string{}
		for k, v := range s.vals {
			if !secretKeys[k] {
				v = expandCfg(v, c.Dir)
			}
			raw[k] = v
		}
		c.raw.m[rs.name] = raw
	}
	get := func(name string) *section {
		if s, ok := secs[name]; ok {
			return s
		}
		return newSection(doc.file, &rawSection{name: name}, c.Dir, c.Dir, errs)
	}

	s := get("registrar")
	r := &c.Registrar
	r.Address = s.str("address", Embedded)
	if r.Address == "" || r.Address == Embedded {
		r.Address, r.Embedded = Embedded, true
	} else {
		r.Address = s.hostPort("address", Embedded, false)
		r.Embedded = r.Address == Embedded
	}
	r.Token = s.secret("token", false)
	r.Datacenter = s.str("datacenter", "")
	r.TLS = s.boolean("tls", false)
	r.TLSCAFile = s.path("tls_ca_file", "")
	r.TLSCertFile = s.path("tls_cert_file", "")
	r.TLSKeyFile = s.path("tls_key_file", "")
	if (r.TLSCertFile == "") != (r.TLSKeyFile == "") {
		s.fail("tls_key_file", "tls_cert_file and tls_key_file must be set together")
	}
	r.TLSSkipVerify = s.boolean("tls_skip_verify", false)
	r.TTL = s.duration("ttl", 15*time.Second, time.Second)
	r.DeregisterAfter = s.duration("deregister_after", time.Minute, time.Minute)
	s.finish()

	s = get("query_master")
	q := &c.QueryMaster
	q.Listen = s.hostPort("listen", "127.0.0.1:7420", true)
	q.Advertise = s.hostPort("advertise", "", false)
	if q.Advertise == "" {
		q.Advertise = q.Listen
	}
	q.ServiceName = s.str("service_name", "quilt-qmd")
	q.LeaderKey = s.str("leader_key", "quilt/qmd/leader")
	q.Node = s.str("node", "")
	if q.Node == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			q.Node = h
		} else {
			q.Node = "localhost"
		}
	}
	q.SourceTimeout = s.duration("source_timeout", 2*time.Second, time.Millisecond)
	q.SubscriberBuffer = s.integer("subscriber_buffer", 4096, 1, 1<<24)
	q.ActTimeout = s.duration("act_timeout", 10*time.Second, time.Millisecond)
	s.finish()

	s = get("mongodb")
	m := &c.MongoDB
	m.URI = s.str("uri", "")
	m.Embedded = m.URI == ""
	if !m.Embedded && !strings.HasPrefix(m.URI, "mongodb://") && !strings.HasPrefix(m.URI, "mongodb+srv://") {
		// Do not echo the URI: it may carry a password.
		s.fail("uri", "invalid URI: must start with mongodb:// or mongodb+srv:// (or be empty for the embedded store)")
	}
	m.Database = s.str("database", "quilt")
	m.DataDir = s.path("data_dir", "/var/lib/quilt")
	m.Username = s.str("username", "")
	m.Password = s.secret("password", false)
	m.Retention = s.duration("retention", 720*time.Hour, 0)
	m.ProcessedRetention = s.duration("processed_retention", 720*time.Hour, 0)
	m.Timeout = s.duration("timeout", 10*time.Second, time.Millisecond)
	s.finish()

	s = get("source_managers")
	sm := &c.Managers
	sm.ConfigDir = s.path("config_dir", "$QUILT_CFG/smd.d")
	sm.BufferEvents = s.integer("buffer_events", 100000, 1, 1<<30)
	sm.BatchSize = s.integer("batch_size", 512, 1, 1<<20)
	sm.BatchDelay = s.duration("batch_delay", 5*time.Millisecond, 0)
	sm.MaxInFlight = s.integer("max_in_flight", 4, 1, 1024)
	sm.ConnectionCycle = s.duration("connection_cycle", 120*time.Second, time.Second)
	sm.Heartbeat = s.duration("heartbeat", 5*time.Second, 100*time.Millisecond)
	s.finish()

	s = get("testing")
	t := &c.Testing
	t.Includes = s.list("includes", []string{"*_testcase.quilt"})
	for _, g := range t.Includes {
		if _, err := filepath.Match(g, ""); err != nil {
			s.fail("includes", "invalid glob %q: %v", g, err)
		}
	}
	t.Sleep = s.seconds("sleep", 0)
	t.Dir = s.path("dir", "$QUILT_CFG/tests")
	s.finish()

	s = get("patterns")
	c.Patterns.Dir = s.path("dir", "$QUILT_CFG/patterns.d")
	s.finish()

	s = get("log")
	c.Log.Level = s.enum("level", "info", "debug", "info", "warn", "error")
	c.Log.Format = s.enum("format", "text", "text", "json")
	c.Log.File = s.path("file", "")
	s.finish()

	s = get("daemon")
	c.Daemon.PidDir = s.path("pid_dir", "/run/quilt")
	c.Daemon.ShutdownTimeout = s.duration("shutdown_timeout", 10*time.Second, 0)
	s.finish()
}

// GetValue returns the value of name in section as written in quilt.cfg
// (with $QUILT_CFG expanded, relative paths not resolved, secrets as plain
// strings: prefer the typed Secret fields), or def when the
// file does not set it. The built-in defaults are not consulted: it answers
// "what did the operator write" (seed 003 QuiltConfig.GetValue); use the
// typed fields for effective values.
func (c *Config) GetValue(section, name, def string) string {
	if c.raw == nil {
		return def
	}
	if v, ok := c.raw.m[section][name]; ok {
		return v
	}
	return def
}
