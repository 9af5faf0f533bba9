// Command quilt-qmd is the query master: it accepts source managers'
// streams, stores their events, routes actions and answers clients. See
// querymaster for the library and `quilt-qmd -h` for usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/querymaster/query"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/daemon"
	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/registrar/consul"
	"github.com/quilt/quilt/quiltcore/registrar/embedded"
	"github.com/quilt/quilt/quiltcore/registrar/remote"
	"github.com/quilt/quilt/quiltcore/store"
)

const name = "quilt-qmd"

var usage = daemon.Usage{
	Synopsis: "quilt-qmd [flags]",
	Description: `The quilt query master. It listens on [query_master] listen for source
managers (SourceLink) and clients (QueryMaster, grpc.health.v1), stores events
in MongoDB when [mongodb] uri is set, else in SQLite under [mongodb] data_dir,
and registers itself and every attached source manager with the registrar
([registrar] address: a Consul agent, or "embedded" to serve a single-node
registrar on the same listener). Several quilt-qmd may run: one leads (the
[query_master] leader_key lock), the others wait and take over when it goes.

-check validates quilt.cfg and exits: 0 when valid, 3 with every problem
listed when not.`,
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := daemon.NewFlags(fs, usage)
	check := fs.Bool("check", false, "validate the configuration and exit (0 valid, 3 invalid)")
	if err := f.Parse(args); err != nil {
		return daemon.Exit(err)
	}
	if f.Version {
		daemon.PrintVersion(stdout, name)
		return daemon.ExitOK
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q; see %s -h\n", name, fs.Args(), name)
		return daemon.ExitUsage
	}
	cfg, err := config.Load(f.ConfigDir)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return daemon.ExitConfig
	}
	if *check {
		fmt.Fprintf(stdout, "%s: configuration OK (%s)\n", name, cfg.File)
		return daemon.ExitOK
	}
	opts := daemon.Options{
		Name:            name,
		LogLevel:        cfg.Log.Level,
		LogFormat:       cfg.Log.Format,
		LogFile:         cfg.Log.File,
		ShutdownTimeout: cfg.Daemon.ShutdownTimeout,
	}
	// init scripts and operators find the daemon by this file; -pid-file
	// overrides it
	if cfg.Daemon.PidDir != "" {
		opts.PIDFile = filepath.Join(cfg.Daemon.PidDir, name+".pid")
	}
	f.Apply(&opts)
	return daemon.Run(context.Background(), opts, func(ctx context.Context, d *daemon.Daemon) error {
		return serve(ctx, d, cfg)
	})
}

