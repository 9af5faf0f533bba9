package registrar

import (
	"errors"
	"fmt"
	"testing"
)

func fmtAny(v any) string { return fmt.Sprint(v) }

func TestNames(t *testing.T) {
	if got := QueryMasterID("n1"); got != "quilt-qmd-n1" {
		t.Errorf("QueryMasterID = %q", got)
	}
	if got := SourceManagerID("libera"); got != "quilt-sm-libera" {
		t.Errorf("SourceManagerID = %q", got)
	}
	for addr, want := range map[string]bool{"": true, " embedded ": true, "EMBEDDED": true, "127.0.0.1:8500": false} {
		if IsEmbedded(addr) != want {
			t.Errorf("IsEmbedded(%q) = %v", addr, !want)
		}
	}
	for key, ok := range map[string]bool{"a": true, "a/b-c.d": true, "": false, "/a": false, "a/": false, "a//b": false, "a/./b": false, "../a": false} {
		if err := CheckKey(key); (err == nil) != ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("CheckKey(%q) = %v", key, err)
		}
	}
	if err := CheckRegistration(Registration{Name: "s"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("registration without id: %v", err)
	}
}
