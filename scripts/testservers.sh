#!/usr/bin/env bash
# testservers.sh - real servers on 127.0.0.1 for quilt's integration tests and demo.
#
# Usage:  scripts/testservers.sh COMMAND [NAME]     NAME: irc | consul | ferretdb | matrix
#   start NAME     install/build if missing, write config under $STATE/NAME, start
#                  detached, wait until it answers. Already running => no-op.
#                  `start ferretdb` prints the MongoDB URI on stdout; `start consul`
#                  prints the HTTP address.
#   stop NAME      stop by recorded PID (TERM, KILL after 10 s). Not running => no-op.
#   restart NAME   stop + start
#   status [NAME]  table: NAME PID PORT LISTEN STATE_DIR (always exit 0)
#   verify NAME    real client round trip against the running server; prints
#                  "<NAME> OK" and exits 0, non-zero on failure.
#   stop-all       stop every server that is running
#   Exit status: 0 on success; 1 with "[testservers] ERROR: ..." on stderr otherwise.
#
# Servers:
#   irc       ngircd (Debian)        :$QUILT_IRC_PORT (16667). No accounts; operator
#             $QUILT_IRC_OPER (quiltoper:quiltoperpw). Flood control: ngircd lets a
#             normal user send ~3 lines/s; QUILT_IRC_MAX_PENALTY_TIME=0 turns it off
#             for the whole server (load tests), or OPER then MODE <nick> +F.
#             verify: two clients register, join a channel, relay a message, OPER.
#   consul    Consul dev agent (make consul), in-memory state, single server.
#             Ports from base $QUILT_CONSUL_PORT (18500): http=base, serf-lan=base+1,
#             serf-wan=base+2, server(RPC)=base+3; gRPC and DNS off. Ready when
#             /v1/status/leader names a leader. verify: leader + KV put/get/delete.
#   ferretdb  FerretDB (make ferretdb), SQLite data in $STATE/ferretdb/data,
#             :$QUILT_FERRETDB_PORT (17017). verify: OP_MSG ping over the wire.
#             A real MongoDB for tests: set QUILT_TEST_MONGODB_URI instead.
#   matrix    Dendrite (make dendrite) :$QUILT_MATRIX_PORT (18008), SQLite, no
#             federation, accounts $QUILT_MATRIX_ACCOUNTS (alice:alicepassword
#             bob:bobpassword) on "localhost", registration only by shared secret.
#             verify: login, createRoom, join, send, /sync sees it; then clean up.
#
# Everything binds 127.0.0.1 only. Daemons run in the foreground mode of each
# program, detached with setsid, PID recorded in $STATE/NAME/NAME.pid and stopped
# by that PID only (never by process name). Logs: $STATE/NAME/*.log; when a
# server dies during startup the log tail is printed. As root, the daemons run
# as the unprivileged user $QUILT_SERVICE_USER (created on demand; $STATE and the
# binaries must be reachable by it); as a normal user they run as that user.
#
# Environment (defaults):
#   QUILT_TEST_STATE=<repo>/.cache/testservers   QUILT_SERVICE_USER=quiltsrv
#   QUILT_IRC_PORT=16667  QUILT_CONSUL_PORT=18500  QUILT_FERRETDB_PORT=17017
#   QUILT_MATRIX_PORT=18008  QUILT_CONSUL_{HTTP,SERF_LAN,SERF_WAN,SERVER}_PORT (from base)
#   QUILT_IRC_MAX_PENALTY_TIME=   (empty: ngircd default, flood control on)
#   QUILT_IRC_OPER=quiltoper:quiltoperpw
#   QUILT_CONSUL_BIN=<repo>/.cache/bin/consul-1.16.3
#   QUILT_FERRETDB_BIN=<repo>/.cache/bin/ferretdb-1.24.0
#   QUILT_DENDRITE_BIN_DIR=<repo>/.cache/bin/dendrite-v0.13.8
#   QUILT_AUTOBUILD=1             build a missing binary with make (minutes)
#   QUILT_MATRIX_SHARED_SECRET=quilt-registration-secret
#   QUILT_MATRIX_ACCOUNTS="alice:alicepassword bob:bobpassword" (passwords >= 8 chars)
#   QUILT_START_TIMEOUT=60        seconds to wait for a server to get ready
# Functions are called indirectly ("start_$name", wait_ready CHECK...): SC2317 misfires.
# shellcheck disable=SC2317
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
abspath() { case $1 in /*) echo "$1";; *) echo "$PWD/$1";; esac; }   # daemons chdir
STATE=$(abspath "${QUILT_TEST_STATE:-$ROOT/.cache/testservers}")
SERVICE_USER=${QUILT_SERVICE_USER:-quiltsrv}
START_TIMEOUT=${QUILT_START_TIMEOUT:-60}
AUTOBUILD=${QUILT_AUTOBUILD:-1}

IRC_PORT=${QUILT_IRC_PORT:-16667}
IRC_MAX_PENALTY_TIME=${QUILT_IRC_MAX_PENALTY_TIME:-}
IRC_OPER=${QUILT_IRC_OPER:-quiltoper:quiltoperpw}

CONSUL_BASE=${QUILT_CONSUL_PORT:-18500}
CONSUL_HTTP_PORT=${QUILT_CONSUL_HTTP_PORT:-$CONSUL_BASE}
CONSUL_SERF_LAN_PORT=${QUILT_CONSUL_SERF_LAN_PORT:-$((CONSUL_BASE + 1))}
CONSUL_SERF_WAN_PORT=${QUILT_CONSUL_SERF_WAN_PORT:-$((CONSUL_BASE + 2))}
CONSUL_SERVER_PORT=${QUILT_CONSUL_SERVER_PORT:-$((CONSUL_BASE + 3))}
CONSUL_BIN=$(abspath "${QUILT_CONSUL_BIN:-$ROOT/.cache/bin/consul-1.16.3}")

FERRETDB_PORT=${QUILT_FERRETDB_PORT:-17017}
FERRETDB_BIN=$(abspath "${QUILT_FERRETDB_BIN:-$ROOT/.cache/bin/ferretdb-1.24.0}")

MATRIX_PORT=${QUILT_MATRIX_PORT:-18008}
DENDRITE_BIN_DIR=$(abspath "${QUILT_DENDRITE_BIN_DIR:-$ROOT/.cache/bin/dendrite-v0.13.8}")
MATRIX_SERVER_NAME=localhost
MATRIX_SHARED_SECRET=${QUILT_MATRIX_SHARED_SECRET:-quilt-registration-secret}
MATRIX_ACCOUNTS=${QUILT_MATRIX_ACCOUNTS:-"alice:alicepassword bob:bobpassword"}

BIND=127.0.0.1                      # deliberately not configurable
NAMES="irc consul ferretdb matrix"

log()  { printf '[testservers] %s\n' "$*" >&2; }
die()  { printf '[testservers] ERROR: %s\n' "$*" >&2; exit 1; }
now()  { date +%s.%N; }
port_of() {
  case $1 in
    irc) echo "$IRC_PORT";; consul) echo "$CONSUL_HTTP_PORT";; ferretdb) echo "$FERRETDB_PORT";;
    matrix) echo "$MATRIX_PORT";; *) die "unknown server '$1'";;
  esac
}
pidfile() { echo "$STATE/$1/$1.pid"; }
ensure_pkg() { "$ROOT/scripts/ensure-deps.sh" "$@" || die "cannot install $*"; }

# ---------------------------------------------------------------- helpers
RUNAS=()
setup_user() {   # decide which account the daemons run as
  if [ "$(id -u)" = 0 ]; then
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
      useradd --system --user-group --no-create-home --home-dir /nonexistent \
              --shell /usr/sbin/nologin "$SERVICE_USER" 2>/dev/null \
        || getent passwd "$SERVICE_USER" >/dev/null || die "useradd $SERVICE_USER failed"   # lost a race: fine
    fi
    RUN_UID=$(id -u "$SERVICE_USER"); RUN_GID=$(id -g "$SERVICE_USER"); RUN_USER=$SERVICE_USER
    RUNAS=(setpriv --reuid="$RUN_UID" --regid="$RUN_GID" --clear-groups --inh-caps=-all)
  else
    RUN_UID=$(id -u); RUN_GID=$(id -g); RUN_USER=$(id -un); RUNAS=()
  fi
}
as_user() { if [ ${#RUNAS[@]} -gt 0 ]; then env HOME=/tmp "${RUNAS[@]}" "$@"; else "$@"; fi; }
own() { if [ "$(id -u)" = 0 ]; then chown -R "$RUN_UID:$RUN_GID" "$@"; fi; }

port_open() { (exec 3<>"/dev/tcp/$BIND/$1") 2>/dev/null; }
running() {      # alive and not a zombie (a container's PID 1 may never reap our daemons)
  kill -0 "$1" 2>/dev/null || return 1
  local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ "$st" != Z ] && [ "$st" != X ]
}

pid_alive() {    # pid_alive NAME -> echoes pid if the recorded process is ours and alive
  local pf pid; pf=$(pidfile "$1"); [ -s "$pf" ] || return 1
  pid=$(cat "$pf"); [ -n "$pid" ] && running "$pid" || return 1
  # guard against PID reuse: our daemons all carry $STATE/NAME/ on their command line
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$STATE/$1/" || return 1
  echo "$pid"
}

launch() {       # launch NAME LOGFILE CMD...   (detached, PID recorded)
  local name=$1 logf=$2; shift 2
  [ -s "$logf" ] && mv -f "$logf" "$logf.1"     # keep one previous run's log, bounded
  [ ${#RUNAS[@]} -gt 0 ] && set -- env HOME=/tmp "${RUNAS[@]}" "$@"
  # The subshell closes inherited fds > 2 (a caller's pipe held open by a daemon
  # would make e.g. a CI step wait forever), then execs setsid: a new session so
  # the daemon survives the calling shell. setsid, env and setpriv all exec
  # without forking, so $! is the daemon's own PID.
  (
    for fd in "/proc/$BASHPID/fd/"*; do
      fd=${fd##*/}; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null
    done
    exec setsid "$@" </dev/null >>"$logf" 2>&1
  ) &
  echo $! > "$(pidfile "$name")"
}