func serve(ctx context.Context, d *daemon.Daemon, cfg *config.Config) error {
	log := d.Logger()
	st, err := openStore(cfg, log)
	if err != nil {
		return err
	}
	defer st.Close()

	reg, kind, err := openRegistrar(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer reg.Close()

	qc := cfg.QueryMaster
	m, err := querymaster.New(querymaster.Options{
		Store:            st,
		Registrar:        reg,
		RegistrarKind:    kind,
		Node:             qc.Node,
		Advertise:        qc.Advertise,
		ServiceName:      qc.ServiceName,
		LeaderKey:        qc.LeaderKey,
		SubscriberBuffer: qc.SubscriberBuffer,
		ActTimeout:       qc.ActTimeout,
		SourceTimeout:    qc.SourceTimeout,
		Heartbeat:        cfg.Managers.Heartbeat,
		SourceTTL:        cfg.Registrar.TTL,
		DeregisterAfter:  cfg.Registrar.DeregisterAfter,
		KnownSources: func() []string {
			names, _ := cfg.SourceManagers() // unreadable dir: fall back to attached + stored
			return names
		},
		Logger: log,
	})
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", qc.Listen)
	if err != nil {
		return fmt.Errorf("[query_master] listen %s: %w", qc.Listen, err)
	}
	srv := grpc.NewServer(
		// Detect a source manager that vanished without closing its TCP
		// connection (kill -9 on another host, a cut cable) within seconds.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	// The query layer serves QueryMaster over the core Master (Query,
	// history, patterns) and mounts SourceLink and health beside it.
	qs, err := query.New(query.Options{Master: m, Store: st, PatternsDir: cfg.Patterns.Dir, Logger: log})
	if err != nil {
		return err
	}
	query.Register(srv, qs)
	if kind == "embedded" {
		quiltv1.RegisterRegistrarServer(srv, remote.NewServer(reg))
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	log.Info("listening", daemon.KeyAddr, lis.Addr().String(), "advertise", qc.Advertise,
		"registrar", kind, "store", st.Kind(), "master_id", m.ID())

	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		m.Run(runCtx)
	}()
	go retention(runCtx, st, cfg.MongoDB, log)
	d.Ready()

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("serving on %s: %w", qc.Listen, err)
	}
	// Step down first (ends the streams and releases the lock so a standby
	// takes over at once), then let in-flight unary calls finish.
	m.Shutdown()
	stopRun()
	<-runDone
	if !daemon.GracefulStop(srv, 5*time.Second) {
		log.Warn("gRPC graceful stop timed out; connections closed")
	}
	// The query history is written beside the answers; keep the last
	// queries' records before the store closes.
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	if herr := qs.Close(hctx); herr != nil {
		log.Warn("query history of the last queries not stored", "err", herr)
	}
	return err
}

// openStore opens MongoDB when [mongodb] uri is set, else the embedded
// SQLite store in [mongodb] data_dir (created if missing).
func openStore(cfg *config.Config, log *slog.Logger) (store.Store, error) {
	mc := cfg.MongoDB
	if !mc.Embedded {
		return openMongo(cfg, log)
	}
	if err := os.MkdirAll(mc.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("[mongodb] data_dir %s: %w", mc.DataDir, err)
	}
	return openSQLite(filepath.Clean(mc.DataDir), log)
}

func openRegistrar(ctx context.Context, cfg *config.Config, log *slog.Logger) (registrar.Registrar, string, error) {
	rc := cfg.Registrar
	if rc.Embedded {
		r, err := embedded.New(embedded.Options{DataDir: cfg.MongoDB.DataDir, Logger: log})
		if err != nil {
			return nil, "", fmt.Errorf("embedded registrar: %w", err)
		}
		return r, "embedded", nil
	}
	tok := ""
	if rc.Token.IsSet() {
		tok = rc.Token.Reveal()
	}
	r, err := consul.New(ctx, consul.Options{
		Address:    rc.Address,
		Token:      tok,
		Datacenter: rc.Datacenter,
		TLS: registrar.TLSOptions{
			CAFile:             rc.TLSCAFile,
			CertFile:           rc.TLSCertFile,
			KeyFile:            rc.TLSKeyFile,
			InsecureSkipVerify: rc.TLSSkipVerify,
		},
		Logger: log,
	})
	if err != nil {
		return nil, "", err
	}
	return r, "consul", nil
}

// retention removes events and processed ids past [mongodb] retention and
// processed_retention, hourly (and once at start).
func retention(ctx context.Context, st store.Store, mc config.MongoDBConfig, log *slog.Logger) {
	if mc.Retention <= 0 && mc.ProcessedRetention <= 0 {
		return
	}
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		var evBefore, procBefore time.Time
		if mc.Retention > 0 {
			evBefore = now.Add(-mc.Retention)
		}
		if mc.ProcessedRetention > 0 {
			procBefore = now.Add(-mc.ProcessedRetention)
		}
		res, err := st.Cleanup(ctx, evBefore, procBefore)
		switch {
		case err != nil && !errors.Is(err, context.Canceled):
			log.Warn("retention cleanup", "err", err)
		case err == nil && (res.Events > 0 || res.Processed > 0):
			log.Info("retention cleanup", "events", res.Events, "processed_ids", res.Processed)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
