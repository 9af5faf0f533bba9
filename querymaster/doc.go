// Package querymaster is the query master library behind quilt-qmd.
//
// Master serves SourceLink.Attach (one stream per source manager: Hello →
// Welcome, event batches stored through store.Store and acknowledged only
// after InsertEvents returned, acks cumulative and in order) and the
// QueryMaster client service (Subscribe, Act, ControlServer, ListSources,
// Status; the query RPCs belong to querymaster/query). Run holds the
// registrar's leader lock; a master that loses it steps down at once: every
// stream ends with FAILED_PRECONDITION and client RPCs name the leader.
//
// Health: grpc.health.v1 reports SERVING for "" and quilt.v1.QueryMaster on
// leaders and standbys alike (a standby is healthy, it just does not lead;
// clients follow the leader key, not health), and SERVING for
// LeaderHealthService only on the leader.
//
// For the query layer, Router.LiveQuery sends a LiveQuery to attached
// source managers and streams back SourceReply values, one final item per
// source (a reply with Done, or a SourceProblem: detached, timeout, error).
package querymaster
