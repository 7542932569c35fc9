#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/property tests, end-to-end tests, and the
# python-tuf interoperability test. Installs what it needs (python-tuf) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never
if ! python3 -c 'import tuf.ngclient' 2>/dev/null; then
  echo "== installing python-tuf (for the TUF interoperability test)"
  python3 -m pip install --quiet --disable-pip-version-check 'tuf>=5' || echo "warning: python-tuf unavailable; its test will be skipped"
fi
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
python3 .ci/module-cycles.py
echo "== build binaries"
cargo build --workspace --bins -q
echo "== tests"
log="${TMPDIR:-/tmp}/patchkit-test.log"
set +e
cargo test --workspace --no-fail-fast -q 2>&1 | tee "$log" | grep -Ev '^(running [0-9]+ tests?|)$'
status=${PIPESTATUS[0]}
set -e
grep -E '^test result:' "$log" | awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed\n", p, f}'
exit "$status"
