package quiltctl

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quilt/quilt/clients/quilt"
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/model"
	"github.com/quilt/quilt/quiltcore/version"
)

// run wraps a command body with a connected client and --timeout.
func (a *app) run(fn func(ctx context.Context, c *quilt.Client) error) error {
	ctx, cancel := a.withTimeout(a.ctx)
	defer cancel()
	c, err := a.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(ctx, c)
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show which query master answers and whether it leads",
		Long: `status asks the query master found through the registrar (or --master) who
it is. When no query master can be found, quiltctl exits with 4: check that
quilt-qmd runs, that [registrar] address in quilt.cfg names the same Consul
agent (or "embedded" with the right [query_master] listen), or give --master.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.run(func(ctx context.Context, c *quilt.Client) error {
				st, err := c.Status(ctx)
				if err != nil {
					return err
				}
				if a.output != "table" {
					return a.emit(st)
				}
				t := newTable("MASTER", "ADDRESS", "LEADER", "VERSION", "REGISTRAR", "STORE", "SOURCES", "STARTED")
				t.add(st.MasterId, c.Address(), strconv.FormatBool(st.Leader), st.Version, st.Registrar, st.Store,
					strconv.Itoa(int(st.SourcesAttached)), fmtTime(st.Started.AsTime()))
				t.print(a.stdout)
				return nil
			})
		},
	}
}

func (a *app) sourcesCmd() *cobra.Command {
	var attachedOnly bool
	cmd := &cobra.Command{
		Use:   "sources",
		Short: "List source managers, their servers and connection state",
		Long: `sources lists every source manager the query master knows: attached ones
with their servers' live state, and (unless --attached) detached ones from the
store. If it fails with "no query master found", quilt-qmd is not running or
quilt.cfg points elsewhere: see 'quiltctl status -h'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.run(func(ctx context.Context, c *quilt.Client) error {
				srcs, err := c.Sources(ctx, !attachedOnly)
				if err != nil {
					return err
				}
				if a.output != "table" {
					for _, s := range srcs {
						if err := a.emit(s); err != nil {
							return err
						}
					}
					return nil
				}
				t := newTable("SOURCE", "PROTOCOL", "ATTACHED", "SERVER", "STATE", "SINCE", "LAG", "NODE", "VERSION")
				for _, s := range srcs {
					att := "no"
					if s.Attached {
						att = "yes"
					}
					if len(s.Servers) == 0 {
						t.add(s.Name, s.Protocol, att, "-", "-", "-", "-", dash(s.Node), dash(s.Version))
					}
					for _, sv := range s.Servers {
						t.add(s.Name, s.Protocol, att, sv.Name, serverState(sv.State), fmtAgo(sv.Since.AsTime()),
							lag(sv), dash(s.Node), dash(s.Version))
					}
				}
				t.print(a.stdout)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&attachedOnly, "attached", false, "only attached source managers")
	return cmd
}

func serverState(s quiltv1.ServerState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "SERVER_STATE_"))
}

func lag(sv *quiltv1.ServerStatus) string {
	if sv.Lag == nil {
		return "-"
	}
	return sv.Lag.AsDuration().Round(time.Millisecond).String()
}

func (a *app) patternsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "patterns",
		Short: "List the query patterns ([patterns] dir) and their variables",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.run(func(ctx context.Context, c *quilt.Client) error {
				ps, err := c.Patterns(ctx)
				if err != nil {
					return err
				}
				if a.output != "table" {
					for _, p := range ps {
						if err := a.emit(p); err != nil {
							return err
						}
					}
					return nil
				}
				t := newTable("PATTERN", "KIND", "VARIABLES", "HELP")
				for _, p := range ps {
					var vs []string
					for _, v := range p.Vars {
						s := v.Name + ":" + v.Type
						switch {
						case v.Required:
							s += "!"
						case v.Default != "":
							s += "=" + v.Default
						}
						vs = append(vs, s)
					}
					t.add(p.Name, p.Kind, strings.Join(vs, " "), p.Help)
				}
				t.print(a.stdout)
				return nil
			})
		},
	}
}

