package registrar

import (
	"fmt"
	"strings"
)

// Service ids are stable and chosen by the caller, so a restarted daemon
// replaces its own catalog entry instead of leaving a twin behind.
const (
	// QueryMasterIDPrefix + node name is a query master's service id.
	QueryMasterIDPrefix = ServiceQueryMaster + "-"
	// SourceManagerIDPrefix + source manager name is a source manager's
	// service id (the query master registers it while its stream lives).
	SourceManagerIDPrefix = ServiceSourceManager + "-"

	// LeaderKeyQueryMaster is the lock key the query masters contend for.
	LeaderKeyQueryMaster = "leader/" + ServiceQueryMaster

	// KeyPrefix is prepended by backends that share a keyspace with other
	// tenants (Consul's KV): quilt's keys live under quilt/.
	KeyPrefix = "quilt/"

	// EmbeddedAddress selects the in-process registrar; an empty address
	// does too.
	EmbeddedAddress = "embedded"
)

// QueryMasterID is the service id of the query master on node.
func QueryMasterID(node string) string { return QueryMasterIDPrefix + node }

// SourceManagerID is the service id of the source manager called name.
func SourceManagerID(name string) string { return SourceManagerIDPrefix + name }

// IsEmbedded reports whether a [registrar] address selects the embedded
// registrar.
func IsEmbedded(address string) bool {
	a := strings.TrimSpace(address)
	return a == "" || strings.EqualFold(a, EmbeddedAddress)
}

// CheckKey validates a KV or lock key: relative ("a/b", no leading slash),
// not empty, no empty or dot segments. Backends call it so the same key is
// valid everywhere.
func CheckKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") {
		return fmt.Errorf("%w: key %q must not start or end with /", ErrInvalid, key)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%w: key %q has an empty or dot segment", ErrInvalid, key)
		}
	}
	return nil
}

// CheckRegistration validates what every backend needs from a Registration.
func CheckRegistration(r Registration) error {
	switch {
	case r.Name == "":
		return fmt.Errorf("%w: registration without a service name (id %q)", ErrInvalid, r.ID)
	case r.ID == "":
		return fmt.Errorf("%w: registration of %q without an id", ErrInvalid, r.Name)
	case r.TTL < 0 || r.DeregisterAfter < 0:
		return fmt.Errorf("%w: registration %q has a negative TTL or DeregisterAfter", ErrInvalid, r.ID)
	}
	return nil
}
