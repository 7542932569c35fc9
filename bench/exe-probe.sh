#!/usr/bin/env bash
# Patch bytes of the plain split diff vs the exe-split-diff candidate (docs/format.md §6.2.5)
# on the executables of the corpus pairs (uv, esbuild-linux by default).
# Usage: bench/exe-probe.sh [CORPUS_DIR] ; PROFILE=release|debug (default release)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CORPUS=${1:-$ROOT/bench/corpus}
PROFILE=${PROFILE:-release}
flag=(); [ "$PROFILE" = release ] && flag=(--release)
(cd "$ROOT" && cargo build "${flag[@]}" -p patchkit-create --example exe_probe) >&2
args=()
[ -d "$CORPUS/esbuild-linux" ] && args+=("$CORPUS/esbuild-linux/old/bin/esbuild" "$CORPUS/esbuild-linux/new/bin/esbuild")
[ -d "$CORPUS/uv" ] && args+=("$CORPUS"/uv/old/uv-*.data/scripts/uv "$CORPUS"/uv/new/uv-*.data/scripts/uv)
"$ROOT/target/$PROFILE/examples/exe_probe" "${args[@]}"
