#!/usr/bin/env bash
# Benchmark of issue 8: our patch-create/patch-apply against binary-diff peers on real release pairs.
#
# Usage: bench/run.sh [--large SIZE] [--many-files N] [CORPUS_DIR [PAIR...]]
#   CORPUS_DIR      pairs as CORPUS_DIR/<pair>/{old,new}; fetched with bench/peers/fetch-corpus.sh
#                   when missing (typescript esbuild-linux sympy numpy). Default bench/corpus, used
#                   when no synthetic flag is given; with only --large/--many-files no pair is run.
#   --large SIZE    synthetic one-file tree (fixtures-gen large-pair, e.g. 512M, 8G; 200 edits)
#   --many-files N  synthetic tree of N small files: install, then time `patch-apply check` (warm)
# Env knobs:
#   REPS=3          runs per measurement (medians reported)
#   TIMEOUT=1800    seconds allowed per command (per peer tool per tree)
#   TOOLS="bsdiff xdelta3-9djw zstd19-long hdiffz-m bidiff"   peers (names of bench-peers.sh)
#   OURS=0 / PEERS=0   skip our tool / the peers
#   SKIP_SETUP=1    don't install peers;  SKIP_BUILD=1  don't run cargo build
#   PATCH_CREATE= PATCH_APPLY= FIXTURES_GEN=   binaries (default target/release/...)
#   APP_IGNORE=glob,...   app-dir paths left out of the byte-for-byte comparison
#   LARGE_REPS (=REPS), LARGE_EDITS=200, MANY_METHOD (method for installing the many-files tree)
#   LARGE_LEVEL (zstd level of the large case's installer and repair file; e.g. 3: -19 of a GB
#   file takes hours), LARGE_BUDGET (its `release --memory-budget`, e.g. 1GiB)
# Output: tables on stdout and in bench/work/results.md (+ results.json, peers.md, logs/).
# Needs root (or sudo) on a fresh machine for apt-get; builds HDiffPatch into bench/tools/.
set -uo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
SHARED=$BENCH/peers
export WORK=${WORK:-$BENCH/work} TOOLS_DIR=${TOOLS_DIR:-$BENCH/tools}
mkdir -p "$WORK/logs"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

LARGE="" MANY="" CORPUS="" PAIRS=()
while [ $# -gt 0 ]; do
  case $1 in
    --large) LARGE=${2:?--large needs a SIZE}; shift 2 ;;
    --large=*) LARGE=${1#*=}; shift ;;
    --many-files) MANY=${2:?--many-files needs N}; shift 2 ;;
    --many-files=*) MANY=${1#*=}; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) if [ -z "$CORPUS" ]; then CORPUS=$1; else PAIRS+=("$1"); fi; shift ;;
  esac
done
[ -z "$CORPUS" ] && [ -z "$LARGE$MANY" ] && CORPUS=$BENCH/corpus

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
APT_UPDATED=""
apt_install() {
  [ -n "$APT_UPDATED" ] || { $SUDO apt-get update -qq; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- peers and system tools
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  missing=""
  for c in bsdiff bspatch xdelta3 zstd bc unzip cmp; do command -v $c >/dev/null || missing="$missing $c"; done
  [ -x /usr/bin/time ] || missing="$missing /usr/bin/time"
  if [ "${PEERS:-1}" != 0 ] && [ -n "$CORPUS" ]; then
    for t in hdiffz hpatchz rsdiff-bench; do [ -x "$TOOLS_DIR/$t" ] || missing="$missing $TOOLS_DIR/$t"; done
  fi
  if [ -n "$missing" ]; then
    log "setting up peers (missing:$missing) -> $TOOLS_DIR (log $WORK/logs/setup-peers.log)"
    bash "$SHARED/setup-peers.sh" "$TOOLS_DIR" > "$WORK/logs/setup-peers.log" 2>&1 \
      || log "setup-peers.sh failed (see the log); continuing with what is installed"
    APT_UPDATED=1
  fi
  # setup-peers.sh does not install `time` if it stopped early; make sure of the basics
  missing=""
  for c in bsdiff xdelta3 zstd bc unzip; do command -v $c >/dev/null || missing="$missing $c"; done
  [ -x /usr/bin/time ] || missing="$missing time"
  [ -z "$missing" ] || apt_install $missing || log "apt-get install$missing failed"
fi
[ -x /usr/bin/time ] || { echo "run.sh: /usr/bin/time (GNU time) is required: apt-get install time" >&2; exit 2; }

# ---------------------------------------------------------------- our binaries
if [ "${OURS:-1}" != 0 ] && [ "${SKIP_BUILD:-0}" != 1 ]; then
  pkgs=(-p patchkit-create -p patchkit-apply); [ -n "$LARGE$MANY" ] && pkgs+=(-p fixtures)
  log "cargo build --release ${pkgs[*]} (log $WORK/logs/cargo-build.log)"
  if ! (cd "$ROOT" && cargo build --release "${pkgs[@]}") > "$WORK/logs/cargo-build.log" 2>&1; then
    why=$(grep -m1 -E '^error' "$WORK/logs/cargo-build.log" || tail -1 "$WORK/logs/cargo-build.log")
    export OURS_UNAVAILABLE="cargo build --release ${pkgs[*]} failed: ${why} (see $WORK/logs/cargo-build.log)"
    log "$OURS_UNAVAILABLE"
  fi
fi

# ---------------------------------------------------------------- corpus
if [ -n "$CORPUS" ]; then
  need_fetch=0
  if [ ! -d "$CORPUS" ]; then need_fetch=1
  else for p in "${PAIRS[@]}"; do [ -d "$CORPUS/$p/old" ] && [ -d "$CORPUS/$p/new" ] || need_fetch=1; done; fi
  if [ $need_fetch = 1 ]; then
    command -v npm >/dev/null || apt_install npm || log "could not install npm"
    command -v pip >/dev/null || command -v pip3 >/dev/null || apt_install python3-pip || true
    log "fetching corpus into $CORPUS (log $WORK/logs/fetch-corpus.log)"
    bash "$SHARED/fetch-corpus.sh" "$CORPUS" "${PAIRS[@]}" > "$WORK/logs/fetch-corpus.log" 2>&1 \
      || log "fetch-corpus.sh failed (see the log); running the pairs that are present"
  fi
fi

# ---------------------------------------------------------------- run
args=()
[ -n "$CORPUS" ] && args+=(--corpus "$CORPUS")
[ -n "$LARGE" ] && args+=(--large "$LARGE")
[ -n "$MANY" ] && args+=(--many-files "$MANY")
exec python3 "$BENCH/bench.py" "${args[@]}" "${PAIRS[@]}"
