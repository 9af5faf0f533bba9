package matrix

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoEncryptionMachineNoCgo keeps the driver off mautrix's end-to-end
// encryption machine (maunium.net/go/mautrix/crypto, libolm through cgo).
// mautrix's client package itself imports a few pure-Go helpers under
// crypto/ (canonicaljson, signatures, backup types); those are allowed.
func TestNoEncryptionMachineNoCgo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "maunium.net/go/mautrix/crypto" || strings.HasPrefix(p, "maunium.net/go/mautrix/crypto/libolm") ||
			strings.HasPrefix(p, "maunium.net/go/mautrix/crypto/cryptohelper") {
			t.Errorf("matrix driver depends on %s", p)
		}
	}
	cmd := exec.Command("go", "build", "-o", "/dev/null", ".")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("build with CGO_ENABLED=0: %v\n%s", err, out)
	}
}
