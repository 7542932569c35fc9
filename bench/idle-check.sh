#!/usr/bin/env bash
# What an idle check costs on the wire: a repository of 3 small releases served over HTTP on
# loopback, an app already at the newest, `patch-apply check` run twice (the second one is the
# idle check of an app that polls). Prints each request of the second check and the total of
# the response bodies (sizes of the served files; a 404 counts as 0).
# Usage: bench/idle-check.sh [BIN_DIR]   (default: target/debug; build it first)
set -euo pipefail
cd "$(dirname "$0")/.."
B=$(cd "${1:-target/debug}" && pwd)
source bench/idle-repo.sh
idle_repo "$B"
cp -a rel/v3 app
mkdir app/.patchkit
check() {
  "$B/patch-apply" -v check --app-dir app --repo "http://127.0.0.1:$PORT" --public-key keys/release.pub 2>&1
}
check >/dev/null
requests=0 bytes=0
while read -r url status; do
  path=${url#http://127.0.0.1:$PORT/}
  path=${path%:}
  size=0
  [[ "$status" == 200 && -f "repo/$path" ]] && size=$(wc -c <"repo/$path")
  echo "  $path: HTTP $status, $size B"
  requests=$((requests + 1)) bytes=$((bytes + size))
done < <(check | sed -n 's/^\(http:[^ ]*\) HTTP \([0-9]*\).*/\1 \2/p')
echo "idle check: $requests requests, $bytes bytes of bodies"
