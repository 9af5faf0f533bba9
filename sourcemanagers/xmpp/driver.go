// Package xmpp is quilt's XMPP source manager driver (protocol = xmpp), a
// runtime.ClientDriver on mellium.im/xmpp. MUC rooms (XEP-0045) are the
// channels.
//
// # Session
//
// The client dials the [server] host and port through ClientDeps.Dialer and
// hands mellium a transport.Stream view of the connection. With tls = true
// (the default) STARTTLS is required and the certificate is checked against
// the JID's domain (tls_verify = false skips that, logged loudly at every
// connection); with tls = false nothing is encrypted and the password goes
// over the wire in clear, which is logged as loudly. SASL offers
// SCRAM-SHA-256, SCRAM-SHA-1 and PLAIN, strongest first. After resource
// binding the client sends its initial presence and reports CONNECTED with
// its full JID; the runtime then joins the configured rooms through
// Do(JOIN), which waits for the room's answer, so a refused join (wrong
// password, banned, nick conflict) is a failed action. Every ping_interval
// the client pings the server (XEP-0199); no answer within ping_timeout
// ends the session, and the runtime reconnects.
//
// # Names (seed 000)
//
// A MUC occupant's transient name is its occupant JID room@service/nick,
// its display name the nick; its persistent and group names are its real
// bare JID when the room reveals it (non-anonymous rooms, or when we
// moderate), else the occupant JID. Outside rooms, transient is the full
// JID, persistent and group the bare JID, display the XEP-0172 nick or the
// localpart.
//
// # Events
//
// Our own presence in a room (status 110) gives JOIN (of the bot) then
// MEMBERS with every occupant, modes being its role and affiliation
// ("moderator", "owner", ...). Later: a new occupant → JOIN, unavailable →
// PART (reason: status text), 303 → NICK, 307 → KICK, 301 → KICK tagged
// ban=true, role or affiliation change → MODE, show/status change →
// PRESENCE. The subject that ends the join sequence → CHANNEL_INFO; later
// subjects → TOPIC. Groupchat bodies → MESSAGE ("/me " → ACTION; from the
// room itself → NOTICE); chat and normal bodies → private MESSAGE (headline
// → NOTICE). History is not requested (maxstanzas 0) and delayed messages
// before the subject are dropped, so a reconnect replays nothing.
//
// # Event ids
//
// The XEP-0359 stanza-id assigned by the room (groupchat) or by our own
// server (private), else the sender's origin-id (quilt sends one with every
// message), else none and the runtime numbers the event in the session
// (presence, and messages from clients without XEP-0359). The stanza's id
// attribute is deliberately not used: clients reuse it.
package xmpp

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/sourcemanagers/runtime"
	"mellium.im/xmpp/jid"
)

// Driver serves `protocol = xmpp`.
type Driver struct {
	// RootCAs, when set, replaces the system roots for STARTTLS
	// verification (tests trust their own server's certificate with it).
	RootCAs *x509.CertPool
}

var _ runtime.ClientDriver = Driver{}

// Protocol implements runtime.Driver.
func (Driver) Protocol() string { return string(config.ProtocolXMPP) }

// NewClient implements runtime.ClientDriver. It checks the settings and
// touches no network.
func (d Driver) NewClient(cfg runtime.SessionConfig, deps runtime.ClientDeps) (runtime.Client, error) {
	return NewClient(cfg, deps, d.RootCAs)
}

// settings are the checked [server] values.
type settings struct {
	name     string
	jid      jid.JID // full: account JID with the configured resource
	password string
	addr     string
	tls      *tls.Config // nil: no STARTTLS
	nick     string
	// pingEvery, pingTimeout: the keepalive (Client.keepAlive).
	pingEvery, pingTimeout time.Duration
}

func checkSettings(s *config.Server, roots *x509.CertPool) (*settings, error) {
	if s == nil || s.XMPP == nil {
		return nil, fmt.Errorf("xmpp: server section has no xmpp settings")
	}
	x := s.XMPP
	bare, err := jid.Parse(x.JID)
	if err != nil || bare.Localpart() == "" || bare.Resourcepart() != "" {
		return nil, fmt.Errorf("xmpp: server %s: jid %q is not a bare JID (user@domain)", s.Name, x.JID)
	}
	full := bare
	if x.Resource != "" {
		if full, err = bare.WithResource(x.Resource); err != nil {
			return nil, fmt.Errorf("xmpp: server %s: resource %q: %v", s.Name, x.Resource, err)
		}
	}
	if x.Password.Reveal() == "" {
		return nil, fmt.Errorf("xmpp: server %s: password is empty", s.Name)
	}
	host := x.Host
	if host == "" {
		host = bare.Domainpart()
	}
	port := x.Port
	if port == 0 {
		port = 5222
	}
	st := &settings{
		name:     s.Name,
		jid:      full,
		password: x.Password.Reveal(),
		addr:     joinHostPort(host, port),
		nick:     x.Nick,
		// A settings struct built by hand (tests) gets the config's
		// defaults.
		pingEvery:   orDefault(x.PingInterval, time.Minute),
		pingTimeout: orDefault(x.PingTimeout, 30*time.Second),
	}
	if st.nick == "" {
		st.nick = bare.Localpart()
	}
	if x.TLS {
		st.tls = &tls.Config{
			// XMPP certificates name the service domain, not the host
			// that serves it (RFC 6120 §13.7.2.1).
			ServerName:         bare.Domainpart(),
			MinVersion:         tls.VersionTLS12,
			RootCAs:            roots,
			InsecureSkipVerify: !x.TLSVerify, //nolint:gosec // explicit per-server opt-out, logged at every connection
		}
	}
	return st, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}
