#!/usr/bin/env bash
# The main job end to end: build, generate three releases, create a signed repository, serve it
# over HTTP on loopback, update an installed copy of the oldest release, and print what happened.
set -euo pipefail
cd "$(dirname "$0")"
echo "== building (release profile)"
cargo build --release -q -p patchkit-create -p patchkit-apply -p patch-server -p patchkit-self-patcher -p fixtures
B=${CARGO_TARGET_DIR:-target}/release
W=$(mktemp -d "${TMPDIR:-/tmp}/patchkit-demo.XXXXXX")
trap 'kill ${SERVER:-} ${FLEET:-} 2>/dev/null || true; rm -rf "$W"' EXIT

echo "== generating releases 1.0.0, 2.0.0, 3.0.0 (seeded fixtures) in $W/rel"
$B/fixtures-gen sequence --out "$W/rel" --versions 3 --small >/dev/null

echo "== creating a key and the repository"
$B/patch-create keygen --out "$W/keys"
for v in 1 2 3; do
  $B/patch-create release --repo "$W/repo" --root "$W/rel/v$v" --version "$v.0.0" \
    --key "$W/keys/release.key" --name demo --ignore '*.log' --json > "$W/release-$v.json"
  python3 - "$W/release-$v.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
patches = ", ".join(f"patch {p['from']}->{p['to']} {p['bytes']:,} B" for p in r["patches"]) or "no patch"
print(f"   released {r['version']}: {r['files']} files, {r['file_bytes']:,} B; installer {r['installer']['bytes']:,} B; {patches}")
PY
done
$B/patch-create verify --repo "$W/repo" --public-key "$W/keys/release.pub"

REPO="$W/repo"
if $B/patch-create serve --help >/dev/null 2>&1; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  $B/patch-create serve --repo "$W/repo" --addr "127.0.0.1:$PORT" >"$W/serve.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  REPO="http://127.0.0.1:$PORT"
  echo "== serving the repository at $REPO"
fi

echo "== an installed copy of 1.0.0 (no updater state) in $W/app"
cp -a "$W/rel/v1" "$W/app"
$B/patch-apply check --app-dir "$W/app" --repo "$REPO" --public-key "$W/keys/release.pub"
echo "== updating"
$B/patch-apply apply --app-dir "$W/app" --repo "$REPO" --public-key "$W/keys/release.pub"
echo "== comparing with release 3.0.0"
if diff -r --no-dereference -x .patchkit -x '*.log' "$W/app" "$W/rel/v3"; then
  echo "   the app dir is byte-identical to 3.0.0 (user-owned *.log files kept)"
fi
$B/patch-apply check --app-dir "$W/app" --repo "$REPO" --public-key "$W/keys/release.pub"

echo "== the fleet: patch-server, and three installed copies checking in with their agents"
mkdir -p "$W/fleet"
$B/patch-server serve --data "$W/fleet" --addr 127.0.0.1:0 --addr-file "$W/fleet/url" >"$W/fleet/server.log" 2>&1 &
FLEET=$!
for _ in $(seq 100); do [[ -s "$W/fleet/url" ]] && break; sleep 0.1; done
URL=$(cat "$W/fleet/url")
export PATCHKIT_SERVER="$URL"
ADMIN=(--server "$URL" --token-file "$W/fleet/admin.token")
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$W/fleet/enroll.secret"
$B/patch-server app add demo "${ADMIN[@]}" --repo "$REPO" --public-key "$W/keys/release.pub" \
  --enroll-secret-file "$W/fleet/enroll.secret"
cp -a "$W/rel/v1" "$W/device-a"; cp -a "$W/rel/v2" "$W/device-b"
for d in app device-a device-b; do
  $B/patch-apply agent --once --server "$URL" --app-dir "$W/$d" --repo "$REPO" \
    --public-key "$W/keys/release.pub" --enroll-secret-file "$W/fleet/enroll.secret" --attr "name=$d" -q
done
echo "== what runs where (patch-server devices)"
$B/patch-server devices "${ADMIN[@]}"
echo "== the dashboard"
head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$W/fleet/demo.password"
$B/patch-server user add --data "$W/fleet" --name demo --role admin --password-file "$W/fleet/demo.password"
echo "   $URL/ui/ (user demo, password $(cat "$W/fleet/demo.password")): devices, releases,"
echo "   rollouts, alerts and the audit log. DEMO_KEEP=1 ./demo.sh keeps it running until Ctrl-C."
if [[ "${DEMO_KEEP:-}" == 1 ]]; then wait "$FLEET"; fi
