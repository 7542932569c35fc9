#!/usr/bin/env bash
# What an idle check costs on the wire: a repository of 3 small releases served over HTTP on
# loopback by `patch-create serve`, an app already at the newest, `patch-apply check` run once
# to settle (it stores the trusted metadata, the validators of timestamp.json and the verified
# repository.json), then measured twice:
#   - with 304: the idle check of an app that polls (timestamp.json asked with If-None-Match /
#     If-Modified-Since; unchanged, so the server answers 304 without a body);
#   - without 304: the same check when the client holds no validators (as against a static host
#     that sends no ETag or Last-Modified), so timestamp.json comes whole.
# Prints each request and the total of the response bodies (sizes of the served files; a 404 and
# a 304 count as 0).
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
measure() {
  local label=$1 requests=0 bytes=0 path size
  echo "$label:"
  while read -r url status; do
    path=${url#http://127.0.0.1:$PORT/}
    path=${path%:}
    size=0
    [[ "$status" == 200 && -f "repo/$path" ]] && size=$(wc -c <"repo/$path")
    echo "  $path: HTTP $status, $size B"
    requests=$((requests + 1)) bytes=$((bytes + size))
  done < <(check | sed -n 's/^\(http:[^ ]*\) HTTP \([0-9]*\).*/\1 \2/p')
  echo "idle check ($label): $requests requests, $bytes bytes of bodies"
}
check >/dev/null
measure "with 304"
rm -f app/.patchkit/trust/timestamp.http.json
measure "without 304"
