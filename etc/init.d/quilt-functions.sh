# quilt-functions.sh - shared code of the quilt-qmd and quilt-smd init
# scripts (POSIX sh). Installed as $(PREFIX)/lib/quilt/init-functions.sh;
# the scripts fall back to the copy next to them (source tree).
#
# Settings (from /etc/default/quilt, or the environment):
#   QUILT_CFG_DIR   configuration dir (quilt.cfg, smd.d/)     /etc/quilt
#   QUILT_BIN_DIR   where quilt-qmd and quilt-smd are          set at install
#   PIDDIR          pid files; default [daemon] pid_dir of quilt.cfg, else /run/quilt
#   LOGDIR          NAME.log per daemon                       /var/log/quilt
#   QUILT_USER      run the daemons as this user (runuser)    (root)
#   START_TIMEOUT   seconds to wait for "ready"               30
#   STOP_TIMEOUT    seconds between TERM and KILL             20
#   QUILT_SMD_NAMES source managers `quilt-smd start` starts   every enabled smd.d/*.cfg
#   DAEMON_ARGS     extra flags for every daemon              (none)
#
# Exit codes follow LSB: start/stop/restart/reload 0 ok, 1 failure,
# 2 usage, 5 not installed, 6 not configured, 7 not running (reload);
# status 0 running, 1 dead with a pid file left, 3 not running, 4 unknown.

: "${QUILT_CFG_DIR:=/etc/quilt}"
: "${LOGDIR:=/var/log/quilt}"
: "${START_TIMEOUT:=30}"
: "${STOP_TIMEOUT:=20}"

