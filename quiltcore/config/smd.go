package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Protocol names the driver a source manager runs.
type Protocol string

// The protocols an smd.d file may name. ProtocolTest is the scripted
// in-process driver used by tests and benchmarks.
const (
	ProtocolIRC    Protocol = "irc"
	ProtocolXMPP   Protocol = "xmpp"
	ProtocolMatrix Protocol = "matrix"
	ProtocolIMAP   Protocol = "imap"
	ProtocolBZFlag Protocol = "bzflag"
	ProtocolTest   Protocol = "test"
)

// Protocols lists every valid Protocol.
var Protocols = []Protocol{ProtocolIRC, ProtocolXMPP, ProtocolMatrix, ProtocolIMAP, ProtocolBZFlag, ProtocolTest}

// BZFlagTeams are the valid values of a bzflag server's team key.
var BZFlagTeams = []string{"observer", "rogue", "red", "green", "blue", "purple", "hunter", "hunted", "rabbit"}

var (
	managerNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	serverNameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	matrixUserRE  = regexp.MustCompile(`^@[^:\s]+:\S+$`)
)

// SourceManager is one parsed smd.d/NAME.cfg.
type SourceManager struct {
	Name            string // file name without .cfg
	Path            string // absolute path of the file
	Protocol        Protocol
	Enabled         bool
	ConnectionCycle time.Duration
	Description     string
	Servers         []Server // in file order; at least one
}

// Channel is one entry of a server's channels list: `NAME` or `NAME KEY`.
// For IMAP it is a mailbox.
type Channel struct {
	Name string
	Key  Secret // IRC channel key / MUC password; unset when not given
}

// Server is one [server NAME] section: the settings every protocol shares
// plus exactly one non-nil protocol block matching SourceManager.Protocol.
type Server struct {
	Name              string
	Line              int // line of the [server NAME] header, for messages
	Enabled           bool
	Throttle          time.Duration // minimum spacing of outgoing lines/messages
	ThrottleBurst     int           // lines allowed before Throttle applies
	ReconnectMin      time.Duration
	ReconnectMax      time.Duration
	ReconnectFactor   float64
	ReconnectAttempts int // 0 = retry forever
	ConnectTimeout    time.Duration
	Channels          []Channel

	IRC    *IRCSettings
	XMPP   *XMPPSettings
	Matrix *MatrixSettings
	IMAP   *IMAPSettings
	BZFlag *BZFlagSettings
	Test   *TestSettings
}

// IRCSettings are the irc-only keys of a server section.
type IRCSettings struct {
	Host         string
	Port         int // 6697 with TLS, else 6667
	TLS          bool
	TLSVerify    bool
	Nick         string
	AltNicks     []string
	User         string // defaults to Nick
	Realname     string
	Password     Secret // server PASS
	SASLUser     string // defaults to Nick when SASLPassword is set
	SASLPassword Secret
	PingInterval time.Duration
	PingTimeout  time.Duration
	LineLimit    int
}

// XMPPSettings are the xmpp-only keys. MUC rooms are Server.Channels.
type XMPPSettings struct {
	JID       string
	Password  Secret
	Host      string // defaults to the JID's domain
	Port      int
	TLS       bool // STARTTLS
	TLSVerify bool
	Nick      string // MUC nick; defaults to the JID's localpart
	Resource  string
	// PingInterval: send an XMPP ping (XEP-0199) to the server this
	// often; PingTimeout: reconnect when one gets no answer this long.
	PingInterval time.Duration
	PingTimeout  time.Duration
}

// MatrixSettings are the matrix-only keys. Rooms (ids or aliases) are
// Server.Channels. At least one of Password and AccessToken is set.
type MatrixSettings struct {
	Homeserver      string
	UserID          string
	Password        Secret
	AccessToken     Secret
	DeviceID        string
	AutoJoinInvites bool
	SyncTimeout     time.Duration
}

// IMAPSettings are the imap-only keys. IMAP servers take `mailboxes`
// instead of `channels`; Server.Channels mirrors Mailboxes.
type IMAPSettings struct {
	Host         string
	Port         int // 993 with TLS, else 143
	TLS          bool
	TLSVerify    bool
	Username     string
	Password     Secret
	Mailboxes    []string
	Idle         bool
	PollInterval time.Duration
}

