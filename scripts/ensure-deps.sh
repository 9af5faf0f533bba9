#!/usr/bin/env bash
# ensure-deps.sh - install the Debian packages quilt's build, tests and demo
# need, only those missing.
#
# Usage: ensure-deps.sh [PKG...]     (no PKG: the default list below)
#
# Does nothing (and needs no root) when every package is installed. Otherwise,
# as root: apt-get update when the package lists are absent or stale, then
# apt-get install --no-install-recommends. Concurrent runs are serialised with
# flock, and a temporary /usr/sbin/policy-rc.d keeps package postinst scripts
# from starting daemons (ngircd would otherwise take port 6667 system-wide).
# Output of apt goes to $QUILT_APT_LOG (default .cache/logs/apt.log).
set -euo pipefail

DEFAULT_PKGS=(
  gcc libc6-dev make git ca-certificates   # cgo (go-sqlite3), builds
  protobuf-compiler                        # make proto / proto-check
  ngircd                                   # IRC integration tests (quiltcore/testenv, testservers.sh irc)
  prosody lua-unbound                      # XMPP integration tests
  dovecot-imapd                            # IMAP integration tests
  bzflag-server                            # BZFlag integration tests (bzfs)
  curl jq openssl                          # testservers.sh consul/matrix start and verify
  util-linux                               # flock, setpriv, setsid
)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
APT_LOG=${QUILT_APT_LOG:-$ROOT/.cache/logs/apt.log}
LOCK=${QUILT_APT_LOCK:-/tmp/quilt-apt.lock}

log() { printf '[ensure-deps] %s\n' "$*" >&2; }
die() { printf '[ensure-deps] ERROR: %s\n' "$*" >&2; exit 1; }

missing_pkgs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

APT_UPDATED=0
apt_update() {
  log "apt-get update"
  apt-get update -qq -o DPkg::Lock::Timeout=300 >>"$APT_LOG" 2>&1 || { tail -5 "$APT_LOG" >&2; die "apt-get update failed (see $APT_LOG)"; }
  APT_UPDATED=1
}
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "$@" >>"$APT_LOG" 2>&1
}

main() {
  local pkgs=("$@") missing p
  [ ${#pkgs[@]} -gt 0 ] || pkgs=("${DEFAULT_PKGS[@]}")
  command -v dpkg-query >/dev/null || die "not a Debian system (no dpkg-query): install ${pkgs[*]} by hand"
  mapfile -t missing < <(missing_pkgs "${pkgs[@]}")
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]}; run as root: $0 ${missing[*]}"
  mkdir -p "$(dirname "$APT_LOG")"

  exec 9>>"$LOCK"
  flock -w 900 9 || die "timeout waiting for $LOCK"
  mapfile -t missing < <(missing_pkgs "${missing[@]}")   # another run may have installed them meanwhile
  [ ${#missing[@]} -eq 0 ] && return 0

  # Fresh images have no package lists; a package unknown to apt-cache means
  # the lists are absent or too old.
  for p in "${missing[@]}"; do
    if [ "$APT_UPDATED" = 0 ] && ! apt-cache show "$p" >/dev/null 2>&1; then apt_update; fi
  done

  local made_policy=0 rc=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from quilt scripts/ensure-deps.sh: no daemon starts during install\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  log "apt-get install ${missing[*]}"
  if ! apt_install "${missing[@]}"; then
    if [ "$APT_UPDATED" = 0 ]; then      # stale lists (404 on download): update once, retry
      log "apt-get install failed, retrying after apt-get update"
      apt_update
      apt_install "${missing[@]}" || rc=1
    else
      rc=1
    fi
  fi
  if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  [ $rc = 0 ] || { tail -5 "$APT_LOG" >&2; die "apt-get install ${missing[*]} failed (see $APT_LOG)"; }
  mapfile -t missing < <(missing_pkgs "${missing[@]}")
  [ ${#missing[@]} -eq 0 ] || die "still missing after install: ${missing[*]}"
  log "installed"
}

main "$@"