func (a *app) historyCmd() *cobra.Command {
	var limit int
	var mine bool
	cmd := &cobra.Command{
		Use:   "history [ID]",
		Short: "List recent queries, or show one",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.run(func(ctx context.Context, c *quilt.Client) error {
				if len(args) == 1 {
					r, err := c.HistoryRecord(ctx, args[0])
					if err != nil {
						return err
					}
					if a.output != "table" {
						return a.emit(r)
					}
					printRecord(a, r)
					return nil
				}
				who := ""
				if mine {
					who = c.Identity()
				}
				recs, err := c.History(ctx, limit, who)
				if err != nil {
					return err
				}
				if a.output != "table" {
					for _, r := range recs {
						if err := a.emit(r); err != nil {
							return err
						}
					}
					return nil
				}
				t := newTable("ID", "STARTED", "KIND", "PATTERN", "STATE", "ROWS", "DURATION", "BY", "ERROR")
				for _, r := range recs {
					t.add(r.Id, fmtTime(r.Started.AsTime()), dash(r.Kind), dash(r.Pattern), queryState(r.State),
						strconv.FormatInt(r.Rows, 10), r.Duration.AsDuration().Round(time.Microsecond).String(), dash(r.RequestedBy), dash(r.Error))
				}
				t.print(a.stdout)
				return nil
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 20, "how many recent queries")
	cmd.Flags().BoolVar(&mine, "mine", false, "only queries made as this user@host")
	return cmd
}

func queryState(s quiltv1.QueryState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "QUERY_STATE_"))
}

func printRecord(a *app, r *quiltv1.QueryRecord) {
	w := a.stdout
	fmt.Fprintf(w, "id:           %s\n", r.Id)
	fmt.Fprintf(w, "kind:         %s\n", dash(r.Kind))
	fmt.Fprintf(w, "pattern:      %s\n", dash(r.Pattern))
	if len(r.Vars) > 0 {
		keys := make([]string, 0, len(r.Vars))
		for k := range r.Vars {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var vs []string
		for _, k := range keys {
			vs = append(vs, k+"="+r.Vars[k])
		}
		fmt.Fprintf(w, "vars:         %s\n", strings.Join(vs, " "))
	}
	fmt.Fprintf(w, "requested by: %s\n", dash(r.RequestedBy))
	fmt.Fprintf(w, "started:      %s\n", fmtTime(r.Started.AsTime()))
	fmt.Fprintf(w, "duration:     %s\n", r.Duration.AsDuration())
	fmt.Fprintf(w, "state:        %s\n", queryState(r.State))
	fmt.Fprintf(w, "rows:         %d\n", r.Rows)
	if r.Error != "" {
		fmt.Fprintf(w, "error:        %s\n", r.Error)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "problem:      %s: %s: %s\n", p.Source, p.Reason, p.Error)
	}
	if r.Request != nil {
		b, _ := jsonOpts.Marshal(r.Request)
		fmt.Fprintf(w, "request:      %s\n", b)
	}
}

var actionKinds = map[string]quiltv1.ActionKind{
	"send": quiltv1.ActionKind_ACTION_KIND_SEND, "join": quiltv1.ActionKind_ACTION_KIND_JOIN,
	"part": quiltv1.ActionKind_ACTION_KIND_PART, "kick": quiltv1.ActionKind_ACTION_KIND_KICK,
	"topic": quiltv1.ActionKind_ACTION_KIND_TOPIC, "raw": quiltv1.ActionKind_ACTION_KIND_RAW,
	"reconnect": quiltv1.ActionKind_ACTION_KIND_RECONNECT,
}

func (a *app) actCmd() *cobra.Command {
	var user, key string
	var actTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "act SOURCE/SERVER KIND TARGET [TEXT...]",
		Short: "Send an action: send, join, part, kick, topic, raw, reconnect",
		Long: `act asks a source manager to do something on one of its servers and waits
for the result. KIND is send, join, part, kick (with --user), topic, raw or
reconnect; TARGET is the channel or user it is about (raw: any word, the line
is TEXT). Exit 3 when the source or server is unknown, 4 when the source
manager is not attached, 1 when it tried and failed.`,
		Args: cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, srv, err := splitSourceServer(args[0])
			if err != nil {
				return err
			}
			kind, ok := actionKinds[strings.ToLower(args[1])]
			if !ok {
				return usagef("action kind %q: want one of send, join, part, kick, topic, raw, reconnect", args[1])
			}
			act := &quiltv1.Action{Source: src, Server: srv, Kind: kind, Target: args[2], Text: strings.Join(args[3:], " "), User: user, Key: key}
			if kind == quiltv1.ActionKind_ACTION_KIND_KICK && user == "" {
				return usagef("kick needs --user NICK")
			}
			return a.act(act, actTimeout)
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "kick: the user to kick")
	cmd.Flags().StringVar(&key, "key", "", "join: channel key")
	cmd.Flags().DurationVar(&actTimeout, "act-timeout", 0, "how long the source manager may take (0: the master's act_timeout)")
	return cmd
}

func (a *app) act(act *quiltv1.Action, timeout time.Duration) error {
	return a.run(func(ctx context.Context, c *quilt.Client) error {
		res, err := c.Act(ctx, act, timeout)
		if err != nil {
			return err
		}
		if a.output != "table" {
			if err := a.emit(res); err != nil {
				return err
			}
		} else if res.Ok {
			fmt.Fprintf(a.stdout, "ok %s (%d sent)\n", res.ActionId, res.Sent)
		}
		if !res.Ok {
			return fmt.Errorf("%s/%s refused the action %s: %s", act.Source, act.Server, res.ActionId, res.Error)
		}
		return nil
	})
}

