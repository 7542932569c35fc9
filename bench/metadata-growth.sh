#!/usr/bin/env bash
# Metadata a client downloads to update from the previous release, as history grows (issue 20).
# For each N: a repository of N tiny releases (one small file changing each time), an app at
# v(N-1) that already trusts the metadata of v(N-1) (it applied v(N-1) from the repository
# directory), then release N, serve the repository with `patch-create serve` on loopback and
# update the app over HTTP with `patch-apply -v apply`. Sums the bodies of every metadata/
# request (sizes of the served files; a 404 counts as 0) and, for comparison, the size all
# targets metadata would have as one top-level targets.json (the sum of the newest version of
# every targets role).
# Usage: bench/metadata-growth.sh [BIN_DIR] [N...]   (default: target/debug; 10 100 1000)
# Builds nothing: run `cargo build -p patchkit-create -p patchkit-apply --bins` first.
set -euo pipefail
cd "$(dirname "$0")/.."
B=$(cd "${1:-target/debug}" && pwd)
shift || true
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(10 100 1000)
W=$(mktemp -d "${TMPDIR:-/tmp}/patchkit-growth.XXXXXX")
SERVER=
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$W"' EXIT
"$B/patch-create" -q keygen --out "$W/keys" >/dev/null

release() { # DIR VERSION_NUMBER
  local repo=$1 i=$2
  mkdir -p "$W/tree"
  printf 'release %s\n' "$i" >"$W/tree/version.txt"
  printf 'tiny app\n' >"$W/tree/readme.txt"
  "$B/patch-create" -q release --repo "$repo" --root "$W/tree" --version "$i.0.0" \
    --key "$W/keys/release.key" --name growth >/dev/null
}

newest_size() { # METADATA_DIR ROLE -> bytes of the newest V.ROLE.json
  local md=$1 role=$2 best=0 f v
  for f in "$md"/*."$role".json; do
    v=$(basename "$f"); v=${v%%.*}
    [[ $v =~ ^[0-9]+$ ]] && ((v > best)) && best=$v
  done
  wc -c <"$md/$best.$role.json"
}

declare -A RESULT
for N in "${SIZES[@]}"; do
  repo="$W/repo-$N"
  start=$SECONDS
  for ((i = 1; i < N; i++)); do release "$repo" "$i"; done
  # The app at v(N-1), trusting the metadata of v(N-1).
  rm -rf "$W/app"
  cp -a "$W/tree" "$W/app"
  "$B/patch-apply" -q apply --app-dir "$W/app" --repo "$repo" \
    --public-key "$W/keys/release.pub" >/dev/null
  release "$repo" "$N"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$B/patch-create" serve --repo "$repo" --addr "127.0.0.1:$PORT" >"$W/serve.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  log=$("$B/patch-apply" -v apply --app-dir "$W/app" --repo "http://127.0.0.1:$PORT" \
    --public-key "$W/keys/release.pub" 2>&1)
  kill $SERVER; wait $SERVER 2>/dev/null || true; SERVER=
  grep -q "release $N" "$W/app/version.txt" || { echo "N=$N: the app did not reach $N.0.0" >&2; exit 1; }
  meta=0 other=0 files=()
  while read -r url status; do
    path=${url#http://127.0.0.1:$PORT/}
    path=${path%:}
    size=0
    [[ "$status" == 200 && -f "$repo/$path" ]] && size=$(wc -c <"$repo/$path")
    if [[ $path == metadata/* ]]; then
      meta=$((meta + size)); files+=("${path#metadata/}=$size")
    else
      other=$((other + size))
    fi
  done < <(sed -n 's/^\(http:[^ ]*\) HTTP \([0-9]*\).*/\1 \2/p' <<<"$log")
  md="$repo/metadata"
  flat=$(newest_size "$md" targets)
  chunks=0
  for role in recent $(ls "$md" | sed -n 's/^[0-9]*\.\(archive-[0-9]*\)\.json$/\1/p' | sort -u); do
    flat=$((flat + $(newest_size "$md" "$role")))
    [[ $role == archive-* ]] && chunks=$((chunks + 1))
  done
  RESULT[$N]=$meta
  echo "N=$N: metadata downloaded by the update $((N - 1)) -> $N: $meta B (${files[*]});" \
    "targets downloaded: $other B; all targets metadata as one file would be $flat B;" \
    "$chunks archive chunks; built in $((SECONDS - start)) s"
done
if [[ -n "${RESULT[10]:-}" && -n "${RESULT[1000]:-}" ]]; then
  awk -v a="${RESULT[1000]}" -v b="${RESULT[10]}" \
    'BEGIN { printf "ratio N=1000 / N=10: %.2f\n", a / b }'
fi
