#!/usr/bin/env bash
# Offline bundle sizes (issue 20): a repository of N releases (fixtures-gen, default 5), then
# `patch-create bundle` from the first release, from the one before the newest, and from both;
# prints each bundle's size and file count next to the repository's size and the newest
# installer's, and the time `patch-apply apply --bundle` takes to update an install of the
# first release. Usage: bench/bundle-size.sh [BIN_DIR] [N]
set -euo pipefail
BIN=$(cd "${1:-target/debug}" && pwd)
N=${2:-5}
W=$(mktemp -d "${TMPDIR:-/tmp}/patchkit-bundle.XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W"
"$BIN/fixtures-gen" sequence --out rel --versions "$N" >/dev/null
"$BIN/patch-create" -q keygen --out keys >/dev/null
for v in $(seq "$N"); do
  "$BIN/patch-create" -q release --repo repo --root "rel/v$v" --version "$v.0.0" \
    --key keys/release.key --name bench >/dev/null
done
repo_bytes=$(du -sb repo | cut -f1)
inst=$(find repo/targets/$N.0.0 -name '*.installer.tar.zst' -printf '%s\n')
echo "repository of $N releases: $repo_bytes bytes; installer of $N.0.0: $inst bytes"
prev=$((N - 1))
for froms in "1.0.0" "$prev.0.0" "1.0.0 $prev.0.0"; do
  args=()
  for f in $froms; do args+=(--from "$f"); done
  out="b-${froms// /-}.bundle"
  "$BIN/patch-create" bundle --repo repo "${args[@]}" --out "$out" --json >summary.json
  python3 - "$froms" summary.json <<'PY'
import json, sys
s = json.load(open(sys.argv[2]))
paths = "; ".join(f"{p['from']}: {p['method']} {p['bytes']} B" for p in s["paths"])
print(f"bundle from {sys.argv[1]}: {s['size']} bytes, {s['files']} files ({paths})")
PY
done
"$BIN/patch-create" bundle --repo repo --from 1.0.0 --with-repair-files --out full.bundle --json >summary.json
python3 -c "import json; s=json.load(open('summary.json')); print(f\"bundle from 1.0.0 --with-repair-files: {s['size']} bytes, {s['files']} files\")"
cp -a rel/v1 app
start=$(date +%s.%N)
"$BIN/patch-apply" -q apply --app-dir app --bundle b-1.0.0.bundle --public-key keys/release.pub >/dev/null
end=$(date +%s.%N)
python3 -c "print(f'apply --bundle from 1.0.0 to $N.0.0: {$end - $start:.2f} s')"
