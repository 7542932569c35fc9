#!/usr/bin/env bash
# Fleet server scale benchmark (issue 17): patch-server under simulated devices (fleet-load).
#
# Usage: bench/fleet.sh [sqlite] [postgres] [ab]  (default: sqlite postgres; postgres only if its
#        binaries exist; `ab` is the rollout-cost comparison below, on SQLite)
# For each backend: a fresh server (SQLite: one `patch-server serve --data DIR`; PostgreSQL: a
# throwaway cluster on 127.0.0.1 and TWO servers on it, requests round-robin), an app whose
# signed repository is a local one made here, then a ramp: for each step N of STEPS, the fleet
# grows to N enrolled devices (`fleet-load --enroll-only`, real tokens), then N devices check in
# every INTERVAL (±10 % jitter) for DURATION (the first WARMUP left out of the figures). The
# ramp stops after the first step whose p99 check-in latency is over P99_LIMIT_MS or that had
# any error. Per step: server CPU (utime+stime from /proc/PID/stat over the check-in phase),
# RSS (VmRSS, VmHWM from /proc/PID/status), bytes per idle check-in, database growth per
# check-in and per device per day at 60 s polling (1,440 check-ins); CPU and growth also for the
# steady state alone (after the warm-up, once every device has sent its whole state).
# Env knobs:
#   STEPS="1000 5000 10000 20000 40000"  INTERVAL=60s  DURATION=150s  WARMUP=60s  P99_LIMIT_MS=50
#   FRESH=1 (a new TCP connection per request, as a real fleet; 0: keep-alive pool)
#   SOURCES=1 (loopback source addresses the devices connect from, 127.0.0.1 to 127.0.0.N:
#     fleet-load --source-addresses; one address runs out of local ports at a few hundred new
#     connections per second, each port held 60 s in TIME_WAIT)
#   LOAD_THREADS=1 (fleet-load's worker threads: it shares the cores with the server)
#   SERVER_ARGS="" (extra `patch-server serve` flags)   SKIP_BUILD=1   WORK=bench/work
#   PG_ARGS="" (extra `postgres` flags, e.g. "-c shared_buffers=512MB")
#   PG_STATS=1 (PostgreSQL: load pg_stat_statements; after each step, WORK/fleet/postgres/
#     pg-stats-N.txt lists the statements by total execution time, then the counters reset)
#   BIN=dir with release patch-server, fleet-load, patch-create, fixtures-gen (default
#   $CARGO_TARGET_DIR/release, built here with cargo build --release)
# `ab` (issue 19: "a rollout decision adds no measurable latency to check-ins"): one SQLite
# server, two apps on the same signed repository (1.0.0 and 1.0.1), each with its own fleet of
# AB_DEVICES enrolled devices at 1.0.0: `plain` has no rollout (the channel rule decides),
# `staged` has a running staged rollout of 1.0.1 at AB_PERCENT % (every check-in goes through
# the rollout rules; selected devices are offered 1.0.1, an offer row is written the first
# time, results settle them). The same load step runs on each fleet in turn, AB_REPS pairs in
# alternating order (A B, B A, ...); the report gives each pair's p50/p99 and the medians'
# ratio B/A.
#   AB_DEVICES=3000 AB_PERCENT=30 AB_REPS=5 AB_INTERVAL=20s AB_DURATION=60s AB_WARMUP=20s
# (a 20 s interval compresses time: 3,000 devices at 20 s = 150 check-ins/s = 9,000 at 60 s.)
# Output: WORK/fleet/ab/{plain,staged}-R.json, WORK/fleet/ab/ab.md.
# Output: WORK/fleet/<backend>/step-N.json (fleet-load's report + server figures; its
#   `checkin.slow_seconds` says in which seconds the answers over 50 ms were sent: bursts mean
#   a stall, a spread means saturation; `warmup_checkin` has the same figures for the warm-up,
#   where every device makes its first contact with its whole state), WORK/fleet/fleet.md (tables ready for
#   bench/RESULTS.md), logs in WORK/fleet/<backend>/ (PostgreSQL's own log as pg.log: add e.g.
#   PG_ARGS="-c log_min_duration_statement=40 -c log_autovacuum_min_duration=0").
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
export WORK=${WORK:-$BENCH/work}
STEPS=${STEPS:-"1000 5000 10000 20000 40000"}
INTERVAL=${INTERVAL:-60s} DURATION=${DURATION:-150s} WARMUP=${WARMUP:-60s}
P99_LIMIT_MS=${P99_LIMIT_MS:-50} FRESH=${FRESH:-1} LOAD_THREADS=${LOAD_THREADS:-1}
SOURCES=${SOURCES:-1}
SERVER_ARGS=${SERVER_ARGS:-}
BACKENDS=("$@")
[ ${#BACKENDS[@]} -gt 0 ] || BACKENDS=(sqlite postgres)
F=$WORK/fleet
mkdir -p "$F"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- binaries
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release -p patch-server -p fleet-load -p patchkit-create -p fixtures (log $F/cargo-build.log)"
  (cd "$ROOT" && cargo build --release -p patch-server -p fleet-load -p patchkit-create -p fixtures) \
    > "$F/cargo-build.log" 2>&1 || { tail -20 "$F/cargo-build.log" >&2; exit 1; }
fi
for b in patch-server fleet-load patch-create fixtures-gen; do
  [ -x "$BIN/$b" ] || { echo "fleet.sh: $BIN/$b missing (build it, or set BIN)" >&2; exit 2; }
done

# ---------------------------------------------------------------- the app's signed repository
APPREPO=$F/app
if [ ! -f "$APPREPO/keys/release.pub" ]; then
  rm -rf "$APPREPO"; mkdir -p "$APPREPO"
  "$BIN/fixtures-gen" sequence --out "$APPREPO/rel" --versions 2 --small >/dev/null
  "$BIN/patch-create" -q keygen --out "$APPREPO/keys" >/dev/null
  for v in 1 2; do
    "$BIN/patch-create" -q release --repo "$APPREPO/repo" --root "$APPREPO/rel/v$v" \
      --version "1.0.$((v - 1))" --key "$APPREPO/keys/release.key" --name loadapp >/dev/null
  done
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$APPREPO/secret"
fi

secs() { # 90s, 2m, 1h, or plain seconds -> seconds
  case $1 in *ms) echo 0 ;; *s) echo "${1%s}" ;; *m) echo $((${1%m} * 60)) ;; *h) echo $((${1%h} * 3600)) ;; *) echo "$1" ;; esac
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { # utime+stime of the given pids, in clock ticks
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo $t
}
status_kb() { # field (VmRSS, VmHWM) summed over pids, kB
  local f=$1 t=0 p v; shift
  for p in "$@"; do
    v=$(awk -v f="$f:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || true)
    t=$((t + ${v:-0}))
  done
  echo $t
}

PIDS=() PG_DATA="" PG_BIN="" PG_LOG_KEEP=""
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  if [ -n "$PG_DATA" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA/db" -m fast -w stop >/dev/null 2>&1 || true
    # PostgreSQL's own log (checkpoints, autovacuum, slow statements with PG_ARGS) is kept
    [ -n "$PG_LOG_KEEP" ] && cp "$PG_DATA/pg.log" "$PG_LOG_KEEP" 2>/dev/null
    rm -rf "$PG_DATA"; PG_DATA=""
  fi
}
trap cleanup EXIT

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

START_URL=""
start_server() { # name data-dir [--db URL]; sets START_URL and appends the pid to PIDS
  local name=$1 data=$2; shift 2
  mkdir -p "$data"
  rm -f "$data/addr"
  # (the whole simulated fleet enrolls from 127.0.0.1: no enrollment rate limit)
  # shellcheck disable=SC2086
  "$BIN/patch-server" serve --data "$data" "$@" --addr 127.0.0.1:0 --addr-file "$data/addr" \
    --admin-token-file "$data/admin.token" --enroll-per-ip 1000000000 $SERVER_ARGS \
    > "$data/serve.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [ -s "$data/addr" ] && break; sleep 0.1; done
  [ -s "$data/addr" ] || { tail -20 "$data/serve.log" >&2; echo "fleet.sh: $name did not start" >&2; exit 1; }
  START_URL=$(head -1 "$data/addr")
  case $START_URL in http*) ;; *) START_URL=http://$START_URL ;; esac
}

