package bzflag

import (
	"crypto/tls"
	"net"
	"strconv"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/version"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// Driver serves `protocol = bzflag`.
type Driver struct{}

var _ runtime.StreamDriver = Driver{}

func (Driver) Protocol() string { return string(config.ProtocolBZFlag) }

// Addresses is the one host:port of the server section.
func (Driver) Addresses(s *config.Server) []string {
	return []string{net.JoinHostPort(s.BZFlag.Host, strconv.Itoa(s.BZFlag.Port))}
}

// TLSConfig is nil: bzfs speaks plain TCP only.
func (Driver) TLSConfig(*config.Server) *tls.Config { return nil }

// NewSession maps the [server] settings onto a session.
func (Driver) NewSession(cfg runtime.SessionConfig) runtime.Session {
	if cfg.Server.BZFlag.Password.IsSet() && cfg.Logger != nil {
		// A registered callsign is verified with a token from the BZFlag
		// list server (an HTTPS login this stream session cannot make);
		// the password must never go into MsgEnter's token field, which
		// bzfs writes to its log. Said at every connection so an operator
		// who set a password sees why the callsign stays unverified.
		cfg.Logger.Warn("bzflag: password is set but global login is not supported; joining unverified",
			"server", cfg.Server.Name, "callsign", cfg.Server.BZFlag.Callsign)
	}
	return NewSession(cfg, SettingsFrom(cfg.Server))
}

// SettingsFrom extracts the session settings from a server section.
func SettingsFrom(s *config.Server) Settings {
	c := s.BZFlag
	team, ok := TeamCode(c.Team)
	if !ok {
		team = observerTeam // config validation allows only known names
	}
	return Settings{
		Callsign:    c.Callsign,
		Team:        team,
		Motto:       c.Motto,
		Version:     "2.4.0 quilt " + version.Version,
		JoinTimeout: s.ConnectTimeout * 3,
	}
}
