//go:build unix

package quilttest_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/quilt/quilt/clients/quiltctl"
	"github.com/quilt/quilt/querymaster/query/querytest"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
	"github.com/quilt/quilt/quiltcore/testenv"
	"github.com/quilt/quilt/sourcemanagers/matrix"
)

// TestShippedMatrixSuite runs the shipped etc/quilt/tests/*_testcase.quilt
// with `quiltctl test --once` against a real Dendrite and an in-process
// cluster whose source manager "matrix" runs the Matrix driver the way the
// shipped smd.d/matrix.cfg configures it (bot alice in #quilt:localhost,
// a room bob created). The Matrix case passes and the others (IRC) are
// skipped by their `require`: "1 passed, 0 failed, N skipped". Without
// the Dendrite binaries (QUILT_DENDRITE_BIN_DIR, or `make dendrite`) it
// skips; QUILT_REQUIRE_DENDRITE=1 makes that a failure.
func TestShippedMatrixSuite(t *testing.T) {
	d := testenv.Dendrite(t, "alice", "bob")
	bob, err := mautrix.NewClient(d.URL, id.UserID(d.Accounts["bob"].UserID), d.Accounts["bob"].AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "quilt", Name: "quilt"}); err != nil {
		t.Fatalf("bob creates #quilt:%s: %v", testenv.DendriteServerName, err)
	}

	st, err := sqlitestore.Open(t.TempDir(), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := querytest.Start(t, querytest.Options{Store: st})
	alice := d.Accounts["alice"]
	t.Setenv("QUILT_TEST_MATRIX_PASSWORD", alice.Password) // kept out of the config file
	c.AddSourceFile("matrix", fmt.Sprintf("protocol = matrix\n\n[server bench]\nhomeserver = %s\nuser_id = %s\n"+
		"password_env = QUILT_TEST_MATRIX_PASSWORD\ndevice_id = QUILTTEST\nchannels = #quilt:%s\nsync_timeout = 2s\n"+
		"reconnect_min = 200ms\nreconnect_max = 2s\n", d.URL, alice.UserID, testenv.DendriteServerName), matrix.Driver{})

	files, err := filepath.Glob("../../etc/quilt/tests/*_testcase.quilt")
	if err != nil || len(files) == 0 {
		t.Fatalf("shipped cases: %v %v", files, err)
	}
	tests := filepath.Join(c.Dir, "tests")
	if err := os.MkdirAll(tests, 0o750); err != nil {
		t.Fatal(err)
	}
	mx := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(filepath.Base(f), "matrix") {
			mx++
		}
		if err := os.WriteFile(filepath.Join(tests, filepath.Base(f)), b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if mx != 1 || len(files) < 2 {
		t.Fatalf("want one shipped Matrix case and one for another protocol: %v", files)
	}

	junit := filepath.Join(t.TempDir(), "junit.xml")
	var out, errOut bytes.Buffer
	code := quiltctl.Main(context.Background(), []string{"test", "--once", "--config", c.Dir, "--junit", junit}, strings.NewReader(""), &out, &errOut)
	t.Logf("quiltctl test --once:\n%s%s", out.String(), errOut.String())
	summary := fmt.Sprintf("\n1 passed, 0 failed, %d skipped\n", len(files)-1)
	if code != 0 || !strings.HasSuffix(out.String(), summary) {
		t.Fatalf("exit %d, want 0 and the last line %q", code, strings.TrimSpace(summary))
	}
	if !strings.Contains(out.String(), "--- PASS Matrix round trip") ||
		!strings.Contains(out.String(), `the query master knows no source "irc" (sources: matrix)`) {
		t.Error("want the Matrix case passed and the IRC case skipped for want of an irc source")
	}
	if b, err := os.ReadFile(junit); err != nil || !bytes.Contains(b, []byte(fmt.Sprintf(`tests="%d" failures="0" skipped="%d"`, len(files), len(files)-1))) {
		t.Fatalf("junit: %v\n%s", err, b)
	}

	// The Matrix case fails, with exit 1, when its source manager is gone
	// (known but detached: not a reason to skip).
	c.StopSource("matrix")
	out.Reset()
	errOut.Reset()
	code = quiltctl.Main(context.Background(), []string{"test", "--once", "--config", c.Dir, "--case-timeout", "3s", "matrix"}, strings.NewReader(""), &out, &errOut)
	t.Logf("with the source manager stopped:\n%s%s", out.String(), errOut.String())
	if code != 1 || !strings.HasSuffix(out.String(), "\n0 passed, 1 failed\n") {
		t.Fatalf("exit %d, want 1 and 0 passed, 1 failed", code)
	}
}