db_bytes() { # backend dir-or-url
  if [ "$1" = sqlite ]; then
    # bytes of used pages after folding the WAL in (the WAL file's size is not growth)
    python3 - "$2/fleet.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30)
c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
pages, free, size = (c.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
print((pages - free) * size)
PY
  else
    as_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d fleet -tAc \
      "SELECT pg_database_size('fleet')" 2>/dev/null | tr -d ' '
  fi
}

pg_sql() { as_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d fleet -tAc "$1"; }

pg_pids() { # the postmaster and its children
  local pm; pm=$(head -1 "$PG_DATA/db/postmaster.pid" 2>/dev/null) || return 0
  echo "$pm"; pgrep -P "$pm" || true
}

run_backend() {
  local backend=$1 D=$F/$1 urls=() servers=() load_servers=() secs
  rm -rf "$D"; mkdir -p "$D"
  if [ "$backend" = sqlite ]; then
    start_server sqlite "$D/server"; urls+=("$START_URL"); servers+=("${PIDS[-1]}")
  else
    PG_BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")
    [ -x "$PG_BIN/initdb" ] || PG_BIN=$(dirname "$(command -v initdb)")
    PG_DATA=$(mktemp -d /tmp/fleet-pg.XXXXXX); chmod 755 "$PG_DATA"
    [ "$(id -u)" = 0 ] && chown postgres "$PG_DATA"
    PG_PORT=$(free_port); PG_LOG_KEEP=$D/pg.log
    as_pg "$PG_BIN/initdb" -D "$PG_DATA/db" -U postgres --auth=trust > "$D/initdb.log" 2>&1
    local pg_args="-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1 -c max_connections=200 ${PG_ARGS:-}"
    [ "${PG_STATS:-0}" = 1 ] && pg_args+=" -c shared_preload_libraries=pg_stat_statements"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA/db" -l "$PG_DATA/pg.log" -w -o "$pg_args" start > "$D/pg_ctl.log" 2>&1
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres fleet
    [ "${PG_STATS:-0}" = 1 ] && pg_sql "CREATE EXTENSION pg_stat_statements" >/dev/null
    local db=postgres://postgres@127.0.0.1:$PG_PORT/fleet
    start_server pg-a "$D/server-a" --db "$db"; urls+=("$START_URL"); servers+=("${PIDS[-1]}")
    start_server pg-b "$D/server-b" --db "$db"; urls+=("$START_URL"); servers+=("${PIDS[-1]}")
  fi
  local tokfile=$D/server/admin.token
  [ -f "$tokfile" ] || tokfile=$D/server-a/admin.token
  "$BIN/patch-server" app add --server "${urls[0]}" --token-file "$tokfile" loadapp \
    --repo "$APPREPO/repo" --public-key "$APPREPO/keys/release.pub" \
    --enroll-secret-file "$APPREPO/secret" > "$D/app-add.log" 2>&1 \
    || { cat "$D/app-add.log" >&2; exit 1; }
  for u in "${urls[@]}"; do load_servers+=(--server "$u"); done
  local conn=(--source-addresses "$SOURCES"); [ "$FRESH" = 1 ] && conn+=(--fresh-connections)
  log "$backend: servers ${urls[*]} (pids ${servers[*]})"
  local t_idle_rss; t_idle_rss=$(status_kb VmRSS "${servers[@]}")
  for n in $STEPS; do
    log "$backend: enrolling up to $n devices"
    "$BIN/fleet-load" "${load_servers[@]}" --app loadapp --secret-file "$APPREPO/secret" \
      --devices "$n" --tokens "$D/tokens" --enroll-only --enroll-concurrency 16 \
      --threads "$LOAD_THREADS" --out "$D/enroll-$n.json" > /dev/null 2> "$D/enroll-$n.log" \
      || { tail -5 "$D/enroll-$n.log" >&2; break; }
    local db0 cpu0 pgcpu0 t0 db1 cpu1 pgcpu1 t1 pg=()
    [ "$backend" = postgres ] && mapfile -t pg < <(pg_pids)
    [ "$backend" = postgres ] && [ "${PG_STATS:-0}" = 1 ] && pg_sql "SELECT pg_stat_statements_reset()" >/dev/null
    db0=$(db_bytes "$backend" "$D/server"); cpu0=$(cpu_ticks "${servers[@]}")
    pgcpu0=$(cpu_ticks "${pg[@]}"); t0=$(date +%s.%N)
    log "$backend: $n devices checking in every $INTERVAL for $DURATION"
    "$BIN/fleet-load" "${load_servers[@]}" --app loadapp --secret-file "$APPREPO/secret" \
      --devices "$n" --tokens "$D/tokens" --interval "$INTERVAL" --duration "$DURATION" \
      --warmup "$WARMUP" --threads "$LOAD_THREADS" "${conn[@]}" --out "$D/load-$n.json" \
      > /dev/null 2> "$D/load-$n.log" &
    local lp=$! dbm cpum pgcpum tm
    # the same figures at the end of the warm-up (every device has made its first check-in,
    # with its whole state): the window after it is the steady state
    sleep "$(secs "$WARMUP")"
    dbm=$(db_bytes "$backend" "$D/server"); cpum=$(cpu_ticks "${servers[@]}")
    pgcpum=$(cpu_ticks "${pg[@]}"); tm=$(date +%s.%N)
    wait $lp || { tail -5 "$D/load-$n.log" >&2; break; }
    t1=$(date +%s.%N); cpu1=$(cpu_ticks "${servers[@]}"); pgcpu1=$(cpu_ticks "${pg[@]}")
    [ "$backend" = postgres ] && mapfile -t pg < <(pg_pids)
    if [ "$backend" = postgres ] && [ "${PG_STATS:-0}" = 1 ]; then
      { pg_sql "SELECT calls, round(total_exec_time::numeric, 0) AS total_ms, \
          round(mean_exec_time::numeric, 3) AS mean_ms, rows, shared_blks_hit, shared_blks_read, \
          wal_bytes, left(regexp_replace(query, '\\s+', ' ', 'g'), 160) \
          FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 20"
        pg_sql "SELECT 'devices: updates', n_tup_upd, 'of them HOT', n_tup_hot_upd \
          FROM pg_stat_user_tables WHERE relname = 'devices'"; } > "$D/pg-stats-$n.txt" 2>&1
    fi
    db1=$(db_bytes "$backend" "$D/server")
    python3 - "$D/load-$n.json" "$D/step-$n.json" <<EOF
import json, sys
r = json.load(open(sys.argv[1]))
hz = $(getconf CLK_TCK)
wall = $t1 - $t0
r["server"] = {
    "backend": "$backend", "servers": ${#servers[@]}, "wall_s": wall,
    "cpu_s": ($cpu1 - $cpu0) / hz, "cpu_cores": ($cpu1 - $cpu0) / hz / wall,
    "db_cpu_s": ($pgcpu1 - $pgcpu0) / hz,
    "rss_kb": $(status_kb VmRSS "${servers[@]}"), "hwm_kb": $(status_kb VmHWM "${servers[@]}"),
    "rss_idle_kb": $t_idle_rss,
    "db_rss_kb": $(status_kb VmRSS "${pg[@]}"),
    "db_bytes_before": ${db0:-0}, "db_bytes_after": ${db1:-0},
    # steady state: from the end of the warm-up to the end
    "steady_wall_s": $t1 - $tm, "steady_cpu_cores": ($cpu1 - $cpum) / hz / ($t1 - $tm),
    "steady_db_cpu_cores": ($pgcpu1 - $pgcpum) / hz / ($t1 - $tm),
    "db_bytes_at_warmup_end": ${dbm:-0},
}
c = r["checkin"]
n = r["devices"]
# every check-in of the phase (warm-up included) against the database growth over the phase;
# a device polling every 60 s checks in 1,440 times a day
r["server"]["db_bytes_per_checkin"] = (r["server"]["db_bytes_after"] - r["server"]["db_bytes_before"]) / max(r["checkins_total"], 1)
r["server"]["db_bytes_per_device_day"] = r["server"]["db_bytes_per_checkin"] * 1440
# steady state: growth after every device's first check-in, per check-in of the window
r["server"]["steady_db_bytes_per_checkin"] = (r["server"]["db_bytes_after"] - r["server"]["db_bytes_at_warmup_end"]) / max(c["requests"], 1)
r["server"]["steady_db_bytes_per_device_day"] = r["server"]["steady_db_bytes_per_checkin"] * 1440
json.dump(r, open(sys.argv[2], "w"), indent=1)
s = r["server"]
print(f"{n} devices: {c['rate_per_s']:.1f}/s of {r['expected_rate_per_s']:.1f}/s, p50 {c['latency']['p50_ms']:.1f} ms, "
      f"p99 {c['latency']['p99_ms']:.1f} ms, errors {c['errors']}, server CPU {s['cpu_cores']*100:.0f} %, "
      f"RSS {s['rss_kb']/1024:.0f} MB, db +{s['db_bytes_per_checkin']:.0f} B/check-in "
      f"(steady {s['steady_db_bytes_per_checkin']:.0f}), steady CPU {s['steady_cpu_cores']*100:.0f} %", file=sys.stderr)
EOF
    local p99 errs
    p99=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['checkin']['latency']['p99_ms'])" "$D/step-$n.json")
    errs=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['checkin']['errors'])" "$D/step-$n.json")
    if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) or int(sys.argv[3]) > 0 else 1)" \
      "$p99" "$P99_LIMIT_MS" "$errs"; then
      log "$backend: stop at $n devices (p99 $p99 ms, $errs errors)"
      break
    fi
  done
  cleanup
}

