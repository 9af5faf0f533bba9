package quiltctl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
)

var smNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// topKeys are the smd.d keys above the [server NAME] sections.
var topKeys = map[string]bool{"protocol": true, "enabled": true, "connection_cycle": true, "description": true}

func (a *app) smCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sm add|check|list",
		Short: "Manage source-manager files (smd.d)",
	}
	cmd.AddCommand(a.smAddCmd(), a.smCheckCmd(), a.smListCmd())
	return cmd
}

func (a *app) loadConfig() (*config.Config, error) {
	return config.Load(config.Dir(a.configDir))
}

func (a *app) smAddCmd() *cobra.Command {
	var protocol, server string
	var sets []string
	cmd := &cobra.Command{
		Use:   "add NAME --protocol P [--server NAME] [--set key=value]...",
		Short: "Write a new validated smd.d/NAME.cfg",
		Long: `sm add writes [source_managers] config_dir/NAME.cfg for a new source manager,
then 'quilt-smd NAME' (or the init script: /etc/init.d/quilt-smd start NAME) runs it.

--set key=value sets a key: protocol, enabled, connection_cycle and
description go above the sections, anything else into [server SERVER]
(--server, default "main"); server.OTHER.key=value targets another server.
The file is written to a temporary file, validated exactly as quilt-smd will
(every problem listed), and only then moved into place; an existing NAME is
refused and nothing is left behind on failure.

Example:
  quiltctl sm add libera --protocol irc --server libera \
    --set host=irc.libera.chat --set port=6697 --set tls=true \
    --set nick=quiltbot --set channels='#quilt'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !smNameRE.MatchString(name) {
				return usagef("name %q: use lower-case letters, digits, - and _ (it becomes the file name)", name)
			}
			if protocol == "" {
				return usagef("--protocol is required (one of %s)", protocolList())
			}
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			text, err := smFile(protocol, server, sets)
			if err != nil {
				return err
			}
			path, err := installSM(cfg.Managers.ConfigDir, name, text)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "wrote %s; start it with quilt-smd %s (or the init script: /etc/init.d/quilt-smd start %s)\n", path, name, name)
			return nil
		},
	}
	cmd.Flags().StringVar(&protocol, "protocol", "", "protocol: "+protocolList())
	cmd.Flags().StringVar(&server, "server", "main", "name of the [server NAME] section --set keys go to")
	cmd.Flags().StringArrayVar(&sets, "set", nil, "key=value (repeatable)")
	return cmd
}

func protocolList() string {
	var ps []string
	for _, p := range config.Protocols {
		ps = append(ps, string(p))
	}
	return strings.Join(ps, ", ")
}

// smFile renders the smd.d file text.
func smFile(protocol, server string, sets []string) (string, error) {
	top := [][2]string{{"protocol", protocol}}
	servers := map[string][][2]string{server: nil}
	order := []string{server}
	for _, s := range sets {
		k, v, ok := strings.Cut(s, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return "", usagef("--set %q: want key=value", s)
		}
		if strings.ContainsAny(v, "\n\r") {
			return "", usagef("--set %s: values are one line", k)
		}
		switch {
		case k == "protocol":
			return "", usagef("give the protocol with --protocol, not --set")
		case topKeys[k]:
			top = append(top, [2]string{k, v})
		case strings.HasPrefix(k, "server."):
			rest := strings.TrimPrefix(k, "server.")
			sv, key, ok := strings.Cut(rest, ".")
			if !ok || sv == "" || key == "" {
				return "", usagef("--set %s: want server.NAME.key=value", k)
			}
			if _, seen := servers[sv]; !seen {
				order = append(order, sv)
			}
			servers[sv] = append(servers[sv], [2]string{key, v})
		default:
			servers[server] = append(servers[server], [2]string{k, v})
		}
	}
	var b strings.Builder
	b.WriteString("# Written by quiltctl sm add; edit freely, then check with quiltctl sm check.\n")
	for _, kv := range top {
		fmt.Fprintf(&b, "%s = %s\n", kv[0], kv[1])
	}
	for _, sv := range order {
		fmt.Fprintf(&b, "\n[server %s]\n", sv)
		for _, kv := range servers[sv] {
			fmt.Fprintf(&b, "%s = %s\n", kv[0], kv[1])
		}
	}
	return b.String(), nil
}

// installSM writes dir/NAME.cfg atomically: a temporary NAME.cfg in a
// private directory next to it is validated, then hard-linked into place
// (which fails if the name exists, even when another process races us)
// and the temporary removed.
func installSM(dir, name, text string) (string, error) {
	final := filepath.Join(dir, name+".cfg")
	if _, err := os.Stat(final); err == nil {
		return "", fmt.Errorf("%s already exists: pick another name, or edit it and run quiltctl sm check %s", final, final)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("[source_managers] config_dir %s: %w", dir, err)
	}
	tmpDir, err := os.MkdirTemp(dir, ".sm-add-")
	if err != nil {
		return "", fmt.Errorf("[source_managers] config_dir %s: %w", dir, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, name+".cfg")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return "", err
	}
	_, werr := f.WriteString(text)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return "", fmt.Errorf("writing %s: %w", tmp, err)
	}
	if _, err := config.CheckSourceManagerFile(tmp); err != nil {
		return "", fmt.Errorf("not installed, the configuration does not validate:\n%s", strings.ReplaceAll(err.Error(), tmp, final))
	}
	if err := os.Link(tmp, final); err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("%s already exists: pick another name", final)
		}
		return "", fmt.Errorf("installing %s: %w", final, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return final, nil
}

func (a *app) smCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE",
		Short: "Validate an smd.d file exactly as quilt-smd does",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := os.Stat(args[0]); err != nil {
				return err
			}
			sm, err := config.CheckSourceManagerFile(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: OK (%s, %d servers)\n", args[0], sm.Protocol, len(sm.Servers))
			return nil
		},
	}
}

func (a *app) smListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List smd.d files with their validity and attachment state",
		Long: `sm list shows every smd.d file of [source_managers] config_dir, whether it
validates, and what the query master knows of it (attached, detached, never
seen). Without a reachable query master it still lists the files, with
state "unknown", and exits 4.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			names, err := cfg.SourceManagers()
			if err != nil {
				return err
			}
			known := map[string]*quiltv1.SourceInfo{}
			ctx, cancel := a.withTimeout(a.ctx)
			defer cancel()
			var qerr error
			c, err := a.dial(ctx)
			if err == nil {
				defer c.Close()
				var srcs []*quiltv1.SourceInfo
				srcs, qerr = c.Sources(ctx, true)
				for _, s := range srcs {
					known[s.Name] = s
				}
			} else {
				qerr = err
			}
			type row struct{ name, file, protocol, valid, state, health, servers string }
			var rows []row
			for _, n := range names {
				r := row{name: n, file: filepath.Join(cfg.Managers.ConfigDir, n+".cfg"), valid: "ok", state: "not seen", health: "-", protocol: "-", servers: "-"}
				sm, err := cfg.LoadSourceManager(n)
				if err != nil {
					r.valid = "INVALID: " + firstLine(err.Error())
				} else {
					r.protocol = string(sm.Protocol)
					var sv []string
					for _, s := range sm.Servers {
						sv = append(sv, s.Name)
					}
					r.servers = strings.Join(sv, ",")
					if !sm.Enabled {
						r.state = "disabled"
					}
				}
				switch s := known[n]; {
				case qerr != nil:
					r.state = "unknown"
				case s != nil && s.Attached:
					r.state = "attached since " + fmtTime(s.AttachedSince.AsTime())
					r.health = dash(s.Health)
				case s != nil:
					r.state = "detached at " + fmtTime(s.DetachedAt.AsTime())
				}
				rows = append(rows, r)
			}
			// Sources attached without a file here (another machine's smd.d).
			var extra []string
			for n := range known {
				if !contains(names, n) {
					extra = append(extra, n)
				}
			}
			sort.Strings(extra)
			for _, n := range extra {
				s := known[n]
				st := "detached"
				if s.Attached {
					st = "attached since " + fmtTime(s.AttachedSince.AsTime())
				}
				rows = append(rows, row{name: n, file: "(not in " + cfg.Managers.ConfigDir + ")", protocol: s.Protocol, valid: "-", state: st, health: dash(s.Health), servers: "-"})
			}
			if a.output != "table" {
				for _, r := range rows {
					m := &quiltv1.SourceInfo{Name: r.name, Protocol: r.protocol, Health: r.health}
					if s := known[r.name]; s != nil {
						m = s
					}
					if err := a.emit(m); err != nil {
						return err
					}
				}
			} else {
				t := newTable("NAME", "PROTOCOL", "SERVERS", "FILE", "VALID", "STATE", "HEALTH")
				for _, r := range rows {
					t.add(r.name, r.protocol, r.servers, r.file, r.valid, r.state, r.health)
				}
				t.print(a.stdout)
			}
			if qerr != nil {
				return fmt.Errorf("attachment state unknown: %w", qerr)
			}
			return nil
		},
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
