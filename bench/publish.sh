#!/usr/bin/env bash
# What `patch-create publish` moves: a repository of 100 small releases published to a real
# single-node Garage (S3 API on loopback), then one release added and published again. Prints
# time, objects and bytes of both publishes; the second should move only the new release's
# objects (plus timestamp.json), whatever the history.
# Usage: bench/publish.sh [BIN_DIR] [RELEASES]   (default: target/debug, 100; build it first;
#        needs `garage` on PATH or in ~/.cargo/bin:
#        cargo install garage --locked --no-default-features --features bundled-libs,sqlite)
set -euo pipefail
cd "$(dirname "$0")/.."
B=$(cd "${1:-target/debug}" && pwd)
N=${2:-100}
GARAGE=${PATCHKIT_GARAGE:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}
[[ -x "$GARAGE" ]] || { echo "garage not found: cargo install garage --locked --no-default-features --features bundled-libs,sqlite" >&2; exit 1; }

W=$(mktemp -d "${TMPDIR:-/tmp}/patchkit-publish.XXXXXX")
trap 'kill ${GPID:-} 2>/dev/null || true; wait ${GPID:-} 2>/dev/null || true; rm -rf "$W"' EXIT
cd "$W"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPC=$(port) S3=$(port) WEB=$(port)
cat >garage.toml <<EOF
metadata_dir = "$W/meta"
data_dir = "$W/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC"
rpc_public_addr = "127.0.0.1:$RPC"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3"
[s3_web]
bind_addr = "127.0.0.1:$WEB"
root_domain = ".web.localhost"
EOF
export AWS_ACCESS_KEY_ID="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export AWS_SECRET_ACCESS_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
  GARAGE_DEFAULT_BUCKET=bench RUST_LOG=garage=warn \
  "$GARAGE" -c garage.toml server --single-node --default-bucket >garage.log 2>&1 &
GPID=$!
for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$S3") 2>/dev/null && break; sleep 0.1; done

"$B/fixtures-gen" sequence --out rel --versions $((N + 1)) --big-mb 1 >/dev/null
"$B/patch-create" -q keygen --out keys >/dev/null
release() {
  "$B/patch-create" -q release --repo repo --root "rel/v$1" --version "$1.0.0" \
    --key keys/release.key --name bench --level 3 --patch-level 3 >/dev/null
}
for v in $(seq "$N"); do release "$v"; done

publish() {
  local t0 t1
  t0=$(date +%s.%N)
  "$B/patch-create" -q publish --repo repo --to s3://bench/app --endpoint "http://127.0.0.1:$S3" \
    --region garage --json >publish.json
  t1=$(date +%s.%N)
  python3 - "$1" "$t0" "$t1" publish.json <<'PY'
import json, sys
what, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
r = json.load(open(sys.argv[4]))
print(f"{what}: {t1 - t0:.2f} s, uploaded {r['uploaded']} objects / {r['uploaded_bytes']} bytes, "
      f"skipped {r['skipped']} objects / {r['skipped_bytes']} bytes, deleted {r['deleted']}")
PY
}
objects=$(find repo -type f ! -path '*/.*' | wc -l)
bytes=$(find repo -type f ! -path '*/.*' -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "repository of $N releases: $objects files, $bytes bytes"
publish "first publish ($N releases)"
release $((N + 1))
publish "publish after adding release $((N + 1))"
publish "publish with nothing new"
