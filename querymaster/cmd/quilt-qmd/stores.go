package main

import (
	"fmt"
	"log/slog"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
)

func openSQLite(dir string, log *slog.Logger) (store.Store, error) {
	s, err := sqlitestore.Open(dir, sqlitestore.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("embedded store in [mongodb] data_dir %s: %w", dir, err)
	}
	return s, nil
}

// openMongo: the MongoDB store (quiltcore/store/mongostore) had not landed
// when this main was written; until it is wired here a configured URI
// stops the daemon with a clear error rather than silently using SQLite.
func openMongo(cfg *config.Config, _ *slog.Logger) (store.Store, error) {
	return nil, fmt.Errorf("%s: [mongodb] uri %s is set, but this quilt-qmd has no MongoDB store yet; remove the uri to use the embedded store",
		cfg.File, cfg.MongoDB.RedactedURI())
}
