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
	// No package of the Matrix stack may need cgo (the net package's
	// resolver may; it has a pure-Go fallback).
	out, err = exec.Command("go", "list", "-deps", "-f", "{{if .CgoFiles}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.Contains(p, "mautrix") || strings.Contains(p, "mau.fi") {
			t.Errorf("%s needs cgo", p)
		}
	}
}