startup_failed() {   # startup_failed NAME PID WHY
  log "$1: log tail:"
  tail -n 20 "$STATE/$1/"*.log >&2 2>/dev/null || true
  rm -f "$(pidfile "$1")"
  die "$1: $3 (pid $2; logs: $STATE/$1/)"
}

wait_ready() {   # wait_ready NAME T0 CHECK...  -- until CHECK succeeds; dies if the daemon exits
  local name=$1 t0=$2; shift 2
  local pid; pid=$(cat "$(pidfile "$name")")
  local deadline=$(( $(date +%s) + START_TIMEOUT ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    running "$pid" || startup_failed "$name" "$pid" "process exited during startup"
    if "$@"; then
      printf '[testservers] %s up: pid %s, %s:%s, ready in %.2fs\n' "$name" "$pid" "$BIND" "$(port_of "$name")" \
        "$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b-a}')" >&2
      return 0
    fi
    sleep 0.1
  done
  kill -TERM "$pid" 2>/dev/null || true
  startup_failed "$name" "$pid" "not ready after ${START_TIMEOUT}s, stopped"
}

stop_server() {
  local name=$1 pid pf; pf=$(pidfile "$name")
  if ! pid=$(pid_alive "$name"); then
    [ -e "$pf" ] && rm -f "$pf"; log "$name: not running"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local _; for _ in $(seq 1 200); do running "$pid" || break; sleep 0.05; done
  if running "$pid"; then log "$name: pid $pid ignored TERM, sending KILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  rm -f "$pf"; log "$name: stopped (pid $pid)"
}

precheck() {     # precheck NAME PORT... -> returns 1 if already running (idempotent start)
  local name=$1 pid p; shift
  if pid=$(pid_alive "$name"); then log "$name: already running (pid $pid, port $1)"; return 1; fi
  for p in "$@"; do port_open "$p" && die "$name: port $p already in use by something else"; done
  mkdir -p "$STATE/$name"
  if [ ${#RUNAS[@]} -gt 0 ] && ! as_user test -x "$STATE/$name"; then
    die "$STATE/$name is not reachable by user $RUN_USER (the daemons run as it): set QUILT_TEST_STATE under /tmp or make its parents o+x"
  fi
  return 0
}

need_bin() {     # need_bin NAME PATH MAKE_TARGET
  local name=$1 bin=$2 target=$3
  if [ ! -x "$bin" ]; then
    [ "$AUTOBUILD" = 1 ] || die "$name: $bin not found: run \`make $target\` (or QUILT_AUTOBUILD=1)"
    log "$name: $bin missing, running make $target (takes minutes)"
    make -C "$ROOT" --no-print-directory "$target" >&2 || die "$name: make $target failed"
    [ -x "$bin" ] || die "$name: make $target did not produce $bin (set the QUILT_*_BIN variables consistently)"
  fi
  if [ ${#RUNAS[@]} -gt 0 ] && ! as_user test -x "$bin"; then
    die "$name: $bin is not executable by $RUN_USER (the daemons run as it)"
  fi
}

# ================================================================= IRC: ngircd
start_irc() {
  local d=$STATE/irc port=$IRC_PORT
  ensure_pkg ngircd
  precheck irc "$port" || return 0
  local penalty=""     # MaxPenaltyTime 0 disables ngircd's flood penalties for everyone
  if [ -n "$IRC_MAX_PENALTY_TIME" ]; then
    [[ $IRC_MAX_PENALTY_TIME =~ ^-?[0-9]+$ ]] || die "QUILT_IRC_MAX_PENALTY_TIME must be an integer, not '$IRC_MAX_PENALTY_TIME'"
    penalty=$(printf '\tMaxPenaltyTime = %s' "$IRC_MAX_PENALTY_TIME")
  fi
  [[ $IRC_OPER == *:* ]] || die "QUILT_IRC_OPER must be NAME:PASSWORD"
  cat > "$d/ngircd.conf" <<EOF
# generated by scripts/testservers.sh
[Global]
	Name = irc.quilt.localhost
	Info = quilt test ngircd
	AdminInfo1 = quilt tests
	AdminInfo2 = localhost
	AdminEMail = test@localhost
	Listen = $BIND
	Ports = $port
	MotdPhrase = "quilt test ngircd"
	PidFile =
	ServerUID = $RUN_UID
	ServerGID = $RUN_GID
[Limits]
	MaxConnectionsIP = 0
	MaxNickLength = 30
	PingTimeout = 120
	PongTimeout = 20
$penalty
[Options]
	PAM = no
	Ident = no
	DNS = no
	ConnectIPv6 = no
	OperCanUseMode = yes
[Operator]
	Name = ${IRC_OPER%%:*}
	Password = ${IRC_OPER#*:}
EOF
  chmod 600 "$d/ngircd.conf"     # holds the operator password
  own "$d"
  as_user /usr/sbin/ngircd --configtest -f "$d/ngircd.conf" > "$d/configtest.out" 2>&1 \
    || { cat "$d/configtest.out" >&2; die "irc: ngircd --configtest -f $d/ngircd.conf failed"; }
  local t0; t0=$(now)
  launch irc "$d/ngircd.log" /usr/sbin/ngircd --nodaemon -f "$d/ngircd.conf"
  wait_ready irc "$t0" irc_listening "$d/ngircd.log" "$port"
}
irc_listening() { grep -qF "Now listening on [$BIND]:$2 " "$1" && port_open "$2"; }

# ================================================================= Consul
start_consul() {
  local d=$STATE/consul
  ensure_pkg curl jq
  need_bin consul "$CONSUL_BIN" consul
  precheck consul "$CONSUL_HTTP_PORT" "$CONSUL_SERF_LAN_PORT" "$CONSUL_SERF_WAN_PORT" "$CONSUL_SERVER_PORT" \
    || { echo "$BIND:$CONSUL_HTTP_PORT"; return 0; }
  mkdir -p "$d/data"
  own "$d"
  local t0; t0=$(now)
  # -dev keeps the catalog in memory: a restart starts empty, like tests expect.
  launch consul "$d/consul.log" "$CONSUL_BIN" agent -dev -node quilt-dev -data-dir "$d/data" \
    -bind "$BIND" -client "$BIND" -advertise "$BIND" \
    -http-port "$CONSUL_HTTP_PORT" -grpc-port -1 -grpc-tls-port -1 -dns-port -1 \
    -serf-lan-port "$CONSUL_SERF_LAN_PORT" -serf-wan-port "$CONSUL_SERF_WAN_PORT" \
    -server-port "$CONSUL_SERVER_PORT"
  wait_ready consul "$t0" consul_leader
  echo "$BIND:$CONSUL_HTTP_PORT"
}
consul_leader() {    # the leader must be this agent (its server port), not another one
  local l; l=$(curl -fsS -m 2 "http://$BIND:$CONSUL_HTTP_PORT/v1/status/leader" 2>/dev/null) || return 1
  [ "$l" = "\"$BIND:$CONSUL_SERVER_PORT\"" ]
}

# ================================================================= FerretDB
start_ferretdb() {
  local d=$STATE/ferretdb port=$FERRETDB_PORT
  need_bin ferretdb "$FERRETDB_BIN" ferretdb
  precheck ferretdb "$port" || { ferretdb_uri; return 0; }
  mkdir -p "$d/data"
  own "$d"
  local t0; t0=$(now)
  launch ferretdb "$d/ferretdb.log" "$FERRETDB_BIN" -listen "$BIND:$port" -dir "$d/data" -log-level info
  wait_ready ferretdb "$t0" ferretdb_ready "$d/ferretdb.log" "$port"
  ferretdb_uri
}
ferretdb_ready() { grep -q '^mongodb://' "$1" && port_open "$2"; }
ferretdb_uri() { grep -m1 '^mongodb://' "$STATE/ferretdb/ferretdb.log" 2>/dev/null || echo "mongodb://$BIND:$FERRETDB_PORT/"; }

# ================================================================= Matrix: dendrite
start_matrix() {
  local d=$STATE/matrix port=$MATRIX_PORT bin=$DENDRITE_BIN_DIR
  ensure_pkg curl openssl jq
  if ! pid_alive matrix >/dev/null; then need_bin matrix "$bin/dendrite" dendrite; fi
  precheck matrix "$port" || return 0
  mkdir -p "$d/media" "$d/jetstream" "$d/searchindex"
  if [ ! -s "$d/matrix_key.pem" ]; then
    (cd "$d" && "$bin/generate-keys" --private-key "$d/matrix_key.pem" >&2) || die "matrix: generate-keys failed"
  fi
  cat > "$d/dendrite.yaml" <<EOF
# generated by scripts/testservers.sh - monolith, SQLite, no federation
version: 2
global:
  server_name: $MATRIX_SERVER_NAME
  private_key: $d/matrix_key.pem
  key_validity_period: 168h0m0s
  disable_federation: true
  trusted_third_party_id_servers: []
  presence: { enable_inbound: false, enable_outbound: false }
  report_stats: { enabled: false }
  server_notices: { enabled: false }
  jetstream:
    addresses: []
    storage_path: $d/jetstream
    topic_prefix: Dendrite
  metrics: { enabled: false }
  dns_cache: { enabled: false }
app_service_api:
  config_files: []
client_api:
  registration_disabled: true
  guests_disabled: true
  registration_shared_secret: "$MATRIX_SHARED_SECRET"
  enable_registration_captcha: false
  rate_limiting: { enabled: false, threshold: 20, cooloff_ms: 500 }
federation_api:
  database: { connection_string: "file:$d/federationapi.db" }
  key_perspectives: []
  prefer_direct_fetch: false
key_server:
  database: { connection_string: "file:$d/keyserver.db" }
media_api:
  database: { connection_string: "file:$d/mediaapi.db" }
  base_path: $d/media
  max_file_size_bytes: 10485760
mscs:
  mscs: []
  database: { connection_string: "file:$d/mscs.db" }
relay_api:
  database: { connection_string: "file:$d/relayapi.db" }
room_server:
  database: { connection_string: "file:$d/roomserver.db" }
sync_api:
  database: { connection_string: "file:$d/syncapi.db" }
  search: { enabled: false, index_path: $d/searchindex }
user_api:
  bcrypt_cost: 4
  account_database: { connection_string: "file:$d/userapi.db" }
tracing: { enabled: false }
logging:
  - type: file
    level: info
    params: { path: $d/logs }
EOF
  chmod 600 "$d/dendrite.yaml"    # holds the registration secret
  own "$d"
  local t0; t0=$(now)
  # launched from inside $d: relative paths in dendrite land there
  ( cd "$d" && launch matrix "$d/dendrite.stdout.log" "$bin/dendrite" --config "$d/dendrite.yaml" \
      --http-bind-address "$BIND:$port" --https-bind-address "$BIND:0" )
  wait_ready matrix "$t0" curl -fs -m 2 -o /dev/null "http://$BIND:$port/_matrix/client/versions"
  local acct
  for acct in $MATRIX_ACCOUNTS; do matrix_register "${acct%%:*}" "${acct#*:}"; done
}

matrix_register() { # shared-secret registration (the API create-account uses); idempotent
  local u=$1 p=$2 base="http://$BIND:$MATRIX_PORT" nonce mac resp
  nonce=$(curl -fsS "$base/_synapse/admin/v1/register" | jq -r .nonce)
  mac=$(printf '%s\0%s\0%s\0%s' "$nonce" "$u" "$p" notadmin | openssl dgst -sha1 -hmac "$MATRIX_SHARED_SECRET" | awk '{print $NF}')
  resp=$(curl -sS -X POST "$base/_synapse/admin/v1/register" -H 'Content-Type: application/json' \
        -d "$(jq -nc --arg n "$nonce" --arg u "$u" --arg p "$p" --arg m "$mac" \
               '{nonce:$n, username:$u, password:$p, admin:false, mac:$m}')")
  if jq -e .user_id >/dev/null 2>&1 <<<"$resp"; then
    log "matrix: registered $(jq -r .user_id <<<"$resp")"
  elif grep -q M_USER_IN_USE <<<"$resp"; then
    log "matrix: @$u:$MATRIX_SERVER_NAME already exists"
  else
    die "matrix: registering $u failed: $(jq -c 'del(.access_token)' <<<"$resp" 2>/dev/null || echo "$resp")"
  fi
}

# ================================================================= status
status() {
  local n pid port
  printf '%-9s %-8s %-6s %-7s %s\n' NAME PID PORT LISTEN STATE_DIR
  for n in ${1:-$NAMES}; do
    port=$(port_of "$n")
    pid=$(pid_alive "$n" || true)
    printf '%-9s %-8s %-6s %-7s %s\n' "$n" "${pid:--}" "$port" \
      "$(port_open "$port" && echo yes || echo no)" "$STATE/$n"
  done
}

# ================================================================= verification clients
# IRC over bash's /dev/tcp: irc_expect FD PATTERN reads lines (answering PING)
# until one matches the extended regex PATTERN.
irc_expect() {
  local fd=$1 pat=$2 line deadline=$(( $(date +%s) + 15 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    IFS= read -r -t 15 -u "$fd" line || die "irc: connection closed or timed out waiting for /$pat/"
    line=${line%$'\r'}
    case $line in PING*) printf 'PONG%s\r\n' "${line#PING}" >&"$fd"; continue;; esac
    if [[ $line =~ $pat ]]; then echo "<< $line"; return 0; fi
  done
  die "irc: timeout waiting for /$pat/"
}
irc_send() { echo ">> $2"; printf '%s\r\n' "$2" >&"$1"; }

verify_irc() {
  local r=$$ a b ch
  a=alice$r b=bob$r ch="#test$r"    # unique names: never collide with test clients
  exec 5<>"/dev/tcp/$BIND/$IRC_PORT" 6<>"/dev/tcp/$BIND/$IRC_PORT" || die "irc: cannot connect to $BIND:$IRC_PORT"
  irc_send 5 "NICK $a"; irc_send 5 "USER $a 0 * :quilt verify"; irc_expect 5 " 001 $a "
  irc_send 6 "NICK $b"; irc_send 6 "USER $b 0 * :quilt verify"; irc_expect 6 " 001 $b "
  irc_send 5 "JOIN $ch"; irc_expect 5 " 366 "
  irc_send 6 "JOIN $ch"; irc_expect 6 " 366 "; irc_expect 5 "^:$b!.* JOIN"
  irc_send 5 "PRIVMSG $ch :hello channel from $a"; irc_expect 6 "PRIVMSG $ch :hello channel from $a"
  irc_send 6 "PRIVMSG $a :hi $a, privately"; irc_expect 5 "PRIVMSG $a :hi $a, privately"
  printf 'OPER %s %s\r\n' "${IRC_OPER%%:*}" "${IRC_OPER#*:}" >&5; echo ">> OPER ${IRC_OPER%%:*} ***"
  irc_expect 5 " 381 "
  irc_send 5 "QUIT :bye"; irc_send 6 "QUIT :bye"
  exec 5>&- 6>&-
  echo "IRC OK"
}

verify_consul() {
  local base="http://$BIND:$CONSUL_HTTP_PORT" key="quilt-verify/$$" leader got
  leader=$(curl -fsS -m 5 "$base/v1/status/leader") || die "consul: GET /v1/status/leader failed"
  echo ">> GET /v1/status/leader  <<  $leader"
  if [ -z "$leader" ] || [ "$leader" = '""' ]; then die "consul: no leader"; fi
  curl -fsS -m 5 -X PUT --data-binary "v$$" "$base/v1/kv/$key" >/dev/null || die "consul: PUT kv failed"
  got=$(curl -fsS -m 5 "$base/v1/kv/$key?raw") || die "consul: GET kv failed"
  echo ">> PUT+GET /v1/kv/$key  <<  $got"
  [ "$got" = "v$$" ] || die "consul: kv read back '$got', want 'v$$'"
  curl -fsS -m 5 -X DELETE "$base/v1/kv/$key" >/dev/null || die "consul: DELETE kv failed"
  echo "CONSUL OK"
}

# OP_MSG {ping: 1, $db: "admin"} by hand: the reply must carry ok: 1.0 (double).
verify_ferretdb() {
  local msg reply
  # header: length 51, requestID 1, responseTo 0, opCode 2013; flagBits 0; section kind 0;
  # BSON: size 30, int32 "ping"=1, string "$db"="admin", terminator
  msg='\x33\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00'
  msg+='\x00\x00\x00\x00\x00'
  # shellcheck disable=SC2016  # "$db" is the BSON key, not a variable
  msg+='\x1e\x00\x00\x00\x10ping\x00\x01\x00\x00\x00\x02$db\x00\x06\x00\x00\x00admin\x00\x00'
  exec 5<>"/dev/tcp/$BIND/$FERRETDB_PORT" || die "ferretdb: cannot connect to $BIND:$FERRETDB_PORT"
  # shellcheck disable=SC2059  # the format string is the binary message
  printf "$msg" >&5
  echo ">> OP_MSG {ping: 1, \$db: \"admin\"}"
  reply=$(timeout 10 dd bs=65536 count=1 status=none <&5 | od -An -v -tx1 | tr -d ' \n')
  exec 5>&-
  echo "<< reply of $(( ${#reply} / 2 )) bytes"
  # element: type 0x01 (double) "ok\0" value 1.0 = 00 00 00 00 00 00 f0 3f
  [[ $reply == *016f6b00000000000000f03f* ]] || die "ferretdb: ping reply lacks ok: 1.0 ($reply)"
  echo "FERRETDB OK ($(ferretdb_uri))"
}

verify_matrix() {
  local base="http://$BIND:$MATRIX_PORT" A B ua pa ub pb ta tb room rq ev r sync
  sync=$(mktemp "${TMPDIR:-/tmp}/quilt-matrix-sync.XXXXXX")
  A=$(awk '{print $1}' <<<"$MATRIX_ACCOUNTS"); B=$(awk '{print $2}' <<<"$MATRIX_ACCOUNTS")
  ua=${A%%:*}; pa=${A#*:}; ub=${B%%:*}; pb=${B#*:}
  login() { curl -fsS -X POST "$base/_matrix/client/v3/login" -H 'Content-Type: application/json' \
      -d "$(jq -nc --arg u "$1" --arg p "$2" '{type:"m.login.password", identifier:{type:"m.id.user", user:$u}, password:$p}')"; }
  r=$(login "$ua" "$pa") || die "matrix: login $ua failed"; ta=$(jq -r .access_token <<<"$r")
  echo ">> POST /login $ua  <<  $(jq -c 'del(.access_token)' <<<"$r")"
  r=$(login "$ub" "$pb") || die "matrix: login $ub failed"; tb=$(jq -r .access_token <<<"$r")
  echo ">> POST /login $ub  <<  $(jq -c 'del(.access_token)' <<<"$r")"
  r=$(curl -fsS -X POST "$base/_matrix/client/v3/createRoom" -H "Authorization: Bearer $ta" \
      -H 'Content-Type: application/json' -d '{"preset":"public_chat","name":"quilt verify room"}')
  room=$(jq -r .room_id <<<"$r"); rq=$(jq -rn --arg r "$room" '$r|@uri')
  echo ">> POST /createRoom ($ua)  <<  $r"
  r=$(curl -fsS -X POST "$base/_matrix/client/v3/join/$rq" -H "Authorization: Bearer $tb" -H 'Content-Type: application/json' -d '{}')
  echo ">> POST /join/$room ($ub)  <<  $r"
  r=$(curl -fsS -X PUT "$base/_matrix/client/v3/rooms/$rq/send/m.room.message/quilt$(date +%s%N)" \
      -H "Authorization: Bearer $ta" -H 'Content-Type: application/json' -d '{"msgtype":"m.text","body":"hello bob from alice"}')
  ev=$(jq -r .event_id <<<"$r")
  echo ">> PUT /rooms/$room/send/m.room.message ($ua)  <<  $r"
  local _; for _ in $(seq 1 50); do   # the sync API consumes events asynchronously
    curl -fsS "$base/_matrix/client/v3/sync?timeout=0" -H "Authorization: Bearer $tb" > "$sync"
    jq -e --arg r "$room" --arg e "$ev" 'any(.rooms.join[$r].timeline.events[]?; .event_id==$e)' "$sync" >/dev/null && break
    sleep 0.1
  done
  echo ">> GET /sync ($ub)  <<  matching timeline event:"
  jq -ec --arg r "$room" --arg e "$ev" '.rooms.join[$r].timeline.events[] | select(.event_id==$e) | {event_id, sender, type, body: .content.body}' \
      "$sync" || { rm -f "$sync"; die "matrix: message not found in $ub's /sync"; }
  local t; for t in "$tb" "$ta"; do    # leave + forget the scratch room, log out
    curl -fsS -X POST "$base/_matrix/client/v3/rooms/$rq/leave" -H "Authorization: Bearer $t" -H 'Content-Type: application/json' -d '{}' >/dev/null
    curl -fsS -X POST "$base/_matrix/client/v3/rooms/$rq/forget" -H "Authorization: Bearer $t" -H 'Content-Type: application/json' -d '{}' >/dev/null
    curl -fsS -X POST "$base/_matrix/client/v3/logout" -H "Authorization: Bearer $t" -H 'Content-Type: application/json' -d '{}' >/dev/null
  done
  rm -f "$sync"
  echo "MATRIX OK"
}

verify() {
  local n=$1; pid_alive "$n" >/dev/null || die "$n is not running (scripts/testservers.sh start $n)"
  case $n in consul|matrix) ensure_pkg curl jq;; esac
  "verify_$n"
}

# ================================================================= main
usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed -n '/^#/p' | sed 's/^# \{0,1\}//'; exit 2; }
check_name() { case " $NAMES " in *" $1 "*) ;; *) die "NAME must be one of: $NAMES";; esac; }
main() {
  local cmd=${1:-} name=${2:-} n
  case $cmd in
    start)    check_name "$name"; setup_user; mkdir -p "$STATE"; "start_$name" ;;
    stop)     check_name "$name"; stop_server "$name" ;;
    restart)  check_name "$name"; stop_server "$name"; setup_user; mkdir -p "$STATE"; "start_$name" ;;
    status)   if [ -n "$name" ]; then check_name "$name"; fi; status "$name" ;;
    verify)   check_name "$name"; verify "$name" ;;
    stop-all) for n in $NAMES; do stop_server "$n"; done ;;
    *) usage ;;
  esac
}
# the whole file is parsed before anything runs: editing it while a long
# `start matrix` (Dendrite build) runs cannot break that run
main "$@"; exit $?