run_ab() {
  local D=$F/ab url tok
  local AB_DEVICES=${AB_DEVICES:-3000} AB_PERCENT=${AB_PERCENT:-30} AB_REPS=${AB_REPS:-5}
  local AB_INTERVAL=${AB_INTERVAL:-20s} AB_DURATION=${AB_DURATION:-60s} AB_WARMUP=${AB_WARMUP:-20s}
  rm -rf "$D"; mkdir -p "$D"
  start_server sqlite "$D/server"; url=$START_URL; tok=$D/server/admin.token
  local admin=(--server "$url" --token-file "$tok")
  for app in plain staged; do
    "$BIN/patch-server" app add "${admin[@]}" "$app" --repo "$APPREPO/repo" \
      --public-key "$APPREPO/keys/release.pub" --enroll-secret-file "$APPREPO/secret" \
      >> "$D/admin.log" 2>&1 || { cat "$D/admin.log" >&2; exit 1; }
  done
  # fleet-load's simulated updates fail 5 % of the time: a threshold above that keeps the
  # rollout running for the whole comparison (checked at the end)
  "$BIN/patch-server" rollout start "${admin[@]}" --app staged --version 1.0.1 \
    --percent "$AB_PERCENT" --max-failure-rate 0.5 --min-devices 1000000 --timeout 1d \
    >> "$D/admin.log" 2>&1 || { cat "$D/admin.log" >&2; exit 1; }
  for app in plain staged; do
    log "ab: enrolling $AB_DEVICES devices of $app"
    "$BIN/fleet-load" --server "$url" --app "$app" --secret-file "$APPREPO/secret" \
      --devices "$AB_DEVICES" --tokens "$D/tokens-$app" --id-prefix "$app" --enroll-only \
      --enroll-concurrency 16 --threads "$LOAD_THREADS" --out "$D/enroll-$app.json" \
      > /dev/null 2> "$D/enroll-$app.log" || { tail -5 "$D/enroll-$app.log" >&2; exit 1; }
  done
  local conn=(--source-addresses "$SOURCES"); [ "$FRESH" = 1 ] && conn+=(--fresh-connections)
  local rep app
  # The order alternates (A B, B A, A B, ...), so that whatever the second run of a pair
  # inherits from the first (a grown WAL, a checkpoint, warm caches) falls on both sides.
  local order
  for rep in $(seq "$AB_REPS"); do
    if [ $((rep % 2)) = 1 ]; then order="plain staged"; else order="staged plain"; fi
    for app in $order; do
      log "ab: run $rep, $app: $AB_DEVICES devices every $AB_INTERVAL for $AB_DURATION"
      "$BIN/fleet-load" --server "$url" --app "$app" --secret-file "$APPREPO/secret" \
        --devices "$AB_DEVICES" --tokens "$D/tokens-$app" --id-prefix "$app" \
        --interval "$AB_INTERVAL" --duration "$AB_DURATION" --warmup "$AB_WARMUP" \
        --threads "$LOAD_THREADS" --seed "$rep" "${conn[@]}" --out "$D/$app-$rep.json" \
        > /dev/null 2> "$D/$app-$rep.log" || { tail -5 "$D/$app-$rep.log" >&2; exit 1; }
    done
  done
  "$BIN/patch-server" rollout status "${admin[@]}" --app staged --json > "$D/rollout.json" \
    2>> "$D/admin.log" || true
  cleanup
  python3 - "$D" "$AB_PERCENT" <<'PY' | tee "$D/ab.md"
import glob, json, os, statistics, sys
d, pct = sys.argv[1], sys.argv[2]
runs = {"plain": [], "staged": []}
for app in runs:
    for p in sorted(glob.glob(os.path.join(d, f"{app}-*.json")), key=lambda p: int(p.rsplit("-", 1)[1][:-5])):
        runs[app].append(json.load(open(p)))
def lat(r, k): return r["checkin"]["latency"][k]
print(f"| run | A: no rollout p50 / p99 ms | B: rollout at {pct} % p50 / p99 ms | errors A / B |")
print("|---:|---|---|---|")
for i, (a, b) in enumerate(zip(runs["plain"], runs["staged"]), 1):
    print(f"| {i} | {lat(a,'p50_ms'):.2f} / {lat(a,'p99_ms'):.2f} | {lat(b,'p50_ms'):.2f} / {lat(b,'p99_ms'):.2f} "
          f"| {a['checkin']['errors']} / {b['checkin']['errors']} |")
med = {app: {k: statistics.median(lat(r, k) for r in rs) for k in ("p50_ms", "p99_ms")} for app, rs in runs.items()}
print(f"| **median** | {med['plain']['p50_ms']:.2f} / {med['plain']['p99_ms']:.2f} "
      f"| {med['staged']['p50_ms']:.2f} / {med['staged']['p99_ms']:.2f} | |")
print()
print(f"Ratio of medians B/A: p50 {med['staged']['p50_ms'] / med['plain']['p50_ms']:.2f}, "
      f"p99 {med['staged']['p99_ms'] / med['plain']['p99_ms']:.2f}; check-ins measured per run: "
      f"{statistics.median(r['checkin']['requests'] for r in runs['plain']):.0f} (A), "
      f"{statistics.median(r['checkin']['requests'] for r in runs['staged']):.0f} (B).")
try:
    ro = json.load(open(os.path.join(d, "rollout.json")))
    r = ro[0] if isinstance(ro, list) else ro
    r = r.get("rollouts", [r])[0] if isinstance(r, dict) and "rollouts" in r else r
    keys = [k for k in ("state", "percent", "offered", "succeeded", "failed", "pending") if k in r]
    print("Rollout at the end: " + ", ".join(f"{k} {r[k]}" for k in keys))
except Exception as e:  # the status is a check, not a figure
    print(f"(rollout status unreadable: {e})")
PY
}

for b in "${BACKENDS[@]}"; do
  case $b in
    sqlite) run_backend sqlite ;;
    postgres)
      if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then
        run_backend postgres
      else
        log "postgres: no initdb found (apt-get install postgresql); skipped"
      fi ;;
    ab) run_ab ;;
    *) echo "fleet.sh: unknown backend $b (sqlite, postgres, ab)" >&2; exit 2 ;;
  esac
done
if [ "${BACKENDS[*]}" != ab ]; then python3 "$BENCH/fleet_report.py" "$F" | tee "$F/fleet.md"; fi
