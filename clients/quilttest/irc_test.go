package quilttest_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quilt/quilt/clients/quiltctl"
	"github.com/quilt/quilt/querymaster/query/querytest"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
	"github.com/quilt/quilt/quiltcore/testenv"
	"github.com/quilt/quilt/sourcemanagers/irc"
)

// TestShippedIRCSuite runs the shipped etc/quilt/tests/*_testcase.quilt
// with `quiltctl test --once` against a real ngircd and an in-process
// cluster whose source manager "irc" runs the IRC driver, the way the
// shipped smd.d/irc.cfg configures it (bot quilt in #quilt). It proves the
// shipped suite passes on an IRC-only cluster like the demo's: the IRC
// cases pass and the others (Matrix) are skipped by their `require`, not
// failed: "N passed, 0 failed, N skipped". Without ngircd it skips (fails
// under CI=true).
func TestShippedIRCSuite(t *testing.T) {
	srv := testenv.StartIRCServer(t, testenv.NGIRCdOptions{})
	st, err := sqlitestore.Open(t.TempDir(), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := querytest.Start(t, querytest.Options{Store: st})

	host, port, _ := strings.Cut(srv.Addr, ":")
	cfgText := fmt.Sprintf("protocol = irc\n\n[server bench]\nhost = %s\nport = %s\ntls = false\nnick = quilt\n"+
		"channels = #quilt, #test\nthrottle = 100ms\nthrottle_burst = 10\nreconnect_min = 200ms\nreconnect_max = 1s\n", host, port)
	c.AddSourceFile("irc", cfgText, irc.Driver{})

	// The shipped cases, where [testing] dir points by default.
	files, err := filepath.Glob("../../etc/quilt/tests/*_testcase.quilt")
	if err != nil || len(files) == 0 {
		t.Fatalf("shipped cases: %v %v", files, err)
	}
	tests := filepath.Join(c.Dir, "tests")
	if err := os.MkdirAll(tests, 0o750); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// Every shipped case: those for other protocols must skip.
		if strings.Contains(filepath.Base(f), "irc") {
			want = append(want, f)
		}
		if err := os.WriteFile(filepath.Join(tests, filepath.Base(f)), b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if len(want) == 0 || len(want) == len(files) {
		t.Fatalf("want a shipped IRC case and one for another protocol: %v", files)
	}

	junit := filepath.Join(t.TempDir(), "junit.xml")
	var out, errOut bytes.Buffer
	code := quiltctl.Main(context.Background(), []string{"test", "--once", "--config", c.Dir, "--junit", junit}, strings.NewReader(""), &out, &errOut)
	t.Logf("quiltctl test --once:\n%s%s", out.String(), errOut.String())
	summary := fmt.Sprintf("\n%d passed, 0 failed, %d skipped\n", len(want), len(files)-len(want))
	if code != 0 || !strings.HasSuffix(out.String(), summary) {
		t.Fatalf("exit %d, want 0 and the last line %q", code, strings.TrimSpace(summary))
	}
	if !strings.Contains(out.String(), `the query master knows no source "matrix" (sources: irc)`) {
		t.Error("the Matrix case was not skipped for want of a matrix source")
	}
	if b, err := os.ReadFile(junit); err != nil || !bytes.Contains(b, []byte(fmt.Sprintf(`tests="%d" failures="0" skipped="%d"`, len(files), len(files)-len(want)))) {
		t.Fatalf("junit: %v\n%s", err, b)
	}

	// The same suite fails, with exit 1, when the IRC source manager is gone.
	c.StopSource("irc")
	out.Reset()
	errOut.Reset()
	code = quiltctl.Main(context.Background(), []string{"test", "--once", "--config", c.Dir, "--case-timeout", "2s", "irc"}, strings.NewReader(""), &out, &errOut)
	t.Logf("with the source manager stopped:\n%s%s", out.String(), errOut.String())
	if code != 1 || !strings.HasSuffix(out.String(), "\n0 passed, 1 failed\n") {
		t.Fatalf("exit %d, want 1 and 0 passed, 1 failed", code)
	}
}