// BZFlagSettings are the bzflag-only keys.
type BZFlagSettings struct {
	Host     string
	Port     int
	Callsign string
	Password Secret
	Team     string // one of BZFlagTeams
	Motto    string
}

// TestSettings configure the scripted in-process test driver.
type TestSettings struct {
	Users  int
	Rate   float64 // events per second; 0 = only on demand
	Script string  // absolute path, or ""
}

type smdOptions struct {
	cfgDir string        // $QUILT_CFG
	cycle  time.Duration // default connection_cycle
}

// LoadSourceManager parses one smd.d file on its own, with the built-in
// defaults ($QUILT_CFG is Dir(""), connection_cycle 120s). Daemons that
// have loaded quilt.cfg use (*Config).LoadSourceManager so its
// [source_managers] defaults apply. Secrets are resolved; a secret file or
// environment variable that is missing is an error.
func LoadSourceManager(path string) (*SourceManager, error) {
	cfgDir, err := filepath.Abs(Dir(""))
	if err != nil {
		cfgDir = Dir("")
	}
	sm, errs := loadSourceManager(path, smdOptions{cfgDir: cfgDir, cycle: 120 * time.Second})
	if err := errs.err(); err != nil {
		return nil, err
	}
	return sm, nil
}

// CheckSourceManagerFile validates one smd.d file for `quiltctl sm check`
// and `quilt-smd -check`: exactly what LoadSourceManager does, returning
// every problem at once.
func CheckSourceManagerFile(path string) (*SourceManager, error) {
	return LoadSourceManager(path)
}

// LoadSourceManager parses ConfigDir/NAME.cfg with this Config's defaults.
func (c *Config) LoadSourceManager(name string) (*SourceManager, error) {
	sm, errs := c.loadSourceManager(name)
	if err := errs.err(); err != nil {
		return nil, err
	}
	return sm, nil
}

func (c *Config) loadSourceManager(name string) (*SourceManager, Errors) {
	return loadSourceManager(filepath.Join(c.Managers.ConfigDir, name+".cfg"),
		smdOptions{cfgDir: c.Dir, cycle: c.Managers.ConnectionCycle})
}

