package quiltctl

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/quilt/quilt/clients/quilt"
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/model"
)

// filterFlags are the event filter flags shared by query and tail.
type filterFlags struct {
	sources               []string
	server, channel, user string
	kinds, text, regex    string
	since, until          string
}

func (f *filterFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringSliceVar(&f.sources, "source", nil, "source manager(s), comma-separated")
	fl.StringVar(&f.server, "server", "", "server name within the source")
	fl.StringVar(&f.channel, "channel", "", "channel or room")
	fl.StringVar(&f.user, "user", "", "user by any of the four names; * and ? are wildcards")
	fl.StringVar(&f.kinds, "kind", "", "event kinds, comma-separated ("+strings.Join(model.KindNames(), ", ")+")")
	fl.StringVar(&f.text, "text", "", "text contains (case-insensitive)")
	fl.StringVar(&f.regex, "regex", "", "text matches this RE2 regular expression")
	fl.StringVar(&f.since, "since", "", "from: a duration ago (2h) or an RFC 3339 time")
	fl.StringVar(&f.until, "until", "", "until: a duration ago or an RFC 3339 time")
}

func parseTime(s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q: want a duration ago (90m, 24h) or an RFC 3339 time (2026-01-02T15:04:05Z)", s)
}

func (f *filterFlags) filter(now time.Time) (*quiltv1.EventFilter, error) {
	out := &quiltv1.EventFilter{Sources: f.sources, Server: f.server, Channel: f.channel, User: f.user, Text: f.text, TextRegex: f.regex}
	ks, err := model.ParseKinds(f.kinds)
	if err != nil {
		return nil, usagef("--kind: %v", err)
	}
	out.Kinds = ks
	if f.since != "" {
		t, err := parseTime(f.since)
		if err != nil {
			return nil, usagef("--since %v", err)
		}
		out.Since = timestamppb.New(t)
	}
	if f.until != "" {
		t, err := parseTime(f.until)
		if err != nil {
			return nil, usagef("--until %v", err)
		}
		out.Until = timestamppb.New(t)
	}
	return out, nil
}

var queryKinds = []string{"presence", "members", "channels", "servers", "events", "lastseen", "sources"}

func (a *app) queryCmd() *cobra.Command {
	f := &filterFlags{}
	var pattern, pageToken string
	var vars []string
	var limit int
	var oldestFirst bool
	var sourceTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "query KIND [flags] | query -p PATTERN -v NAME=VALUE...",
		Short: "Run a query: presence, members, channels, servers, events, lastseen, sources",
		Long: `query runs one query kind, or a named pattern (see 'quiltctl patterns').

Live kinds ask every attached source manager (or --source) and wait at most
--source-timeout for each; a source that does not answer is listed after the
rows and quiltctl exits with 5:
  presence   where is --user (any name or glob) right now
  members    who is in --channel
  channels   channels joined, with topic
  servers    connection state of each server
History kinds read the store:
  events     stored events, newest first (--oldest-first), --limit per page;
             the next page's token is printed on stderr
  lastseen   where and when --user was last seen, and what they last said
  sources    source managers known to the query master

Examples:
  quiltctl query presence --user alice
  quiltctl query events --channel '#ops' --since 2h --kind message --text deploy
  quiltctl query -p lastseen -v user=alice`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &quiltv1.QueryRequest{Limit: int32(limit), OldestFirst: oldestFirst, PageToken: pageToken}
			switch {
			case pattern != "" && len(args) > 0:
				return usagef("give a KIND or -p PATTERN, not both")
			case pattern != "":
				req.Pattern = pattern
				req.Vars = map[string]string{}
				for _, v := range vars {
					k, val, ok := strings.Cut(v, "=")
					if !ok || k == "" {
						return usagef("-v %q: want NAME=VALUE", v)
					}
					req.Vars[k] = val
				}
			case len(args) == 0:
				return usagef("missing KIND: one of %s, or -p PATTERN", strings.Join(queryKinds, ", "))
			default:
				req.Kind = args[0]
				if len(vars) > 0 {
					return usagef("-v is for patterns (-p)")
				}
			}
			filter, err := f.filter(time.Now())
			if err != nil {
				return err
			}
			req.Filter = filter
			if sourceTimeout > 0 {
				req.SourceTimeout = durationpb.New(sourceTimeout)
			}
			return a.run(func(ctx context.Context, c *quilt.Client) error { return a.query(ctx, c, req) })
		},
	}
	f.register(cmd)
	fl := cmd.Flags()
	fl.StringVarP(&pattern, "pattern", "p", "", "run this pattern")
	fl.StringArrayVarP(&vars, "var", "v", nil, "pattern variable NAME=VALUE (repeatable)")
	fl.IntVar(&limit, "limit", 0, "history kinds: rows per page (0: server default, 100)")
	fl.BoolVar(&oldestFirst, "oldest-first", false, "history kinds: oldest first")
	fl.StringVar(&pageToken, "page", "", "history kinds: page token from a previous query")
	fl.DurationVar(&sourceTimeout, "source-timeout", 0, "live kinds: wait this long for each source (0: [query_master] source_timeout)")
	return cmd
}

