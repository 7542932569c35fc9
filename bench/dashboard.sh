#!/usr/bin/env bash
# Dashboard benchmark (issue 19): seeds N devices (default 100,000) straight into a fresh SQLite
# database, starts the release `patch-server`, logs in, and prints the median of 10 renders of
# the devices page: the first page, a filtered page (failed devices of one version) and a deep
# page (page 1900 of 2000), plus the overview. Goal: each under 200 ms.
#
#   cargo build --release -p patch-server && bench/dashboard.sh [N]
#
# Needs sqlite3 and curl. Not a test: nothing fails above the goal, the numbers are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
BIN=${PATCH_SERVER:-target/release/patch-server}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p patch-server" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'kill $SERVER_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
DATA=$WORK/data
printf 'bench password\n' | "$BIN" user add --data "$DATA" --name bench --role viewer >/dev/null
DB=$DATA/fleet.db
now=$(($(date +%s) * 1000))
echo "seeding $N devices into $DB"
sqlite3 "$DB" >/dev/null <<SQL
PRAGMA journal_mode = WAL;
INSERT INTO apps (name, repo, public_key, approve, created_ms) VALUES ('game', '/nonexistent', '{}', 0, $now);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $N)
INSERT INTO devices (id, app, token_sha256, status, enrolled_ms, last_seen_ms, checkins, version,
  channel, attrs, hostname, last_result_ok, directed_version)
SELECT printf('dev-%07d', i), 'game', printf('%064d', i), CASE WHEN i % 500 = 0 THEN 'pending' ELSE 'active' END,
  $now, CASE WHEN i % 50 = 0 THEN $now - 86400000 ELSE $now - (i % 60) * 1000 END, 10,
  printf('%d.0.0', 1 + i % 5), CASE WHEN i % 10 = 0 THEN 'beta' ELSE 'stable' END, '{}',
  printf('host-%d', i), CASE WHEN i % 20 = 0 THEN 0 WHEN i % 3 = 0 THEN 1 ELSE NULL END,
  CASE WHEN i % 7 = 0 THEN '5.0.0' ELSE NULL END
FROM n;
ANALYZE;
SQL
"$BIN" serve --data "$DATA" --addr 127.0.0.1:0 --addr-file "$WORK/addr" --refresh-interval 1h \
  >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$WORK/addr" ] && break; sleep 0.1; done
URL=$(cat "$WORK/addr")
JAR=$WORK/cookies
curl -s -o /dev/null -c "$JAR" --data-urlencode name=bench --data-urlencode 'password=bench password' "$URL/ui/login"
median() { # URL -> median of 10 renders, ms
  local t=()
  curl -s -o /dev/null -b "$JAR" "$1" # warm up
  for _ in $(seq 10); do
    t+=("$(curl -s -o /dev/null -b "$JAR" -w '%{time_total}' "$1")")
  done
  printf '%s\n' "${t[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", (a[5]+a[6])/2*1000}'
}
check() { # fail loudly if a page is not a 200 (a broken page would be fast)
  local code
  code=$(curl -s -o /dev/null -b "$JAR" -w '%{http_code}' "$1")
  [ "$code" = 200 ] || { echo "$1 answered $code" >&2; exit 1; }
}
pages=(
  "first page|/ui/devices"
  "filtered (failed, version 3.0.0)|/ui/devices?app=game&version=3.0.0&status=failed"
  "deep page (1900)|/ui/devices?page=1900"
  "sorted by last seen, page 1000|/ui/devices?sort=last_seen&dir=desc&page=1000"
  "text search|/ui/devices?q=host-4242"
  "overview|/ui"
)
echo "| page | median of 10 (ms) |"
echo "| --- | ---: |"
for p in "${pages[@]}"; do
  check "$URL${p#*|}"
  echo "| ${p%%|*} (\`${p#*|}\`) | $(median "$URL${p#*|}") |"
done
