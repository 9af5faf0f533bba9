package registrar

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// ErrInvalid: a key, registration or option was rejected before reaching the
// backend.
var ErrInvalid = errors.New("registrar: invalid argument")

// ErrClosed: the registrar was closed.
var ErrClosed = errors.New("registrar: closed")

// Defaults shared by the backends.
const (
	DefaultTTL             = 10 * time.Second
	DefaultDeregisterAfter = time.Minute
)

// TLSOptions configures TLS to a Consul agent.
type TLSOptions struct {
	// Enable uses https even when no file is set (system CAs).
	Enable   bool
	CAFile   string
	CertFile string
	KeyFile  string
	// ServerName overrides the name checked in the agent's certificate.
	ServerName string
	// InsecureSkipVerify disables certificate checks (tests only).
	InsecureSkipVerify bool
}

// Enabled reports whether any TLS setting is present.
func (t TLSOptions) Enabled() bool {
	return t.Enable || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify
}

// Options is the plain form of the [registrar] section, so this package does
// not depend on quiltcore/config. registrar/open turns it into a Registrar.
type Options struct {
	// Address of the Consul agent (host:port or http(s)://host:port), or ""
	// / "embedded" for the in-process registrar.
	Address string
	// Token is the Consul ACL token; TokenFile is read instead when set.
	// Neither is ever logged.
	Token      string
	TokenFile  string
	Datacenter string
	TLS        TLSOptions
	// DataDir, for the embedded registrar, is where its KV is persisted
	// (registrar-kv.json) so cluster settings survive restarts. Empty:
	// memory only.
	DataDir string
	// QueryMaster, when the registrar is embedded and this process is not
	// the query master hosting it (quilt-smd, quiltctl), is the query
	// master's gRPC address; the registrar is then a read-only remote
	// client of it.
	QueryMaster string
	Logger      *slog.Logger
}

// IndexedDiscoverer is the blocking-query form of Discover: it returns when
// the service's index differs from waitIndex or wait has passed, with the
// index to pass next time. waitIndex 0 returns at once. All quilt backends
// implement it; registrar/remote serves it as Discover with wait_index.
type IndexedDiscoverer interface {
	DiscoverIndex(ctx context.Context, service string, passingOnly bool, waitIndex uint64, wait time.Duration) ([]Instance, uint64, error)
}