func (a *app) query(ctx context.Context, c *quilt.Client, req *quiltv1.QueryRequest) error {
	sp := a.startSpinner("querying " + req.Kind + req.Pattern)
	var kind string
	var t *table
	var problems []*quiltv1.SourceProblem
	var done *quiltv1.QueryDone
	var qid string
	for res, err := range c.Query(ctx, req) {
		if err != nil {
			sp.end()
			return err
		}
		if a.output != "table" {
			sp.end()
			if err := a.emit(res); err != nil {
				return err
			}
		}
		switch r := res.Result.(type) {
		case *quiltv1.QueryResult_Header:
			kind, qid = r.Header.Kind, r.Header.QueryId
			t = headerFor(kind)
		case *quiltv1.QueryResult_Problem:
			problems = append(problems, r.Problem)
		case *quiltv1.QueryResult_Done:
			done = r.Done
		default:
			if t != nil {
				t.add(rowCells(res)...)
			}
		}
	}
	sp.end()
	if len(problems) > 0 {
		a.partial = true
	}
	if a.output != "table" {
		return nil
	}
	if t != nil {
		t.print(a.stdout)
	}
	for _, p := range problems {
		fmt.Fprintf(a.stderr, "quiltctl: source %s did not answer: %s: %s\n", p.Source, p.Reason, p.Error)
	}
	if done != nil {
		fmt.Fprintf(a.stderr, "%d rows in %s (query %s)\n", done.Rows, done.Duration.AsDuration().Round(time.Microsecond), qid)
		if done.NextPageToken != "" {
			fmt.Fprintf(a.stderr, "more: add --page %s\n", done.NextPageToken)
		}
	}
	return nil
}

func headerFor(kind string) *table {
	switch kind {
	case "presence", "members":
		return newTable("SOURCE", "SERVER", "CHANNEL", "NICK", "USER", "MODES", "SINCE")
	case "channels":
		return newTable("SOURCE", "SERVER", "CHANNEL", "MEMBERS", "TOPIC")
	case "servers":
		return newTable("SOURCE", "SERVER", "STATE", "SINCE", "LAG", "ADDRESS", "CHANNELS", "ERROR")
	case "events":
		return newTable("TIME", "SOURCE", "SERVER", "CHANNEL", "KIND", "NICK", "USER", "TEXT")
	case "lastseen":
		return newTable("USER", "SEEN", "SOURCE", "SERVER", "CHANNEL", "KIND", "LAST SAID")
	case "sources":
		return newTable("SOURCE", "PROTOCOL", "ATTACHED", "SERVERS", "NODE", "VERSION", "EVENTS")
	}
	return newTable("ROW")
}

func member(source, server, channel string, m *quiltv1.Member) []string {
	u := m.GetUser()
	modes := strings.Join(m.GetModes(), "")
	since := "-"
	if m.GetSince() != nil {
		since = fmtAgo(m.GetSince().AsTime())
	}
	return []string{source, server, dash(channel), u.GetTransient(), dash(u.GetPersistent()), dash(modes), since}
}

func rowCells(res *quiltv1.QueryResult) []string {
	switch r := res.Result.(type) {
	case *quiltv1.QueryResult_Presence:
		p := r.Presence
		return member(p.Source, p.Server, p.Channel, p.Member)
	case *quiltv1.QueryResult_Member:
		p := r.Member
		return member(p.Source, p.Server, p.Channel, p.Member)
	case *quiltv1.QueryResult_Channel:
		ch := r.Channel
		return []string{ch.Source, ch.Server, ch.GetInfo().GetName(), strconv.Itoa(int(ch.GetInfo().GetMemberCount())), dash(ch.GetInfo().GetTopic())}
	case *quiltv1.QueryResult_Server:
		s := r.Server.GetStatus()
		return []string{r.Server.Source, s.GetName(), serverState(s.GetState()), fmtAgo(s.GetSince().AsTime()), lag(s), dash(s.GetAddress()),
			strconv.Itoa(int(s.GetChannels())), dash(s.GetLastError())}
	case *quiltv1.QueryResult_Event:
		e := r.Event
		return []string{fmtTime(e.Time.AsTime()), e.Source, e.Server, dash(e.Channel), model.KindName(e.Kind),
			dash(e.GetUser().GetTransient()), dash(e.GetUser().GetPersistent()), e.Text}
	case *quiltv1.QueryResult_LastSeen:
		l := r.LastSeen
		said := "-"
		if m := l.GetLastMessage(); m != nil {
			said = m.Text
		}
		return []string{l.GetUser().GetTransient(), fmtAgo(l.Time.AsTime()), l.Source, l.Server, dash(l.Channel), model.KindName(l.Kind), said}
	case *quiltv1.QueryResult_Source:
		s := r.Source
		var names []string
		for _, sv := range s.Servers {
			names = append(names, sv.Name+"("+serverState(sv.State)+")")
		}
		sort.Strings(names)
		att := "no"
		if s.Attached {
			att = "yes"
		}
		return []string{s.Name, s.Protocol, att, dash(strings.Join(names, " ")), dash(s.Node), dash(s.Version), strconv.FormatUint(s.EventsStored, 10)}
	}
	return []string{fmt.Sprint(res)}
}
