#!/usr/bin/env bash
# Build a benchmark corpus of real release pairs (old -> new) from registry packages.
# Usage: fetch-corpus.sh TARGET_DIR [PAIR...]
# With no PAIR: the four tuning pairs (typescript, esbuild-linux, sympy, numpy). The check pairs
# (uv, pyside6: real releases nobody tuned for, issue 22) are fetched only when named.
# Idempotent: a pair whose old/ and new/ trees already exist (marker .done) is skipped.
# Layout: TARGET_DIR/<pair>/{old,new}/  (extracted trees), TARGET_DIR/_dl/ (downloaded archives)
# Needs: npm, pip (any python; wheels are fetched for cp311/manylinux x86_64), unzip, tar.
set -euo pipefail
TARGET=${1:?usage: fetch-corpus.sh TARGET_DIR [PAIR...]}
shift || true
mkdir -p "$TARGET/_dl"
TARGET=$(cd "$TARGET" && pwd)
DL="$TARGET/_dl"

# pair-name  kind  package  old-version  new-version
PAIRS=$(cat <<'LIST'
typescript      npm  typescript          5.6.2   5.6.3
esbuild-linux   npm  @esbuild/linux-x64  0.24.0  0.24.2
sympy           pypi sympy               1.13.2  1.13.3
numpy           pypi numpy               2.1.2   2.1.3
uv              pypi uv                  0.5.1   0.5.2
pyside6         pypi PySide6-Essentials  6.8.0   6.8.0.1
LIST
)

SELECTED=("$@")
CHECK_PAIRS=" uv pyside6 "
want() { [ ${#SELECTED[@]} -eq 0 ] && [[ "$CHECK_PAIRS" != *" $1 "* ]] && return 0; local w; for w in "${SELECTED[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

fetch_npm() { # pkg ver dest
  local pkg=$1 ver=$2 dest=$3 d="$DL/npm-${1//[@\/]/_}-$2"
  mkdir -p "$d"
  if ! ls "$d"/*.tgz >/dev/null 2>&1; then (cd "$d" && npm pack --silent "$pkg@$ver" >/dev/null); fi
  rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
  tar -xzf "$d"/*.tgz -C "$dest.tmp"
  # npm tarballs have a single top-level 'package/' dir
  rm -rf "$dest"; mv "$dest.tmp/package" "$dest"; rm -rf "$dest.tmp"
}

fetch_pypi() { # pkg ver dest
  local pkg=$1 ver=$2 dest=$3 d="$DL/pypi-$1-$2"
  mkdir -p "$d"
  if ! ls "$d"/*.whl >/dev/null 2>&1; then
    pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --implementation cp --abi cp311 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      -d "$d" "$pkg==$ver" \
    || pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$d" "$pkg==$ver"
  fi
  rm -rf "$dest"; mkdir -p "$dest"
  unzip -q "$d"/*.whl -d "$dest"
}

while read -r name kind pkg old new; do
  [ -z "$name" ] && continue
  want "$name" || continue
  if [ -f "$TARGET/$name/.done" ]; then echo "skip $name (present)"; continue; fi
  echo "fetch $name: $pkg $old -> $new"
  mkdir -p "$TARGET/$name"
  for side in old new; do
    ver=$old; [ $side = new ] && ver=$new
    "fetch_$kind" "$pkg" "$ver" "$TARGET/$name/$side"
  done
  printf '%s %s %s -> %s\n' "$kind" "$pkg" "$old" "$new" > "$TARGET/$name/SOURCE"
  touch "$TARGET/$name/.done"
done <<< "$PAIRS"

for p in "$TARGET"/*/; do
  [ -f "$p/.done" ] || continue
  printf '%-16s old %8s  new %8s  files %6s\n' "$(basename "$p")" \
    "$(du -sh --apparent-size "$p/old" | cut -f1)" "$(du -sh --apparent-size "$p/new" | cut -f1)" \
    "$(find "$p/new" -type f | wc -l)"
done
