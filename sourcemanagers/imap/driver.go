// Package imap is quilt's IMAP source manager driver (protocol = imap), a
// runtime.ClientDriver on github.com/emersion/go-imap/v2's imapclient over a
// connection from ClientDeps.Dialer (transport.Stream), so tests can hand
// it a fixture instead of a socket.
//
// # Mailboxes are channels
//
// Each configured mailbox is a channel. The runtime joins the configured
// mailboxes through Do(JOIN) once the login succeeded; a JOIN EXAMINEs the
// mailbox (read-only: the driver never changes a flag, it fetches with
// BODY.PEEK), emits the bot's own JOIN with the mailbox's UIDVALIDITY, UIDNEXT
// and message count as channel attributes, and starts watching it. PART stops
// watching. A new mail is a MAIL event in that channel:
//
//	id       "<server>/<mailbox>/<UIDVALIDITY>/<UID>", stable across replays
//	user     all four names = the sender's address (domain in lower case);
//	         display = the From display name when there is one
//	text     the subject
//	mail     message id, from, to, subject, plain-text body (at most
//	         MaxBody bytes, tag body_truncated=true when cut), uid, uid_validity
//	time     the server's INTERNALDATE
//
// The body is the first text/plain part that is not an attachment, else the
// first text/html part with its tags removed. At most MaxFetch bytes of a
// mail are fetched, so a large attachment never crosses the network whole.
//
// # Resume position
//
// The highest UID handled per mailbox goes up as Cursor{server,
// "uid:<mailbox>", "<uidvalidity>:<uid>"} in the same Emit call as the MAIL
// events it covers, so the query master stores both in one write and a
// restart resumes exactly after it: mail that arrived while the driver was
// down is emitted once after it reconnects, nothing is emitted twice.
//
// With no cursor for a mailbox (its first watch ever) the mail already in it
// is NOT emitted: the driver records UIDNEXT-1 as the cursor and reports
// only mail that arrives afterwards, as a chat bot joining a channel sees no
// history. The same holds when the server's UIDVALIDITY no longer matches
// the cursor (the mailbox was recreated, its UIDs mean something else): the
// driver warns and starts over from the current UIDNEXT, since replaying the
// whole mailbox as new would be worse than the gap.
//
// The runtime hands every session the cursors of the query master's last
// Welcome, which a reconnect within the same process does not refresh; the
// driver therefore also remembers, per source, server and mailbox, the last
// position it emitted in this process and resumes from the later of the two.
//
// # Watching
//
// With idle = true (and the server announcing IDLE) the driver IDLEs on the
// first watched mailbox and fetches as soon as the server reports EXISTS.
// Every poll_interval it checks every watched mailbox: the other mailboxes
// (IMAP IDLE watches one) and, through the command round trips, a dead
// connection. With idle = false it only polls.
//
// # Actions
//
// JOIN and PART watch and unwatch mailboxes. SEND is not an IMAP operation
// (sending mail is SMTP's job): it fails with codes.Unimplemented, as do
// KICK, TOPIC and RAW. RECONNECT is carried out by the runtime.
//
// # Security
//
// tls = true is implicit TLS (port 993), verified unless tls_verify = false,
// which is warned about at every connection; tls = false to a host other
// than the loopback is warned about too, since LOGIN then sends the password
// in clear. The password never appears in logs or errors.
package imap

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/sourcemanagers/runtime"
	"google.golang.org/grpc/codes"
)

// Driver serves `protocol = imap`.
type Driver struct{}

var _ runtime.ClientDriver = Driver{}

// Protocol implements runtime.Driver.
func (Driver) Protocol() string { return string(config.ProtocolIMAP) }

// NewClient implements runtime.ClientDriver. It checks the settings and
// touches no network.
func (Driver) NewClient(cfg runtime.SessionConfig, deps runtime.ClientDeps) (runtime.Client, error) {
	return NewClient(cfg, deps)
}

// Limits of what one mail costs.
const (
	// MaxFetch is how much of a mail (headers and body) is fetched.
	MaxFetch = 256 << 10
	// MaxBody is the most body text a MAIL event carries.
	MaxBody = 16 << 10
	// fetchChunk mails are fetched, and emitted, per round trip.
	fetchChunk = 20
)

// CursorPrefix starts the Cursor name of a mailbox's position.
const CursorPrefix = "uid:"

func checkSettings(s *config.Server) (*config.IMAPSettings, error) {
	if s == nil || s.IMAP == nil {
		return nil, errors.New("imap: server section has no imap settings")
	}
	c := s.IMAP
	if c.Host == "" {
		return nil, fmt.Errorf("imap: server %s: host is empty", s.Name)
	}
	if c.Port <= 0 || c.Port > 65535 {
		return nil, fmt.Errorf("imap: server %s: port %d out of range", s.Name, c.Port)
	}
	if c.Username == "" {
		return nil, fmt.Errorf("imap: server %s: username is empty", s.Name)
	}
	return c, nil
}

// Address is the host:port the driver dials.
func Address(c *config.IMAPSettings) string {
	return net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
}

// TLSConfig is nil without tls; otherwise certificates are verified unless
// the section opts out (tls_verify = false), which NewClient logs loudly.
func TLSConfig(c *config.IMAPSettings) *tls.Config {
	if !c.TLS {
		return nil
	}
	return &tls.Config{
		ServerName:         c.Host,
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"imap"},
		InsecureSkipVerify: !c.TLSVerify, //nolint:gosec // explicit per-server opt-out, logged
	}
}

// ActionError is an action failure with the gRPC code the runtime reports.
type ActionError struct {
	code codes.Code
	msg  string
}

func (e *ActionError) Error() string { return e.msg }

// Code is read by the runtime's command queue.
func (e *ActionError) Code() codes.Code { return e.code }

func actionErr(c codes.Code, format string, a ...any) error {
	return &ActionError{code: c, msg: fmt.Sprintf(format, a...)}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
