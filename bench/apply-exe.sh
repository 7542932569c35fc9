#!/usr/bin/env bash
# Apply time and memory of the executable-aware patch against the plain split diff (issue 22,
# "apply stays as it is: no slower"): one pair is released twice into two repositories, as
# shipped (`exe-project-diff` where it wins) and with `--no-exe-diff` (plain split diff), then
# the two patches are applied alternately REPS times each to fresh copies of the old tree
# (`patch-apply apply --method incremental`, wall time and peak RSS of the whole command from
# GNU time). Every app dir is compared with the new tree (`.patchkit`, the client's state, left
# out). Medians, and the sorted runs, per patch.
#
# Usage: bench/apply-exe.sh [PAIR_DIR...]
#   PAIR_DIR   a pair as PAIR_DIR/{old,new} (default: bench/corpus/uv and
#              bench/corpus/esbuild-linux, fetched by bench/peers/fetch-corpus.sh uv esbuild-linux)
# Env knobs:
#   REPS=7                 applies per patch
#   BIN=target/release     where patch-create and patch-apply are (built unless SKIP_BUILD=1)
#   WORK=bench/work/apply-exe   scratch space (put it on tmpfs to leave the disk out)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
REPS=${REPS:-7}
BIN=$(cd "${BIN:-target/release}" 2>/dev/null && pwd || echo "$ROOT/target/release")
WORK=${WORK:-$ROOT/bench/work/apply-exe}
[ $# -gt 0 ] || set -- "$ROOT/bench/corpus/uv" "$ROOT/bench/corpus/esbuild-linux"
[ -x /usr/bin/time ] || { echo "apply-exe.sh: needs GNU time (apt-get install time)" >&2; exit 2; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -q -p patchkit-create -p patchkit-apply
fi
PC=$BIN/patch-create PA=$BIN/patch-apply
for p in "$PC" "$PA"; do [ -x "$p" ] || { echo "apply-exe.sh: $p not found" >&2; exit 2; }; done

median() { sort -n | awk '{v[NR]=$1} END{if (NR==0) print "-"; else if (NR%2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2]+v[NR/2+1])/2}'; }

for pair in "$@"; do
  name=$(basename "$pair")
  [ -d "$pair/old" ] && [ -d "$pair/new" ] || { echo "apply-exe.sh: $pair has no old/ and new/" >&2; exit 2; }
  W=$WORK/$name
  rm -rf "$W"; mkdir -p "$W"
  "$PC" -q keygen --out "$W/keys" >/dev/null
  declare -A flags=([exe]="" [plain]="--no-exe-diff")
  for kind in exe plain; do
    "$PC" -q release --repo "$W/$kind" --root "$pair/old" --version 1.0.0 \
      --key "$W/keys/release.key" --name bench --no-exe-diff
    "$PC" -q release --repo "$W/$kind" --root "$pair/new" --version 1.0.1 \
      --key "$W/keys/release.key" --name bench ${flags[$kind]} --json > "$W/$kind.json"
  done
  for i in $(seq "$REPS"); do
    for kind in exe plain; do
      rm -rf "$W/app"; cp -a "$pair/old" "$W/app"
      /usr/bin/time -f "%e %M" -o "$W/time" "$PA" apply --app-dir "$W/app" --repo "$W/$kind" \
        --public-key "$W/keys/release.pub" --method incremental --json > "$W/apply.json"
      diff -rq --exclude=.patchkit "$W/app" "$pair/new" >/dev/null \
        || { echo "apply-exe.sh: $name $kind: app dir differs from new" >&2; exit 1; }
      read -r s kb < "$W/time"
      echo "$s" >> "$W/$kind.s"; echo "$kb" >> "$W/$kind.kb"
    done
  done
  echo "## $name: apply of 1.0.0 -> 1.0.1, $REPS runs each, alternating"
  echo "| patch | bytes | whole apply, sorted (s) | median | peak RSS |"
  echo "| --- | ---: | --- | ---: | ---: |"
  for kind in exe plain; do
    bytes=$(python3 -c "import json,sys; print(sum(p['bytes'] for p in json.load(open(sys.argv[1]))['patches']))" "$W/$kind.json")
    runs=$(sort -n "$W/$kind.s" | tr '\n' ' ')
    med=$(median < "$W/$kind.s")
    peak=$(sort -n "$W/$kind.kb" | tail -1)
    label=$([ "$kind" = exe ] && echo "as shipped (exe-aware)" || echo "--no-exe-diff (split diff)")
    echo "| $label | $bytes | $runs| $med s | $((peak / 1024)) MB |"
  done
  echo
done