// LoadSourceManagers parses every file SourceManagers lists, reporting the
// problems of all of them together.
func (c *Config) LoadSourceManagers() ([]*SourceManager, error) {
	names, err := c.SourceManagers()
	if err != nil {
		return nil, err
	}
	var out []*SourceManager
	var errs Errors
	for _, n := range names {
		sm, e := c.loadSourceManager(n)
		errs = append(errs, e...)
		out = append(out, sm)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	return out, nil
}

// SourceManagers lists the *.cfg files of [source_managers] config_dir, as
// sorted names without ".cfg". A name that is not ^[a-z0-9][a-z0-9_-]*$ is
// an error, as is a missing directory.
func (c *Config) SourceManagers() ([]string, error) {
	dir := c.Managers.ConfigDir
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, &Error{File: dir, Msg: "source manager directory ([source_managers] config_dir): " + osErrText(err)}
	}
	var names []string
	var errs Errors
	for _, e := range entries {
		n, ok := strings.CutSuffix(e.Name(), ".cfg")
		if !ok || e.IsDir() {
			continue
		}
		if !managerNameRE.MatchString(n) {
			errs = append(errs, &Error{File: filepath.Join(dir, e.Name()),
				Msg: fmt.Sprintf("invalid source manager name %q: must match %s", n, managerNameRE)})
			continue
		}
		names = append(names, n)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

func loadSourceManager(path string, opt smdOptions) (*SourceManager, Errors) {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	name := strings.TrimSuffix(filepath.Base(abs), ".cfg")
	var errs Errors
	if !managerNameRE.MatchString(name) {
		errs = append(errs, &Error{File: path,
			Msg: fmt.Sprintf("invalid source manager name %q (from the file name): must match %s", name, managerNameRE)})
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, append(errs, &Error{File: path, Msg: "cannot read: " + osErrText(err)})
	}
	doc, perrs := parseDocument(path, data)
	if len(perrs) > 0 {
		return nil, append(errs, perrs...)
	}
	baseDir := filepath.Dir(abs)
	sm := &SourceManager{Name: name, Path: abs}

	top := newSection(path, doc.sections[0], opt.cfgDir, baseDir, &errs)
	protocols := make([]string, len(Protocols))
	for i, p := range Protocols {
		protocols[i] = string(p)
	}
	if top.has("protocol") {
		sm.Protocol = Protocol(top.enum("protocol", "", protocols...))
	} else {
		top.fail("protocol", "required: one of %s", strings.Join(protocols, ", "))
	}
	sm.Enabled = top.boolean("enabled", true)
	sm.ConnectionCycle = top.duration("connection_cycle", opt.cycle, time.Second)
	sm.Description = top.str("description", "")
	top.finish()

	seen := map[string]int{}
	for _, rs := range doc.sections[1:] {
		f := strings.Fields(rs.name)
		if len(f) == 0 || f[0] != "server" {
			msg := "unknown section: want [server NAME]"
			if len(f) > 0 && suggest(f[0], []string{"server"}) != "" {
				msg += ", did you mean [server " + strings.Join(f[1:], " ") + "]?"
			}
			errs = append(errs, &Error{File: path, Line: rs.line, Section: rs.name, Msg: msg})
			continue
		}
		if len(f) != 2 || !serverNameRE.MatchString(f[1]) {
			errs = append(errs, &Error{File: path, Line: rs.line, Section: rs.name,
				Msg: fmt.Sprintf("invalid server section: want [server NAME] with NAME matching %s", serverNameRE)})
			continue
		}
		rs.name = "server " + f[1]
		if first, dup := seen[f[1]]; dup {
			errs = append(errs, &Error{File: path, Line: rs.line, Section: rs.name,
				Msg: fmt.Sprintf("duplicate server name %q (lines %d and %d)", f[1], first, rs.line)})
		} else {
			seen[f[1]] = rs.line
		}
		s := newSection(path, rs, opt.cfgDir, baseDir, &errs)
		srv := parseServer(s, sm.Protocol)
		srv.Name, srv.Line = f[1], rs.line
		sm.Servers = append(sm.Servers, srv)
	}
	if len(sm.Servers) == 0 && len(seen) == 0 {
		errs = append(errs, &Error{File: path, Msg: "no [server NAME] section: at least one server is required"})
	}
	return sm, errs
}

func parseServer(s *section, proto Protocol) Server {
	irc := proto == ProtocolIRC
	srv := Server{Enabled: s.boolean("enabled", true)}
	defThrottle, defBurst := time.Duration(0), 0
	if irc {
		defThrottle, defBurst = 500*time.Millisecond, 4
	}
	srv.Throttle = s.duration("throttle", defThrottle, 0)
	srv.ThrottleBurst = s.integer("throttle_burst", defBurst, 0, 1<<20)
	srv.ReconnectMin = s.duration("reconnect_min", 2*time.Second, 0)
	srv.ReconnectMax = s.duration("reconnect_max", 5*time.Minute, 0)
	if srv.ReconnectMax < srv.ReconnectMin {
		s.fail("reconnect_max", "reconnect_max %s is less than reconnect_min %s", srv.ReconnectMax, srv.ReconnectMin)
	}
	srv.ReconnectFactor = s.float("reconnect_factor", 2.0, 1.0)
	srv.ReconnectAttempts = s.integer("reconnect_attempts", 0, 0, 1<<30)
	srv.ConnectTimeout = s.duration("connect_timeout", 20*time.Second, time.Millisecond)
	if proto != ProtocolIMAP {
		srv.Channels = parseChannels(s, proto)
	}

	switch proto {
	case ProtocolIRC:
		srv.IRC = parseIRC(s)
	case ProtocolXMPP:
		srv.XMPP = parseXMPP(s)
	case ProtocolMatrix:
		srv.Matrix = parseMatrix(s)
	case ProtocolIMAP:
		srv.IMAP = parseIMAP(s)
		for _, m := range srv.IMAP.Mailboxes {
			srv.Channels = append(srv.Channels, Channel{Name: m})
		}
	case ProtocolBZFlag:
		srv.BZFlag = parseBZFlag(s)
	case ProtocolTest:
		srv.Test = parseTest(s)
	default:
		// The protocol is missing or invalid (already reported): without a
		// schema, unknown-key errors would only be noise.
		return srv
	}
	s.finish()
	return srv
}

func parseChannels(s *section, proto Protocol) []Channel {
	var out []Channel
	seen := map[string]bool{}
	for _, e := range s.list("channels", nil) {
		f := strings.Fields(e)
		if len(f) > 2 {
			// The entry is not echoed: its second word may be a key.
			s.fail("channels", "channel %q: want NAME or NAME KEY", f[0])
			continue
		}
		ch := Channel{Name: f[0]}
		if len(f) == 2 {
			ch.Key = NewSecret(f[1])
		}
		var bad string
		switch proto {
		case ProtocolIRC:
			if !strings.ContainsAny(ch.Name[:1], "#&+!") {
				bad = "IRC channel names start with #, &, + or !"
			}
		case ProtocolXMPP:
			if !strings.Contains(ch.Name, "@") {
				bad = "want a MUC room JID such as room@conference.example.org"
			}
		case ProtocolMatrix:
			switch {
			case !strings.ContainsAny(ch.Name[:1], "!#") || !strings.Contains(ch.Name, ":"):
				bad = "want a room id (!id:server) or alias (#alias:server)"
			case ch.Key.IsSet():
				bad = "matrix rooms take no key"
			}
		}
		if bad != "" {
			s.fail("channels", "channel %q: %s", ch.Name, bad)
			continue
		}
		if seen[ch.Name] {
			s.fail("channels", "channel %q listed twice", ch.Name)
			continue
		}
		seen[ch.Name] = true
		out = append(out, ch)
	}
	return out
}

func parseIRC(s *section) *IRCSettings {
	c := &IRCSettings{}
	c.Host = s.required("host", "IRC server host name or address")
	c.TLS = s.boolean("tls", true)
	c.Port = s.port("port", map[bool]int{true: 6697, false: 6667}[c.TLS])
	c.TLSVerify = s.boolean("tls_verify", true)
	c.Nick = s.required("nick", "IRC nickname")
	c.AltNicks = s.list("alt_nicks", nil)
	c.User = s.str("user", c.Nick)
	c.Realname = s.str("realname", "quilt")
	c.Password = s.secret("password", false)
	c.SASLUser = s.str("sasl_user", "")
	c.SASLPassword = s.secret("sasl_password", false)
	if c.SASLUser != "" && !c.SASLPassword.IsSet() && !s.has("sasl_password_file") && !s.has("sasl_password_env") {
		s.fail("sasl_user", "sasl_user is set but sasl_password is not")
	}
	if c.SASLPassword.IsSet() && c.SASLUser == "" {
		c.SASLUser = c.Nick
	}
	c.PingInterval = s.duration("ping_interval", 60*time.Second, time.Second)
	c.PingTimeout = s.duration("ping_timeout", 120*time.Second, time.Second)
	c.LineLimit = s.integer("line_limit", 512, 64, 1<<16)
	for _, k := range []string{"nick", "user"} {
		if v := s.str(k, ""); strings.ContainsAny(v, " ,\r\n") {
			s.fail(k, "%q must not contain spaces or commas", v)
		}
	}
	return c
}

func parseXMPP(s *section) *XMPPSettings {
	c := &XMPPSettings{}
	c.JID = s.required("jid", "account JID (user@domain)")
	local, domain, ok := strings.Cut(c.JID, "@")
	if c.JID != "" && (!ok || local == "" || domain == "" || strings.ContainsAny(c.JID, "/ ")) {
		s.fail("jid", "invalid JID %q: want user@domain (the resource is the separate resource key)", c.JID)
	}
	c.Password = s.secret("password", true)
	c.Host = s.str("host", domain)
	c.Port = s.port("port", 5222)
	c.TLS = s.boolean("tls", true)
	c.TLSVerify = s.boolean("tls_verify", true)
	c.Nick = s.str("nick", local)
	c.Resource = s.str("resource", "quilt")
	c.PingInterval = s.duration("ping_interval", 60*time.Second, time.Second)
	c.PingTimeout = s.duration("ping_timeout", 30*time.Second, time.Second)
	return c
}

func parseMatrix(s *section) *MatrixSettings {
	c := &MatrixSettings{}
	c.Homeserver = s.httpURL("homeserver")
	c.UserID = s.required("user_id", "Matrix user id (@user:server)")
	if c.UserID != "" && !matrixUserRE.MatchString(c.UserID) {
		s.fail("user_id", "invalid user id %q: want @user:server", c.UserID)
	}
	c.Password = s.secret("password", false)
	c.AccessToken = s.secret("access_token", false)
	if !c.Password.IsSet() && !c.AccessToken.IsSet() && !hasAny(s, "password", "access_token") {
		s.fail("password", "required: one of password or access_token (each may be given as X, X_file or X_env)")
	}
	c.DeviceID = s.str("device_id", "")
	c.AutoJoinInvites = s.boolean("auto_join_invites", false)
	c.SyncTimeout = s.duration("sync_timeout", 30*time.Second, 0)
	return c
}

// hasAny reports whether any form of the given secrets is present, so a
// secret that failed to resolve is not also reported as missing.
func hasAny(s *section, secrets ...string) bool {
	for _, k := range secrets {
		for _, f := range []string{k, k + "_file", k + "_env"} {
			if v, ok := s.vals[f]; ok && v != "" {
				return true
			}
		}
	}
	return false
}

func parseIMAP(s *section) *IMAPSettings {
	c := &IMAPSettings{}
	c.Host = s.required("host", "IMAP server host name or address")
	c.TLS = s.boolean("tls", true)
	c.Port = s.port("port", map[bool]int{true: 993, false: 143}[c.TLS])
	c.TLSVerify = s.boolean("tls_verify", true)
	c.Username = s.required("username", "IMAP login name")
	c.Password = s.secret("password", true)
	c.Mailboxes = s.list("mailboxes", []string{"INBOX"})
	if len(c.Mailboxes) == 0 {
		s.fail("mailboxes", "at least one mailbox is required")
	}
	c.Idle = s.boolean("idle", true)
	c.PollInterval = s.duration("poll_interval", 60*time.Second, time.Second)
	return c
}

func parseBZFlag(s *section) *BZFlagSettings {
	c := &BZFlagSettings{}
	c.Host = s.required("host", "bzfs host name or address")
	c.Port = s.port("port", 5154)
	c.Callsign = s.required("callsign", "player callsign")
	c.Password = s.secret("password", false)
	c.Team = s.enum("team", "observer", BZFlagTeams...)
	c.Motto = s.str("motto", "")
	return c
}

func parseTest(s *section) *TestSettings {
	c := &TestSettings{}
	c.Users = s.integer("users", 10, 0, 1<<20)
	c.Rate = s.float("rate", 0, 0)
	c.Script = s.path("script", "")
	if c.Script != "" {
		if _, err := os.Stat(c.Script); err != nil {
			s.fail("script", "script %s: %s", c.Script, osErrText(err))
		}
	}
	return c
}

// Check validates quilt.cfg in dir and every smd.d file, returning all
// problems together (for `quiltctl config check` and daemons' -check). A
// missing smd.d is accepted when config_dir was left at its default, since
// a host running only quilt-qmd needs none.
func Check(dir string) error {
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		_, err := Load(dir)
		return err
	}
	c, errs := load(dir)
	names, err := c.SourceManagers()
	if err != nil {
		_, explicit := c.raw.m["source_managers"]["config_dir"]
		var pe *Error
		if explicit || !errors.As(err, &pe) || !isNotExist(c.Managers.ConfigDir) {
			errs = errs.appendErr(err)
		}
	}
	for _, n := range names {
		_, e := c.loadSourceManager(n)
		errs = append(errs, e...)
	}
	return errs.err()
}

func isNotExist(path string) bool {
	_, err := os.Stat(path)
	return errors.Is(err, fs.ErrNotExist)
}
