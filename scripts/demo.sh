#!/usr/bin/env bash
# demo.sh - run quilt on one machine with nothing installed but Go: a local IRC
# server (ngircd from Debian), quilt-qmd on its embedded registrar and store,
# one IRC source manager; play a short conversation, then show what quilt saw.
#
# Usage:  scripts/demo.sh start|stop|status
#   start   (make demo) build, start everything, talk, print queries; the cluster
#           keeps running so you can try quiltctl yourself.
#   stop    (make stop) stop the daemons and the IRC server.
#
# Everything lives under $QUILT_DEMO_DIR (default <repo>/.cache/demo): the
# config dir etc/ (quilt.cfg + smd.d/irc.cfg), data/, run/ (pid files), log/.
# Ports: IRC $QUILT_IRC_PORT (16667), query master $QUILT_DEMO_PORT (7420).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO=${QUILT_DEMO_DIR:-$ROOT/.cache/demo}
IRC_PORT=${QUILT_IRC_PORT:-16667}
QM_PORT=${QUILT_DEMO_PORT:-7420}
CFG=$DEMO/etc
BIN=$ROOT/bin
export QUILT_TEST_STATE=$DEMO/servers QUILT_IRC_PORT=$IRC_PORT
export QUILT_CFG_DIR=$CFG

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
quiltctl() { "$BIN/quiltctl" --config "$CFG" "$@"; }

write_config() {
  mkdir -p "$CFG/smd.d" "$DEMO/data" "$DEMO/run" "$DEMO/log"
  cat > "$CFG/quilt.cfg" <<CFG
; written by scripts/demo.sh: one machine, embedded registrar and store
[registrar]
address = embedded

[query_master]
listen = 127.0.0.1:$QM_PORT

[mongodb]
data_dir = $DEMO/data

[log]
level = info

[daemon]
pid_dir = $DEMO/run
CFG
  cat > "$CFG/smd.d/irc.cfg" <<CFG
; the local ngircd started by scripts/testservers.sh
protocol = irc
description = demo IRC network on 127.0.0.1:$IRC_PORT

[server local]
host = 127.0.0.1
port = $IRC_PORT
tls = false
nick = quilt
channels = #quilt, #ops
reconnect_min = 1s
reconnect_max = 10s
CFG
  local d
  for d in patterns.d tests; do      # shipped query patterns and cluster test cases
    rm -rf "${CFG:?}/$d"; cp -r "$ROOT/etc/quilt/$d" "$CFG/$d"
  done
}

pid_of() { local f=$DEMO/run/$1.pid; [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }

start_daemon() { # start_daemon NAME CMD...   (detached; the daemon writes its own pid file)
  local name=$1; shift
  if pid_of "$name" >/dev/null; then echo "$name already running (pid $(pid_of "$name"))"; return 0; fi
  ( exec setsid "$@" </dev/null >>"$DEMO/log/$name.log" 2>&1 ) &
  local i; for i in $(seq 1 100); do
    pid_of "$name" >/dev/null && grep -q 'ready' "$DEMO/log/$name.log" && { echo "$name started (pid $(pid_of "$name"), log $DEMO/log/$name.log)"; return 0; }
    sleep 0.1
  done
  tail -20 "$DEMO/log/$name.log" >&2; die "$name did not become ready"
}

# irc_client NICK: a human-like IRC client on a bash /dev/tcp socket; reads
# commands on fd 3 from the caller (one IRC line each), answers PINGs.
irc_session() { # irc_session NICK LINE... : register, send each line with a pause, quit
  local nick=$1; shift
  exec 5<>"/dev/tcp/127.0.0.1/$IRC_PORT"
  printf 'NICK %s\r\nUSER %s 0 * :demo %s\r\n' "$nick" "$nick" "$nick" >&5
  local line
  while IFS= read -r -t 10 line <&5; do
    case $line in PING*) printf 'PONG %s\r\n' "${line#PING }" >&5;; *" 001 "*) break;; esac
  done
  for line in "$@"; do
    if [ "$line" = sleep ]; then sleep 1; continue; fi
    printf '%s\r\n' "$line" >&5; sleep 0.4
  done
  printf 'QUIT :bye\r\n' >&5; sleep 0.3
  exec 5>&-
}

