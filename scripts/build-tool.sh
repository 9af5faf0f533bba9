#!/usr/bin/env bash
# build-tool.sh - build an external tool from its wrapper module under tools/.
#
# Usage: build-tool.sh WRAPPER_DIR OUT PKG [PKG...]
#   One PKG: OUT is the binary file.  Several PKGs: OUT is a directory that
#   receives one binary per package (go build -o DIR/).
#
# The wrapper module (its own go.mod, never part of quilt's go.mod) pins the
# tool's module. When its go.sum is committed the build is reproducible and
# `go mod tidy` is skipped; without go.sum (first build of a new pin) tidy
# resolves the graph and writes it: commit that go.sum afterwards.
# The binary is built to a temporary name and renamed, so an interrupted build
# never leaves a half-written file that a later `make` would take as done.
#
# Environment: GO (default: go in PATH), GONOSUMDB/GOFLAGS/GOPROXY as usual.
set -euo pipefail

[ $# -ge 3 ] || { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
dir=$1 out=$2; shift 2
GO=${GO:-go}
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export GOFLAGS="${GOFLAGS:-} -mod=mod"

dir=$(cd "$dir" && pwd)
case $out in /*) ;; *) out=$PWD/$out;; esac
[ -s "$dir/go.mod" ] || { echo "build-tool: $dir/go.mod missing" >&2; exit 1; }

t0=$(date +%s)
cd "$dir"
if [ ! -s go.sum ]; then
  echo "build-tool: $dir/go.sum missing: go mod tidy (commit the go.sum it writes)" >&2
  "$GO" mod tidy >&2
fi
if [ $# -eq 1 ]; then
  mkdir -p "$(dirname "$out")"
  tmp="$out.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  "$GO" build -trimpath -o "$tmp" "$1" >&2
  mv -f "$tmp" "$out"
else
  mkdir -p "$out"
  tmp=$(mktemp -d "$out.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  "$GO" build -trimpath -o "$tmp/" "$@" >&2
  for p in "$@"; do b=${p##*/}; mv -f "$tmp/$b" "$out/$b"; done
fi
echo "build-tool: built $* -> $out in $(( $(date +%s) - t0 ))s" >&2
