package config

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// repoRoot walks up from the test's working directory to go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the working directory")
		}
		dir = parent
	}
}

func TestShippedConfigValidates(t *testing.T) {
	root := repoRoot(t)
	etc := filepath.Join(root, "etc", "quilt")
	if err := Check(etc); err != nil {
		t.Fatalf("shipped etc/quilt does not validate:\n%v", err)
	}
	c, err := Load(etc)
	if err != nil {
		t.Fatal(err)
	}
	names, err := c.SourceManagers()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"bzflag", "imap", "irc", "matrix", "xmpp"}
	if !slices.Equal(names, want) {
		t.Errorf("etc/quilt/smd.d lists %v, want %v", names, want)
	}
	for _, n := range want {
		for _, dir := range []string{filepath.Join(root, "smd.d"), c.Managers.ConfigDir} {
			sm, err := CheckSourceManagerFile(filepath.Join(dir, n+".cfg"))
			if err != nil {
				t.Errorf("%s/%s.cfg: %v", dir, n, err)
				continue
			}
			if string(sm.Protocol) != n {
				t.Errorf("%s.cfg: protocol %q", n, sm.Protocol)
			}
			for _, s := range sm.Servers {
				if h := serverHost(s); h != "127.0.0.1" {
					t.Errorf("%s.cfg [server %s]: host %q, the examples must target the local test bench", n, s.Name, h)
				}
			}
		}
	}
}

func serverHost(s Server) string {
	switch {
	case s.IRC != nil:
		return s.IRC.Host
	case s.XMPP != nil:
		return s.XMPP.Host
	case s.Matrix != nil:
		h := strings.TrimPrefix(s.Matrix.Homeserver, "http://")
		h, _, _ = strings.Cut(h, ":")
		return h
	case s.IMAP != nil:
		return s.IMAP.Host
	case s.BZFlag != nil:
		return s.BZFlag.Host
	}
	return ""
}

// The examples exist twice (smd.d/ for quiltctl sm check, etc/quilt/smd.d/
// for the default config dir); they must not drift apart.
func TestShippedExampleCopiesIdentical(t *testing.T) {
	root := repoRoot(t)
	a, b := filepath.Join(root, "smd.d"), filepath.Join(root, "etc", "quilt", "smd.d")
	files := func(dir string) map[string][]byte {
		out := map[string][]byte{}
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			out[rel] = data
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	fa, fb := files(a), files(b)
	if len(fa) == 0 {
		t.Fatal("smd.d is empty")
	}
	for name, data := range fa {
		if other, ok := fb[name]; !ok {
			t.Errorf("etc/quilt/smd.d/%s missing", name)
		} else if !bytes.Equal(data, other) {
			t.Errorf("smd.d/%s and etc/quilt/smd.d/%s differ", name, name)
		}
	}
	for name := range fb {
		if _, ok := fa[name]; !ok {
			t.Errorf("etc/quilt/smd.d/%s has no counterpart in smd.d/", name)
		}
	}
}

// The shipped quilt.cfg must document every key with its real default:
// uncommenting every `#key = value` line must change nothing, and every key
// the loader knows must appear.
func TestShippedQuiltCfgDocumentsDefaults(t *testing.T) {
	root := repoRoot(t)
	text, err := os.ReadFile(filepath.Join(root, "etc", "quilt", FileName))
	if err != nil {
		t.Fatal(err)
	}
	keyLine := regexp.MustCompile(`(?m)^#([a-z_]+ =.*)$`)
	documented := map[string]bool{}
	section := ""
	for _, line := range strings.Split(string(text), "\n") {
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
		}
		if m := keyLine.FindStringSubmatch(line); m != nil {
			documented[section+"."+strings.Fields(m[1])[0]] = true
		}
	}
	uncommented := keyLine.ReplaceAllString(string(text), "$1")

	dir := t.TempDir()
	writeFile(t, dir, FileName, uncommented)
	withKeys, err := Load(dir)
	if err != nil {
		t.Fatalf("uncommented shipped quilt.cfg does not load:\n%v", err)
	}
	empty, err := Load(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	withKeys.Dir, withKeys.File, withKeys.raw, empty.raw = "", "", nil, nil
	empty.Dir, empty.File = "", ""
	// Defaults under $QUILT_CFG differ only by the directory.
	for _, p := range []*string{&withKeys.Managers.ConfigDir, &withKeys.Testing.Dir, &withKeys.Patterns.Dir} {
		*p = filepath.Base(*p)
	}
	for _, p := range []*string{&empty.Managers.ConfigDir, &empty.Testing.Dir, &empty.Patterns.Dir} {
		*p = filepath.Base(*p)
	}
	if !reflect.DeepEqual(withKeys, empty) {
		t.Errorf("documented values differ from the built-in defaults:\n doc  %+v\n code %+v", withKeys, empty)
	}

	// Every known key is documented: ask the loader for its known lists.
	for _, sec := range sectionNames {
		d := t.TempDir()
		writeFile(t, d, FileName, "["+sec+"]\nzzzz_unknown = 1\n")
		_, err := Load(d)
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		_, known, ok := strings.Cut(msg, "(known: ")
		if !ok {
			t.Fatalf("[%s]: no known-key list in %q", sec, msg)
		}
		for _, k := range strings.Split(strings.TrimSuffix(known, ")"), ", ") {
			if !documented[sec+"."+k] {
				t.Errorf("etc/quilt/quilt.cfg does not document [%s] %s", sec, k)
			}
		}
	}
}