start() {
  say "installing what is missing (ngircd) and building quilt"
  "$ROOT/scripts/ensure-deps.sh" ngircd
  make -C "$ROOT" --no-print-directory build
  if ! pid_of quilt-qmd >/dev/null; then
    rm -rf "$DEMO/data"   # a fresh run shows a fresh history
  fi
  write_config
  say "starting a local IRC server (ngircd on 127.0.0.1:$IRC_PORT)"
  "$ROOT/scripts/testservers.sh" start irc
  say "starting quilt-qmd (embedded registrar + SQLite store) and quilt-smd irc"
  "$BIN/quilt-smd" -config "$CFG" -check irc
  start_daemon quilt-qmd "$BIN/quilt-qmd" -config "$CFG"
  start_daemon quilt-smd-irc "$BIN/quilt-smd" -config "$CFG" irc
  local i; for i in $(seq 1 100); do
    quiltctl query members --channel '#quilt' -o json 2>/dev/null | grep -q '"quilt"' && break; sleep 0.2
  done
  say "playing a conversation: alice and bob talk in #quilt"
  irc_session alice "JOIN #quilt" sleep "PRIVMSG #quilt :morning! is the deploy done?" sleep sleep sleep sleep "PRIVMSG #quilt :great, thanks bob" &
  local alice_pid=$!
  # bob stays online a while, so the live presence query below finds him
  irc_session bob "JOIN #quilt" "JOIN #ops" sleep "PRIVMSG #quilt :yes, rolled out at 09:00" "NICK bobby" "PRIVMSG #ops :all green here" \
    sleep sleep sleep sleep sleep sleep sleep sleep sleep sleep sleep sleep &
  local bob_pid=$!
  sleep 2.5
  quiltctl send irc/local '#quilt' 'hello alice and bob, quilt is listening' >/dev/null
  wait "$alice_pid"
  sleep 1
  say "quiltctl sources"
  quiltctl sources
  say "quiltctl query presence --user 'bob*'   (live: where is bob now?)"
  quiltctl query presence --user 'bob*' || true
  say "quiltctl query events --channel '#quilt' --oldest-first   (history)"
  quiltctl query events --channel '#quilt' --oldest-first
  say "quiltctl query lastseen --user alice"
  quiltctl query lastseen --user alice
  wait "$bob_pid"
  say "quiltctl history   (every query is recorded)"
  quiltctl history --limit 5
  say "quiltctl test --once   (the shipped cluster test cases; the Matrix one needs a matrix source)"
  quiltctl test --once
  cat <<MSG

The cluster is still running. Try:
  export QUILT_CFG_DIR=$CFG
  bin/quiltctl --help
  bin/quiltctl tail                     # live events (talk on 127.0.0.1:$IRC_PORT)
  bin/quiltctl send irc/local '#quilt' 'hi'
Stop it with:  make stop
MSG
}

stop() {
  local n
  for n in quilt-smd-irc quilt-qmd; do
    local pid; if pid=$(pid_of "$n"); then kill -TERM "$pid"; for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; echo "$n stopped"; fi
  done
  "$ROOT/scripts/testservers.sh" stop irc
}

status() {
  local n; for n in quilt-qmd quilt-smd-irc; do printf '%-14s %s\n' "$n" "$(pid_of "$n" || echo 'not running')"; done
  "$ROOT/scripts/testservers.sh" status irc
}

case ${1:-} in
  start) start ;; stop) stop ;; status) status ;;
  *) sed -n '2,/^set/p' "$0" | sed 's/^# \{0,1\}//;/^set/d'; exit 2 ;;
esac
