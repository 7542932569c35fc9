#!/usr/bin/env bash
# Before/after benchmark of two builds, in the same run (issues 15 and 16: "the benchmarks give
# the same results before and after", "nothing else gets slower").
#
# Usage: bench/compare.sh OLD_BIN_DIR NEW_BIN_DIR [CORPUS_DIR [PAIR...]]
#   *_BIN_DIR   dirs holding patch-create, patch-apply and fixtures-gen of each build (release)
#   CORPUS_DIR  pairs as CORPUS_DIR/<pair>/{old,new} (default bench/corpus; fetched with
#               bench/peers/fetch-corpus.sh when missing)
# Runs, for both builds: bench/idle-check.sh (requests and body bytes of an idle check), then
# bench/compare.py --idle (idle check wall time, and per pair release 1.0.0, release 1.0.1 and
# apply --method incremental, interleaved, medians of REPS). Peers are not run (they do not
# change between builds).
# Env: REPS=3, IDLE_REPS=9, WORK=bench/work. Output: stdout and WORK/compare.{md,json}.
# Build the two dirs e.g. with:
#   git worktree add --detach /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/t-old \
#     cargo build --release -p patchkit-create -p patchkit-apply -p fixtures)
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,16p' "$0"; exit 2; }
BENCH=$(cd "$(dirname "$0")" && pwd)
OLD=$(cd "$1" && pwd) NEW=$(cd "$2" && pwd)
shift 2
CORPUS=${1:-$BENCH/corpus}
[ $# -gt 0 ] && shift
export WORK=${WORK:-$BENCH/work}
mkdir -p "$WORK/logs"
[ -x /usr/bin/time ] || { echo "compare.sh: /usr/bin/time (GNU time) is required: apt-get install time" >&2; exit 2; }
missing=0
[ -d "$CORPUS" ] || missing=1
for p in "$@"; do [ -d "$CORPUS/$p/old" ] && [ -d "$CORPUS/$p/new" ] || missing=1; done
if [ $missing = 1 ]; then
  echo "[$(date +%H:%M:%S)] fetching corpus into $CORPUS (log $WORK/logs/fetch-corpus.log)" >&2
  fetch=$BENCH/peers/fetch-corpus.sh
  bash "$fetch" "$CORPUS" "$@" > "$WORK/logs/fetch-corpus.log" 2>&1
fi
for side in old new; do
  dir=$OLD; [ $side = new ] && dir=$NEW
  echo "### idle check, $side build ($dir)"
  bash "$BENCH/idle-check.sh" "$dir"
done
exec python3 "$BENCH/compare.py" --old "$OLD" --new "$NEW" --idle --corpus "$CORPUS" "$@"
