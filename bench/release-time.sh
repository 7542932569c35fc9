#!/usr/bin/env bash
# Release time that follows the size of the change (issue 22): `patch-create release` of a first
# and of a second version, and a fresh install over HTTP, with the installer made the old way
# (one zstd frame compressed from the tree: "solid", the hidden `release --solid-installer`) and the new way
# (the repair files copied into it: "frames"), in the same run, medians of REPS runs.
#
# Usage: bench/release-time.sh [PAIR_DIR...]
#   PAIR_DIR   a pair as PAIR_DIR/{old,new} (default: bench/corpus/pyside6, fetched by
#              bench/peers/fetch-corpus.sh pyside6); several dirs are measured one after another.
# Env knobs:
#   REPS=3          runs per measurement (medians reported)
#   BIN=target/release   where patch-create and patch-apply are (built unless SKIP_BUILD=1)
#   LEVEL=19        `release --level` (installer and repair files)
#   MODES="solid frames"  which installers to measure
#   LEVEL_SWEEP=""  levels (e.g. "9 15 19") for an extra first release per level (frames only):
#                   time, peak RSS and repository bytes, to pick the default level
#   WORK=bench/work/release-time   scratch space (repositories of every run; removed per run)
# Per mode and pair it prints: first release (time, peak RSS, repository bytes), second release
# (time, its phases, peak RSS, bytes it added), and fresh installs of the second version into an
# empty directory from `patch-create serve` on 127.0.0.1 (`--method installer` and, for frames,
# `--method repair`): requests, body bytes, time, peak RSS. The trees installed are compared
# with `diff -r` against the release tree.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
REPS=${REPS:-3}
BIN=$(cd "${BIN:-target/release}" 2>/dev/null && pwd || echo "$ROOT/target/release")
LEVEL=${LEVEL:-19}
MODES=${MODES:-solid frames}
WORK=${WORK:-$ROOT/bench/work/release-time}
PAIRS=("$@")
[ ${#PAIRS[@]} -gt 0 ] || PAIRS=("$ROOT/bench/corpus/pyside6")
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p patch-create -p patch-apply --bins >&2
  BIN=$ROOT/target/release
fi
PC=$BIN/patch-create PA=$BIN/patch-apply

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# Runs a command under /usr/bin/time, writing "SECONDS PEAK_KB" to the file $1.
timed() { local out=$1; shift; /usr/bin/time -f "%e %M" -o "$out" "$@"; }

mkdir -p "$WORK"
RES=$WORK/results.txt
: >"$RES"
for pair in "${PAIRS[@]}"; do
  name=$(basename "$pair")
  [ -d "$pair/old" ] && [ -d "$pair/new" ] || { echo "$pair: no old/ and new/" >&2; exit 1; }
  for rep in $(seq 1 "$REPS"); do
    for mode in $MODES; do
      d=$WORK/$name-$mode
      rm -rf "$d"; mkdir -p "$d"
      "$PC" keygen --out "$d/keys" >/dev/null 2>&1
      solid=(); [ "$mode" = solid ] && solid=(--solid-installer)
      rel() { # VERSION TREE
        timed "$d/time" "$PC" release --quiet --json --name bench "${solid[@]}" \
          --repo "$d/repo" --root "$2" --version "$1" --key "$d/keys/release.key" --level "$LEVEL" \
          >"$d/release-$1.json"
      }
      log "$name $mode rep $rep: first release"
      rel 1.0.0 "$pair/old"
      read -r t1 m1 <"$d/time"
      b1=$(du -sb "$d/repo" | cut -f1)
      log "$name $mode rep $rep: second release"
      rel 2.0.0 "$pair/new"
      read -r t2 m2 <"$d/time"
      b2=$(du -sb "$d/repo" | cut -f1)
      phases=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); t=j["timings"]; print(t["scan_s"], t["repair_s"], t["diff_s"], t["installer_s"], j["installer"]["bytes"], j["repair"]["bytes"])' "$d/release-2.0.0.json")
      echo "$name $mode first_release $t1 ${m1}KB $b1" >>"$RES"
      echo "$name $mode second_release $t2 ${m2}KB $((b2 - b1)) $phases" >>"$RES"
      methods="installer"; [ "$mode" = frames ] && methods="installer repair"
      for method in $methods; do
        log "$name $mode rep $rep: fresh install over HTTP, --method $method"
        "$PC" serve --repo "$d/repo" --addr 127.0.0.1:0 2>"$d/serve.log" &
        spid=$!
        for _ in $(seq 50); do grep -q "^serving" "$d/serve.log" 2>/dev/null && break; sleep 0.1; done
        url=$(sed -n 's/^serving .* at \(http:[^ ]*\)\/$/\1/p' "$d/serve.log" | head -1)
        lines0=$(wc -l <"$d/serve.log")
        rm -rf "$d/app"
        timed "$d/time" "$PA" apply --quiet --json --app-dir "$d/app" --repo "$url" \
          --public-key "$d/keys/release.pub" --method "$method" >"$d/apply.json"
        read -r ta ma <"$d/time"
        sleep 0.2
        kill "$spid"; wait "$spid" 2>/dev/null || true
        reqs=$(tail -n +$((lines0 + 1)) "$d/serve.log" | grep -c ' GET ' || true)
        bytes=$(tail -n +$((lines0 + 1)) "$d/serve.log" | awk '$2=="GET" {s+=$5} END {print s+0}')
        diff -r --exclude=.patchkit "$d/app" "$pair/new" >/dev/null || { echo "fresh install differs from $pair/new" >&2; exit 1; }
        echo "$name $mode install_$method $ta ${ma}KB $bytes $reqs" >>"$RES"
      done
      rm -rf "$d/app"
    done
  done
done

for pair in "${PAIRS[@]}"; do
  name=$(basename "$pair")
  for lvl in ${LEVEL_SWEEP:-}; do
    for rep in $(seq 1 "$REPS"); do
      d=$WORK/$name-sweep
      rm -rf "$d"; mkdir -p "$d"
      "$PC" keygen --out "$d/keys" >/dev/null 2>&1
      log "$name level $lvl rep $rep: first release"
      timed "$d/time" "$PC" release --quiet --json --name bench --repo "$d/repo" --root "$pair/old" \
        --version 1.0.0 --key "$d/keys/release.key" --level "$lvl" >/dev/null
      read -r t m <"$d/time"
      echo "$name level$lvl first_release $t ${m}KB $(du -sb "$d/repo" | cut -f1)" >>"$RES"
      rm -rf "$d"
    done
  done
done

echo
echo "Medians of $REPS run(s), level $LEVEL, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg):"
for pair in "${PAIRS[@]}"; do
  name=$(basename "$pair")
  echo
  echo "### $name"
  echo
  echo "| installer | what | time (s) | peak RSS (MB) | bytes | requests |"
  echo "| --- | --- | ---: | ---: | ---: | ---: |"
  for mode in $MODES $(for l in ${LEVEL_SWEEP:-}; do echo "level$l"; done); do
    for what in first_release second_release install_installer install_repair; do
      rows=$(awk -v n="$name" -v m="$mode" -v w="$what" '$1==n && $2==m && $3==w' "$RES")
      [ -n "$rows" ] || continue
      t=$(echo "$rows" | awk '{print $4}' | median)
      mem=$(echo "$rows" | awk '{sub("KB","",$5); print $5/1024}' | median)
      b=$(echo "$rows" | awk '{print $6}' | median)
      case $what in
        install_*) r=$(echo "$rows" | awk '{print $7}' | median); b="$b (bodies)" ;;
        second_release) r="-"; b="$b (added)" ;;
        *) r="-"; b="$b (repository)" ;;
      esac
      printf '| %s | %s | %s | %.0f | %s | %s |\n' "$mode" "$what" "$t" "$mem" "$b" "$r"
    done
    ph=$(awk -v n="$name" -v m="$mode" '$1==n && $2==m && $3=="second_release"' "$RES")
    if [ -n "$ph" ]; then
      echo "| $mode | second release phases: scan / repair / diff / installer (s) | $(echo "$ph" | awk '{print $7}' | median) / $(echo "$ph" | awk '{print $8}' | median) / $(echo "$ph" | awk '{print $9}' | median) / $(echo "$ph" | awk '{print $10}' | median) | | installer $(echo "$ph" | awk '{print $11}' | median), repair files $(echo "$ph" | awk '{print $12}' | median) | |"
    fi
  done
done
