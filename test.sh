#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/property tests, end-to-end tests, the
# python-tuf interoperability test, then The Update Framework's conformance suite
# (.ci/tuf-conformance.sh). Installs what it needs (python-tuf, the suite's venv, faketime) on a
# fresh machine.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never
# Each phase's heading carries the time since the start, so a slow run shows where it spent it.
phase() { echo "== $* [+$((SECONDS / 60))m$((SECONDS % 60))s]"; }
if ! python3 -c 'import tuf.ngclient' 2>/dev/null; then
  phase "installing python-tuf (for the TUF interoperability test)"
  python3 -m pip install --quiet --disable-pip-version-check 'tuf>=5' || echo "warning: python-tuf unavailable; its test will be skipped"
fi
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  phase "installing aiosmtpd (the SMTP server of the alert tests)"
  python3 -m pip install --quiet --disable-pip-version-check 'aiosmtpd>=1.4' || echo "warning: aiosmtpd unavailable; the alert tests will fail"
fi
# Debian packages the tests start or call: a throwaway PostgreSQL cluster (fleet tests),
# openssl (a self-signed certificate for the TLS test), faketime (TUF conformance suite).
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v openssl >/dev/null || need+=(openssl)
command -v faketime >/dev/null || need+=(faketime)
command -v chromedriver >/dev/null || need+=(chromium chromium-driver) # dashboard browser test
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx) # caching proxy (CDN test)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64) # Windows cross-check
command -v cc >/dev/null || need+=(gcc) # tests/tests/exe_diff.rs compiles a small C program
if ((${#need[@]})); then
  phase "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Garage, a real S3-compatible object store (publish tests). Built from crates.io once per
# machine, then kept in ~/.cargo/bin: the slow part of a first run (53 minutes measured on a
# 2-core machine busy with other builds; docs/hosting.md).
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v garage >/dev/null; then
  phase "installing garage (cargo install; first run on a machine only, up to an hour)"
  cargo install garage --locked --quiet --no-default-features --features bundled-libs,sqlite
fi
if ! python3 -c 'import ziglang' 2>/dev/null; then
  phase "installing ziglang (zig's C compiler, for the macOS cross-check)"
  python3 -m pip install --quiet --disable-pip-version-check ziglang || echo "warning: ziglang unavailable; the macOS cross-check will say it was skipped"
fi
phase "cargo fmt --check"
cargo fmt --all --check
phase "cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
python3 .ci/module-cycles.py
phase "build binaries"
cargo build --workspace --bins -q
log="${TMPDIR:-/tmp}/patchkit-test.log"
tlog="${TMPDIR:-/tmp}/patchkit-tuf-conformance.log"
# The tests' temporary files (release trees, repositories, app dirs, throwaway databases) go to
# memory when the machine has it: a directory on the /dev/shm tmpfs, removed at the end
# (TEST_TMPDIR=DIR picks another; TEST_TMPDIR=default keeps $TMPDIR). On an ext4 file system
# without a journal (this 2-core VM's), creating files right after thousands were deleted
# makes the inode allocator scan the recently deleted ones, and every apply stages, renames and
# deletes thousands: the pool of test binaries took 759 s there against 204 s on tmpfs, with
# at most 426 MiB in use (session 16, bench/RESULTS.md "The test suite's temporary files").
test_tmp="${TEST_TMPDIR:-}"
if [[ -z "$test_tmp" && -d /dev/shm && -w /dev/shm ]] &&
  (($(df -Pk /dev/shm | awk 'NR==2 {print $4}') > 4 * 1024 * 1024)) &&
  (($(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) > 6 * 1024 * 1024)); then
  test_tmp="$(mktemp -d /dev/shm/pk.XXXXXX)"
  # As /tmp: the throwaway PostgreSQL cluster runs as another user when the tests run as root.
  chmod 1777 "$test_tmp"
  trap 'rm -rf "$test_tmp"' EXIT
fi
[[ "$test_tmp" == default ]] && test_tmp=""
phase "tests${test_tmp:+ (temporary files in $test_tmp)}"
set +e
# Test binaries run side by side (.ci/run-tests.py; TEST_JOBS, default 3), then the doc-tests.
TMPDIR="${test_tmp:-${TMPDIR:-/tmp}}" python3 .ci/run-tests.py 2>&1 | tee "$log" | grep -Ev '^(running [0-9]+ tests?|)$'
status=${PIPESTATUS[0]}
set -e
phase "TUF conformance suite (../shared/tuf-conformance)"
set +e
TMPDIR="${test_tmp:-${TMPDIR:-/tmp}}" ./.ci/tuf-conformance.sh 2>&1 | tee "$tlog" | tail -5
tstatus=${PIPESTATUS[0]}
set -e
# The Windows and macOS cross-checks (.ci/cross-check.sh, docs/platforms.md), after the tests
# so that they neither slow the tests down nor compete with the main build, in the same target
# dir (the host's build scripts and proc-macros are shared); each step inside is bounded.
cross_log="${TMPDIR:-/tmp}/patchkit-cross-check.log"
cstatus=0
if [[ "${SKIP_CROSS_CHECK:-0}" == 1 ]]; then
  echo "cross-check: skipped (SKIP_CROSS_CHECK=1)"
else
  phase "cross-checks for Windows and macOS (log $cross_log)"
  set +e
  bash .ci/cross-check.sh >"$cross_log" 2>&1
  cstatus=$?
  set -e
  grep -E '^cross-check: ' "$cross_log" || true
  if [[ "$cstatus" != 0 ]]; then
    tail -40 "$cross_log"
    echo "cross-check failed (see the 'cross-check:' lines above)"
  fi
fi
phase "done"
# One closing line, the last, for both runners: cargo's test results and the suite's pytest summary.
{
  grep -E '^test result:' "$log" | awk '{print $4, $6}'
  grep -E '(passed|failed|error).* in [0-9.]+s' "$tlog" | tail -1 | grep -Eo '[0-9]+ (passed|failed|errors?)' |
    awk '$2=="passed"{p+=$1} $2!="passed"{f+=$1} END {print p+0, f+0}'
} | awk '{p+=$1; f+=$2} END {printf "%d passed, %d failed\n", p, f}'
if [[ "$status" != 0 ]]; then exit "$status"; fi
if [[ "$tstatus" != 0 ]]; then exit "$tstatus"; fi
exit "$cstatus"
