#!/usr/bin/env bash
# Runs The Update Framework's conformance suite (theupdateframework/tuf-conformance, a copy in
# ../shared/tuf-conformance or $TUF_CONFORMANCE_DIR) against `tuf-client`, the suite's
# client-under-test built from patch-apply's trust code. Fails when a test fails that is not
# listed, with its reason, in .ci/tuf-client.xfails (the suite's own expected-failure file).
#
# Needs: python3 with venv, and `faketime` (installed with apt-get when missing). The Python
# dependencies pinned by the suite's pyproject.toml go into a cached venv:
# ${XDG_CACHE_HOME:-$HOME/.cache}/patchkit/tufc-env (reused when present).
set -euo pipefail
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
suite="${TUF_CONFORMANCE_DIR:-$repo_root/../shared/tuf-conformance}"
if [[ ! -f "$suite/pyproject.toml" ]]; then
  echo "error: no tuf-conformance suite at $suite (set TUF_CONFORMANCE_DIR)" >&2
  exit 1
fi
suite="$(cd "$suite" && pwd)"

venv="${XDG_CACHE_HOME:-$HOME/.cache}/patchkit/tufc-env"
# The pinned dependencies, read from the suite's pyproject.toml.
deps="$(python3 - "$suite/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
)"
# Whether the venv holds exactly the pinned versions.
pinned_ok() {
  [[ -x "$venv/bin/python" ]] && "$venv/bin/python" - "$deps" <<'PY'
import re, sys
from importlib.metadata import version, PackageNotFoundError
for dep in sys.argv[1].splitlines():
    m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^]]*\])?==(\S+)$", dep.strip())
    if not m:
        continue
    try:
        if version(m.group(1)) != m.group(3):
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}
if ! pinned_ok; then
  echo "== creating the conformance venv in $venv"
  python3 -m venv "$venv"
  mapfile -t dep_list <<<"$deps"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${dep_list[@]}"
fi

if ! command -v faketime >/dev/null; then
  echo "== installing faketime"
  sudo=""
  [[ "$(id -u)" != 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -q faketime
fi

echo "== building tuf-client"
cd "$repo_root"
# The whole workspace's binaries, as test.sh built them just before: building this one package
# alone would resolve the dependencies' features for it alone and compile many of them again
# (3.5 minutes of a clean CI run).
cargo build -q --workspace --bins
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
client="$target_dir/debug/tuf-client"
# The suite reads expected failures from "<entrypoint>.xfails".
grep -v '^[[:space:]]*$' "$repo_root/.ci/tuf-client.xfails" >"$client.xfails" || true

echo "== tuf-conformance suite ($suite)"
basetemp="$(mktemp -d "${TMPDIR:-/tmp}/tufc.XXXXXX")"
trap 'rm -rf "$basetemp"' EXIT
cd "$suite"
# Strict xfails: a listed test that passes fails the run too, so the list stays honest.
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/pytest" tuf_conformance \
  --entrypoint "$client" -p no:cacheprovider -q --basetemp "$basetemp" "$@"
