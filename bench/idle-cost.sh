#!/usr/bin/env bash
# Deterministic cost of an idle `patch-apply check` for two builds of the client, for when the
# machine is too loaded for timings to mean anything: user-space instructions (valgrind
# callgrind, all threads), system calls (strace -f -c) and minor page faults (/usr/bin/time).
# Same setup as bench/idle-check.sh: a served repository of 3 small releases (made with the NEW
# build's patch-create and fixtures-gen), one app at the newest per build.
# Usage: bench/idle-cost.sh OLD_BIN_DIR NEW_BIN_DIR   (needs valgrind, strace)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(cd "$1" && pwd) NEW=$(cd "$2" && pwd)
for t in valgrind strace; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done
source bench/idle-repo.sh
idle_repo "$NEW"
for side in old new; do
  B=$OLD; [[ $side == new ]] && B=$NEW
  cp -a rel/v3 "app-$side" && mkdir "app-$side/.patchkit"
  run() { "$@" "$B/patch-apply" check --app-dir "app-$side" --repo "http://127.0.0.1:$PORT" \
    --public-key keys/release.pub --json; }
  run >/dev/null # the first check stores the trusted metadata
  ir=$(run valgrind --tool=callgrind --callgrind-out-file=/dev/null 2>&1 >/dev/null |
    sed -n 's/.*Collected : *//p')
  sc=$(run strace -f -c -o sc.txt >/dev/null 2>&1; awk '$NF=="total"{print $(NF-2)}' sc.txt)
  pf=$(run /usr/bin/time -f '%R' 2>&1 >/dev/null | tail -1)
  printf '%s: %s instructions, %s system calls, %s minor page faults\n' "$side" "$ir" "$sc" "$pf"
done
