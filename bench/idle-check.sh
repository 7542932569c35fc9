#!/usr/bin/env bash
# What an idle check costs on the wire: a repository of 3 small releases served over HTTP on
# loopback, an app already at the newest, `patch-apply check` run twice (the second one is the
# idle check of an app that polls). Prints each request of the second check and the total of
# the response bodies (sizes of the served files; a 404 counts as 0).
# Usage: bench/idle-check.sh [BIN_DIR]   (default: target/debug; build it first)
set -euo pipefail
cd "$(dirname "$0")/.."
B=$(cd "${1:-target/debug}" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/patchkit-idle.XXXXXX")
trap 'kill ${SERVER:-} 2>/dev/null || true; rm -rf "$W"' EXIT
cd "$W"
"$B/fixtures-gen" sequence --out rel --versions 3 --small >/dev/null
"$B/patch-create" -q keygen --out keys >/dev/null
for v in 1 2 3; do
  "$B/patch-create" -q release --repo repo --root "rel/v$v" --version "$v.0.0" \
    --key keys/release.key --name idle >/dev/null
done
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$B/patch-create" serve --repo repo --addr "127.0.0.1:$PORT" >serve.log 2>&1 &
SERVER=$!
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
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
