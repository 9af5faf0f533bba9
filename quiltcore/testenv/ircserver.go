package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// IRCServer is a private ngircd a test can stop and start again on the same
// port, to prove that clients reconnect and rejoin after a server restart.
type IRCServer struct {
	*portServer
}

// StartIRCServer is NGIRCd with a handle: Stop and Start restart the server
// on the same address. It is stopped when the test ends.
func StartIRCServer(t testing.TB, opts NGIRCdOptions) *IRCServer {
	t.Helper()
	Require(t, ComponentNGIRCd)
	bin, _ := NGIRCdBin()
	uid, gid, err := runUser()
	if err != nil {
		if IsCI() {
			t.Fatalf("testenv: ngircd: %v", err)
		}
		t.Skipf("testenv: skipping, ngircd cannot run: %v", err)
	}
	dir := t.TempDir()
	return &IRCServer{startPortServer(t, "ngircd", dir, func(port, n int) (*proc, error) {
		return launchNGIRCd(bin, dir, port, n, opts, uid, gid)
	})}
}

func launchNGIRCd(bin, dir string, port, n int, opts NGIRCdOptions, uid, gid string) (*proc, error) {
	conf := filepath.Join(dir, fmt.Sprintf("ngircd-%d.conf", n))
	if err := os.WriteFile(conf, []byte(ngircdConfig(opts, port, uid, gid)), 0o600); err != nil {
		return nil, fmt.Errorf("ngircd config: %w", err)
	}
	// ngircd reads the config as the starting user (root can read our 0700
	// temp dir) and writes nothing to disk afterwards: PidFile is empty and
	// the log goes to stderr, so the dropped user needs no access to dir.
	if out, err := exec.Command(bin, "--configtest", "-f", conf).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ngircd --configtest -f %s: %v\n%s", conf, err, out)
	}
	logPath := filepath.Join(dir, fmt.Sprintf("ngircd-%d.log", n))
	p, err := startProc("ngircd", dir, logPath, nil, bin, "--nodaemon", "-f", conf)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// ngircd logs this line only after its own bind succeeded, so a
	// connectable port is ours and not another process that raced us to it.
	listening := fmt.Sprintf("Now listening on [127.0.0.1]:%d ", port)
	err = waitFor(p, startTimeout, func() (bool, error) {
		b, _ := os.ReadFile(logPath)
		if !strings.Contains(string(b), listening) {
			return false, nil
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
	if err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}
