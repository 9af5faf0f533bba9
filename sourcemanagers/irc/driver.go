package irc

import (
	"crypto/tls"
	"net"
	"strconv"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/version"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// Driver serves `protocol = irc`.
type Driver struct{}

var _ runtime.StreamDriver = Driver{}

func (Driver) Protocol() string { return string(config.ProtocolIRC) }

// Addresses is the one host:port of the server section.
func (Driver) Addresses(s *config.Server) []string {
	return []string{net.JoinHostPort(s.IRC.Host, strconv.Itoa(s.IRC.Port))}
}

// TLSConfig verifies certificates unless the server section opts out
// (tls_verify = false), which the runtime logs loudly at connect.
func (Driver) TLSConfig(s *config.Server) *tls.Config {
	if !s.IRC.TLS {
		return nil
	}
	return &tls.Config{
		ServerName:         s.IRC.Host,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: !s.IRC.TLSVerify, //nolint:gosec // explicit per-server opt-out, logged
	}
}

// NewSession maps the [server] settings onto a session.
func (Driver) NewSession(cfg runtime.SessionConfig) runtime.Session {
	if c := cfg.Server.IRC; c.TLS && !c.TLSVerify && cfg.Logger != nil {
		// Said at every connection, not once: an operator tailing the log
		// after a reconnect must still see that the link is unauthenticated.
		cfg.Logger.Warn("irc: TLS certificate verification is OFF for this server (tls_verify = false): anyone on the network path can impersonate it",
			"server", cfg.Server.Name, "host", c.Host)
	}
	return NewSession(cfg, SettingsFrom(cfg.Server))
}

// SettingsFrom extracts the session settings from a server section.
func SettingsFrom(s *config.Server) Settings {
	c := s.IRC
	set := Settings{
		Nick:            c.Nick,
		AltNicks:        c.AltNicks,
		User:            c.User,
		RealName:        c.Realname,
		Password:        c.Password.Reveal(),
		SASLPassword:    c.SASLPassword.Reveal(),
		PingInterval:    c.PingInterval,
		PingTimeout:     c.PingTimeout,
		RegisterTimeout: s.ConnectTimeout * 3,
		LineLimit:       c.LineLimit,
		Version:         "quilt " + version.Version,
	}
	if set.SASLPassword != "" {
		set.SASLUser = c.SASLUser
		if set.SASLUser == "" {
			set.SASLUser = c.Nick
		}
	}
	return set
}
