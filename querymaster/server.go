package querymaster

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/registrar"
)

// Client RPCs other than Status answer only on the leader; a standby
// returns FAILED_PRECONDITION naming the leader so clients re-resolve.

// Act routes an action; see Router.Act.
func (m *Master) Act(ctx context.Context, req *quiltv1.ActRequest) (*quiltv1.ActionResult, error) {
	if _, err := m.leaderEpoch(ctx); err != nil {
		return nil, err
	}
	timeout := time.Duration(req.TimeoutSeconds) * time.Second
	res, err := m.router.Act(ctx, req.Action, timeout)
	if err != nil {
		m.log.Info("act failed", "source", req.GetAction().GetSource(), "server", req.GetAction().GetServer(),
			"kind", req.GetAction().GetKind().String(), "requested_by", req.GetAction().GetRequestedBy(), "err", err)
	}
	return res, err
}

// ControlServer stores and delivers a server control; see Router.Control.
func (m *Master) ControlServer(ctx context.Context, req *quiltv1.ControlServerRequest) (*quiltv1.ControlServerResponse, error) {
	if _, err := m.leaderEpoch(ctx); err != nil {
		return nil, err
	}
	return m.router.Control(ctx, req)
}

// ListSources lists attached source managers with their live server
// states, then (include_detached) the others the store knows.
func (m *Master) ListSources(ctx context.Context, req *quiltv1.ListSourcesRequest) (*quiltv1.ListSourcesResponse, error) {
	if _, err := m.leaderEpoch(ctx); err != nil {
		return nil, err
	}
	recs, err := m.opts.Store.Sources(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: listing sources: %v", err)
	}
	first := map[string]time.Time{}
	for _, r := range recs {
		first[r.Name] = r.FirstAttached
	}
	resp := &quiltv1.ListSourcesResponse{}
	attached := map[string]bool{}
	for _, s := range m.router.snapshot() {
		attached[s.name] = true
		fa := first[s.name]
		if fa.IsZero() {
			fa = s.since
		}
		health := ""
		if m.opts.Registrar != nil {
			health = registrar.HealthPassing
		}
		resp.Sources = append(resp.Sources, &quiltv1.SourceInfo{
			Name:          s.name,
			Protocol:      s.protocol,
			Version:       s.version,
			Node:          s.node,
			Attached:      true,
			AttachedSince: tspb(s.since),
			FirstAttached: tspb(fa),
			LastAttached:  tspb(s.since),
			Servers:       s.serverList(),
			EventsStored:  s.stored.Load(),
			Health:        health,
		})
	}
	if req.IncludeDetached {
		for _, r := range recs {
			if attached[r.Name] {
				continue
			}
			resp.Sources = append(resp.Sources, &quiltv1.SourceInfo{
				Name:          r.Name,
				Protocol:      r.Protocol,
				Version:       r.Version,
				Node:          r.Node,
				AttachedSince: tspb(r.LastAttached),
				FirstAttached: tspb(r.FirstAttached),
				LastAttached:  tspb(r.LastAttached),
				DetachedAt:    tspb(r.DetachedAt),
				Servers:       r.Servers,
			})
		}
	}
	return resp, nil
}
