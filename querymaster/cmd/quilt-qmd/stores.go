package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/mongostore"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
)

func openSQLite(dir string, log *slog.Logger) (store.Store, error) {
	s, err := sqlitestore.Open(dir, sqlitestore.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("embedded store in [mongodb] data_dir %s: %w", dir, err)
	}
	return s, nil
}

// openMongo connects to [mongodb] uri; the store's errors already name the
// host and redact credentials.
func openMongo(cfg *config.Config, log *slog.Logger) (store.Store, error) {
	mc := cfg.MongoDB
	ctx, cancel := context.WithTimeout(context.Background(), mc.Timeout+5*time.Second)
	defer cancel()
	s, err := mongostore.Open(ctx, mongostore.Options{
		URI:      mc.URI,
		Database: mc.Database,
		Username: mc.Username,
		Password: mc.Password.Reveal(),
		Timeout:  mc.Timeout,
		Logger:   log,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.File, err)
	}
	return s, nil
}