# ini_get FILE SECTION KEY: the value of KEY in [SECTION] ("" for the part
# above the first section), empty when absent. Comments are whole lines
# starting with # or ;, as in quilt.cfg.
ini_get() {
	[ -r "$1" ] || return 0
	awk -v want="$2" -v key="$3" '
		/^[ \t]*([#;]|$)/ { next }
		/^[ \t]*\[/ { s = $0; sub(/^[ \t]*\[[ \t]*/, "", s); sub(/[ \t]*\][ \t]*$/, "", s); sec = s; next }
		sec == want {
			line = $0; i = index(line, "="); j = index(line, ":")
			if (i == 0 || (j > 0 && j < i)) i = j
			if (i == 0) next
			k = substr(line, 1, i - 1); v = substr(line, i + 1)
			gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/^[ \t]+|[ \t]+$/, "", v)
			if (k == key) { val = v }
		}
		END { if (val != "") print val }
	' "$1"
}

# cfg_path VALUE: expand $QUILT_CFG / ${QUILT_CFG}; relative paths are
# relative to the config dir (as the daemons read them).
cfg_path() {
	p=$(printf '%s' "$1" | sed -e "s|\${QUILT_CFG}|$QUILT_CFG_DIR|g" -e "s|\$QUILT_CFG|$QUILT_CFG_DIR|g")
	case $p in
	/*) printf '%s\n' "$p" ;;
	'') ;;
	*) printf '%s/%s\n' "$QUILT_CFG_DIR" "$p" ;;
	esac
}

quilt_piddir() {
	if [ -n "${PIDDIR:-}" ]; then
		printf '%s\n' "$PIDDIR"
		return
	fi
	d=$(cfg_path "$(ini_get "$QUILT_CFG_DIR/quilt.cfg" daemon pid_dir)")
	printf '%s\n' "${d:-/run/quilt}"
}

quilt_smd_dir() {
	d=$(cfg_path "$(ini_get "$QUILT_CFG_DIR/quilt.cfg" source_managers config_dir)")
	printf '%s\n' "${d:-$QUILT_CFG_DIR/smd.d}"
}

# alive PID PROGRAM: PID runs PROGRAM (so a pid reused by another process
# after a crash is not taken for ours).
alive() {
	[ -n "$1" ] || return 1
	kill -0 "$1" 2>/dev/null || [ -d "/proc/$1" ] || return 1
	zombie "$1" && return 1
	if [ -r "/proc/$1/cmdline" ]; then
		tr '\000' ' ' <"/proc/$1/cmdline" | grep -q -- "$2" || return 1
	fi
	return 0
}

# zombie PID: PID has exited but is not reaped yet (kill -0 still works).
zombie() {
	[ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null)" = Z ]
}

read_pid() { [ -r "$1" ] && sed -n '1{s/[^0-9]//g;p;q;}' "$1"; }

nap() { sleep 0.2 2>/dev/null || sleep 1; }

# daemon_status LABEL PIDFILE PROGRAM: print the state, return the LSB code.
daemon_status() {
	if [ ! -e "$2" ]; then
		echo "$1: not running"
		return 3
	fi
	if [ ! -r "$2" ]; then
		echo "$1: unknown (cannot read $2)"
		return 4
	fi
	pid=$(read_pid "$2")
	if alive "$pid" "$3"; then
		echo "$1: running (pid $pid)"
		return 0
	fi
	echo "$1: dead, but pid file $2 remains (pid ${pid:-none})"
	return 1
}

# daemon_start LABEL PIDFILE LOGFILE PROGRAM ARGS...: start detached (own
# session, stdin closed, output appended to LOGFILE), then wait until the
# pid file names the new process and the log says "ready".
daemon_start() {
	label=$1 pidfile=$2 logfile=$3 prog=$4
	shift 3
	pid=$(read_pid "$pidfile")
	if [ -n "$pid" ] && alive "$pid" "$(basename "$prog")"; then
		echo "$label: already running (pid $pid)"
		return 0
	fi
	if [ -e "$pidfile" ]; then
		echo "$label: removing stale pid file $pidfile (pid ${pid:-none} is not running)"
		rm -f "$pidfile"
	fi
	if [ ! -x "$prog" ]; then
		echo "$label: $prog is not installed" >&2
		return 5
	fi
	mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")" || return 1
	if [ -n "${QUILT_USER:-}" ]; then
		chown "$QUILT_USER" "$(dirname "$pidfile")" "$(dirname "$logfile")" 2>/dev/null
		touch "$logfile" && chown "$QUILT_USER" "$logfile"
	fi
	offset=1
	[ -f "$logfile" ] && offset=$(($(wc -c <"$logfile") + 1))
	run=
	[ -n "${QUILT_USER:-}" ] && run="runuser -u $QUILT_USER --"
	# Detach: setsid gives the daemon its own session, so the terminal
	# closing does not send it SIGHUP (which would mean "reload").
	if command -v setsid >/dev/null 2>&1; then
		# shellcheck disable=SC2086
		setsid $run "$@" </dev/null >>"$logfile" 2>&1 &
	else
		# shellcheck disable=SC2086
		nohup $run "$@" </dev/null >>"$logfile" 2>&1 &
	fi
	child=$!
	waited=0
	limit=$((START_TIMEOUT * 5))
	while [ "$waited" -lt "$limit" ]; do
		if ! kill -0 "$child" 2>/dev/null || zombie "$child"; then
			wait "$child"
			code=$?
			echo "$label: failed to start (exit code $code); last lines of $logfile:" >&2
			tail -c "+$offset" "$logfile" 2>/dev/null | tail -n 15 | sed 's/^/  /' >&2
			return 1
		fi
		if [ "$(read_pid "$pidfile")" = "$child" ] &&
			tail -c "+$offset" "$logfile" 2>/dev/null | grep -Eq 'msg=ready|"msg":"ready"'; then
			echo "$label: started (pid $child, log $logfile)"
			return 0
		fi
		nap
		waited=$((waited + 1))
	done
	echo "$label: started as pid $child but not ready within ${START_TIMEOUT}s; see $logfile" >&2
	return 1
}

# daemon_stop LABEL PIDFILE PROGRAM: TERM, wait STOP_TIMEOUT, then KILL.
daemon_stop() {
	label=$1 pidfile=$2 prog=$3
	pid=$(read_pid "$pidfile")
	if [ -z "$pid" ] || ! alive "$pid" "$prog"; then
		if [ -e "$pidfile" ]; then
			echo "$label: not running; removing stale pid file $pidfile"
			rm -f "$pidfile"
		else
			echo "$label: not running"
		fi
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null
	waited=0
	while alive "$pid" "$prog"; do
		if [ "$waited" -ge $((STOP_TIMEOUT * 5)) ]; then
			echo "$label: still running ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL" >&2
			kill -KILL "$pid" 2>/dev/null
			nap
			break
		fi
		nap
		waited=$((waited + 1))
	done
	if alive "$pid" "$prog"; then
		echo "$label: pid $pid survived SIGKILL" >&2
		return 1
	fi
	# A killed daemon could not remove its own pid file.
	[ "$(read_pid "$pidfile")" = "$pid" ] && rm -f "$pidfile"
	echo "$label: stopped"
	return 0
}

# daemon_reload LABEL PIDFILE PROGRAM: SIGHUP (re-read config, re-open log).
daemon_reload() {
	pid=$(read_pid "$2")
	if [ -z "$pid" ] || ! alive "$pid" "$3"; then
		echo "$1: not running" >&2
		return 7
	fi
	kill -HUP "$pid" && echo "$1: reloading (SIGHUP to pid $pid)"
}
