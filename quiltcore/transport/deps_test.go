package transport_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDeps keeps the networking layer free of the heavy dependencies other
// parts of quilt use (tailscale's deptest pattern): transport is imported by
// every source manager, so it must stay small, and the boundary "only
// transport opens sockets" only holds if transport itself stays generic.
func TestDeps(t *testing.T) {
	bad := map[string]string{
		"google.golang.org/grpc":             "the query-master link is not transport's business",
		"go.mongodb.org/mongo-driver":        "storage is querymaster's",
		"github.com/hashicorp/consul":        "the registrar is quiltcore/registrar's",
		"github.com/quilt/quilt/proto":       "transport carries bytes, not quilt messages",
		"github.com/quilt/quilt/querymaster": "imports go downward only",
	}
	pkgs := []string{
		"github.com/quilt/quilt/quiltcore/transport",
		"github.com/quilt/quilt/quiltcore/transport/fixture",
	}
	for _, pkg := range pkgs {
		out, err := exec.Command("go", append([]string{"list", "-deps"}, pkg)...).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := strings.Fields(string(out))
		if !slices.Contains(deps, "crypto/tls") {
			t.Fatalf("go list -deps %s does not list crypto/tls; is the output real? %v", pkg, deps)
		}
		for _, dep := range deps {
			for prefix, why := range bad {
				if dep == prefix || strings.HasPrefix(dep, prefix+"/") {
					t.Errorf("%s depends on %s: %s", pkg, dep, why)
				}
			}
		}
	}
}
