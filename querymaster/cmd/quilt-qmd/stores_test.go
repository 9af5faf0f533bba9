package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/testenv"
)

func loadCfg(t *testing.T, body string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "quilt.cfg"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestOpenStoreEmbeddedByDefault(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	st, err := openStore(loadCfg(t, fmt.Sprintf("[mongodb]\ndata_dir = %s\n", data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Kind() != "sqlite" {
		t.Fatalf("kind = %q, want sqlite", st.Kind())
	}
	if _, err := os.Stat(filepath.Join(data, "quilt.db")); err != nil {
		t.Fatalf("data dir not used: %v", err)
	}
}

func TestOpenStoreMongoWhenURISet(t *testing.T) {
	uri := testenv.FerretDB(t)
	st, err := openStore(loadCfg(t, fmt.Sprintf("[mongodb]\nuri = %s\ndatabase = %s\n", uri, testenv.DatabaseName(t))), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Kind() != "mongodb" {
		t.Fatalf("kind = %q, want mongodb", st.Kind())
	}
}

func TestOpenStoreBadMongoNamesFileNotPassword(t *testing.T) {
	cfg := loadCfg(t, "[mongodb]\nuri = mongodb://quilt:hunter2@127.0.0.1:1/?serverSelectionTimeoutMS=300\ntimeout = 1s\n")
	_, err := openStore(cfg, nil)
	if err == nil {
		t.Fatal("unreachable MongoDB accepted")
	}
	if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), cfg.File) || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("error must name the file and host, never the password: %v", err)
	}
}
