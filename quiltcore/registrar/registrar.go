// Package registrar is how quilt daemons find each other: service
// registration with health checks, discovery with blocking watches, a leader
// lock, and a small key/value store for cluster settings.
//
// Two implementations satisfy Registrar: registrar/consul (a real Consul
// agent) and registrar/embedded (in-process, single node, the default when no
// Consul address is configured). Processes other than the query master reach
// an embedded registrar through the query master's Registrar gRPC service
// (registrar/remote). One contract suite (registrartest) holds them all to the
// same behaviour. registrar/open picks the backend from Options (the plain
// form of the [registrar] section); it is a subpackage because the backends
// import this one.
//
// Conventions: service ids are QueryMasterID(node) ("quilt-qmd-<node>") and
// SourceManagerID(name) ("quilt-sm-<name>"); query masters contend for
// LeaderKeyQueryMaster; keys are relative ("a/b", see CheckKey) and live
// under KeyPrefix ("quilt/") in Consul's KV.
package registrar

import (
	"context"
	"errors"
	"time"
)

// Health states of an instance's check.
const (
	HealthPassing  = "passing"
	HealthWarning  = "warning"
	HealthCritical = "critical"
)

// Service names and id prefixes used across quilt; stable so operators can
// script against the catalog.
const (
	ServiceQueryMaster   = "quilt-qmd"
	ServiceSourceManager = "quilt-sm"
)

var (
	// ErrNotFound: the instance, key or leader does not exist.
	ErrNotFound = errors.New("registrar: not found")
	// ErrLockHeld: Lock gave up because ctx ended while another holder kept it.
	ErrLockHeld = errors.New("registrar: lock held by another holder")
	// ErrUnreachable wraps failures to reach the registrar backend.
	ErrUnreachable = errors.New("registrar: unreachable")
)

// Instance is one registered service instance as discovery returns it.
type Instance struct {
	Name    string
	ID      string
	Address string // host:port clients dial
	Tags    []string
	Meta    map[string]string
	Health  string // HealthPassing, HealthWarning or HealthCritical
}

// Registration describes an instance to register.
type Registration struct {
	Name    string
	ID      string
	Address string
	Tags    []string
	Meta    map[string]string
	// TTL of the health check. The registrar heart-beats it at TTL/3 until
	// the Registered handle is deregistered, unless ManualHeartbeat is set.
	TTL time.Duration
	// ManualHeartbeat leaves heart-beating to the caller (Registered.Pass);
	// tests use it to let a TTL expire.
	ManualHeartbeat bool
	// DeregisterAfter removes an instance whose check stayed critical this
	// long (Consul's DeregisterCriticalServiceAfter). 0: the implementation's
	// default (1 minute).
	DeregisterAfter time.Duration
	// GRPCHealth, when set, adds a grpc.health.v1 check against this address
	// (the query master's own listener) where the backend supports it.
	GRPCHealth string
}

// Registered is a live registration.
type Registered interface {
	ID() string
	// Pass marks the TTL check passing now (ManualHeartbeat registrations).
	Pass(ctx context.Context) error
	// Deregister stops heart-beating and removes the instance.
	Deregister(ctx context.Context) error
}

// Lock is a held leader lock.
type Lock interface {
	// Lost is closed the moment the holder learns it no longer holds the
	// lock (session invalidated, registrar unreachable past the lock's TTL,
	// or Release). A holder must stop acting as leader when it closes.
	Lost() <-chan struct{}
	// Release gives the lock up; safe to call more than once.
	Release(ctx context.Context) error
}

// Leader is the current holder of a leader key.
type Leader struct {
	ID      string
	Address string
}

// Registrar is the one interface the rest of quilt uses.
type Registrar interface {
	// Register adds an instance and keeps its TTL check alive (see
	// Registration.ManualHeartbeat). The check starts passing.
	Register(ctx context.Context, r Registration) (Registered, error)
	// Discover lists the instances of a service, healthy ones only when
	// passingOnly is set.
	Discover(ctx context.Context, service string, passingOnly bool) ([]Instance, error)
	// Watch sends the instance list now and again each time it changes
	// (blocking queries, not polling) until ctx ends; the channel is closed
	// then. Errors are retried with backoff inside the watch.
	Watch(ctx context.Context, service string, passingOnly bool) <-chan []Instance
	// Lock blocks until it holds key for holderID (advertising address as
	// the leader's address) or ctx ends.
	Lock(ctx context.Context, key, holderID, address string) (Lock, error)
	// Leader returns who holds key; ErrNotFound when no one does.
	Leader(ctx context.Context, key string) (Leader, error)
	// KVGet returns the value at key; ErrNotFound when absent.
	KVGet(ctx context.Context, key string) ([]byte, error)
	KVPut(ctx context.Context, key string, value []byte) error
	// Close stops background work (heart-beats, watches, lock sessions).
	Close() error
}
