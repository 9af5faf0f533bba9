// Package open picks the registrar backend from plain options: Consul when
// [registrar] address names an agent, otherwise the embedded registrar — in
// process for the query master, or through the query master's gRPC service
// (registrar/remote) for quilt-smd and quiltctl. It lives outside package
// registrar because the backends import registrar.
package open

import (
	"context"

	"google.golang.org/grpc"

	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/registrar/consul"
	"github.com/quilt/quilt/quiltcore/registrar/embedded"
	"github.com/quilt/quilt/quiltcore/registrar/remote"
)

// New returns the registrar opts select:
//   - Address is a Consul agent: registrar/consul (fails with an error
//     wrapping registrar.ErrUnreachable when the agent does not answer);
//   - Address is "" or "embedded" and QueryMaster is empty: a new
//     registrar/embedded (this process is the query master), KV persisted
//     in DataDir when set;
//   - Address is "" or "embedded" and QueryMaster is set: a read-only
//     registrar/remote client of that query master, dialled with dialOpts
//     (plaintext when none).
func New(ctx context.Context, opts registrar.Options, dialOpts ...grpc.DialOption) (registrar.Registrar, error) {
	if !registrar.IsEmbedded(opts.Address) {
		return consul.New(ctx, consul.Options{
			Address:    opts.Address,
			Token:      opts.Token,
			TokenFile:  opts.TokenFile,
			Datacenter: opts.Datacenter,
			TLS:        opts.TLS,
			Logger:     opts.Logger,
		})
	}
	if opts.QueryMaster != "" {
		return remote.Dial(opts.QueryMaster, remote.Options{Logger: opts.Logger, DialOptions: dialOpts})
	}
	return embedded.New(embedded.Options{DataDir: opts.DataDir, Logger: opts.Logger})
}