func (a *app) sendCmd() *cobra.Command {
	var notice, emote bool
	cmd := &cobra.Command{
		Use:   "send SOURCE/SERVER TARGET TEXT...",
		Short: "Send a message (or --notice, --emote) to a channel or user",
		Args:  cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, srv, err := splitSourceServer(args[0])
			if err != nil {
				return err
			}
			if notice && emote {
				return usagef("--notice and --emote exclude each other")
			}
			style := quiltv1.SendStyle_SEND_STYLE_MESSAGE
			if notice {
				style = quiltv1.SendStyle_SEND_STYLE_NOTICE
			} else if emote {
				style = quiltv1.SendStyle_SEND_STYLE_EMOTE
			}
			return a.act(&quiltv1.Action{Source: src, Server: srv, Kind: quiltv1.ActionKind_ACTION_KIND_SEND,
				Target: args[1], Text: strings.Join(args[2:], " "), Style: style}, 0)
		},
	}
	cmd.Flags().BoolVar(&notice, "notice", false, "send as a notice")
	cmd.Flags().BoolVar(&emote, "emote", false, "send as an emote (/me)")
	return cmd
}

func (a *app) serverCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "server enable|disable|reconnect SOURCE/SERVER",
		Short: "Enable, disable or reconnect a server (stored; survives restarts)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ops := map[string]quiltv1.ServerControlOp{
				"enable": quiltv1.ServerControlOp_SERVER_CONTROL_OP_ENABLE, "disable": quiltv1.ServerControlOp_SERVER_CONTROL_OP_DISABLE,
				"reconnect": quiltv1.ServerControlOp_SERVER_CONTROL_OP_RECONNECT,
			}
			op, ok := ops[args[0]]
			if !ok {
				return usagef("server %q: want enable, disable or reconnect", args[0])
			}
			src, srv, err := splitSourceServer(args[1])
			if err != nil {
				return err
			}
			return a.run(func(ctx context.Context, c *quilt.Client) error {
				res, err := c.ControlServer(ctx, src, srv, op)
				if err != nil {
					return err
				}
				if a.output != "table" {
					return a.emit(res)
				}
				how := "stored; the source manager is not attached and will apply it when it attaches"
				if res.Delivered {
					how = "delivered to the source manager"
				}
				fmt.Fprintf(a.stdout, "%s %s/%s: %s (enabled=%v)\n", args[0], src, srv, how, res.Desired.GetEnabled())
				return nil
			})
		},
	}
	return cmd
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print quiltctl's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(a.stdout, "quiltctl %s\n", version.Version)
			return nil
		},
	}
}

func (a *app) tailCmd() *cobra.Command {
	f := &filterFlags{}
	var replay string
	cmd := &cobra.Command{
		Use:   "tail [filters]",
		Short: "Follow live events (reconnects and follows the leader)",
		Long: `tail prints events as the query master stores them, until interrupted.
With --replay it first prints stored events since then (a duration ago or an
RFC 3339 time). It re-subscribes by itself across query-master restarts and
leader changes, without gaps or duplicates. --timeout does not apply unless
given explicitly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := f.filter(time.Now())
			if err != nil {
				return err
			}
			var since time.Time
			if replay != "" {
				if since, err = parseTime(replay); err != nil {
					return usagef("--replay: %v", err)
				}
			}
			ctx := a.ctx
			if cmd.Flags().Changed("timeout") && a.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, a.timeout)
				defer cancel()
			}
			c, err := a.dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			err = c.Subscribe(ctx, quilt.SubscribeOptions{Filter: filter, ReplaySince: since,
				OnReconnect: func(err error) { fmt.Fprintf(a.stderr, "quiltctl: stream broke (%v); re-subscribing\n", errText(err)) }},
				func(e *quiltv1.Event) error {
					if a.output != "table" {
						return a.emit(e)
					}
					fmt.Fprintln(a.stdout, eventLine(e))
					return nil
				})
			if ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&replay, "replay", "", "first print stored events since (duration ago or RFC 3339)")
	return cmd
}

func errText(err error) string {
	if err == nil {
		return "closed"
	}
	return err.Error()
}

// eventLine is the one-line human form of an event.
func eventLine(e *quiltv1.Event) string {
	where := e.Source + "/" + e.Server
	if e.Channel != "" {
		where += "/" + e.Channel
	}
	who := e.GetUser().GetTransient()
	text := e.Text
	if e.TargetUser != nil {
		text = strings.TrimSpace(e.TargetUser.GetTransient() + " " + text)
	}
	return fmt.Sprintf("%s %s %s <%s> %s", e.Time.AsTime().Local().Format("15:04:05.000"), where, model.KindName(e.Kind), who, text)
}
