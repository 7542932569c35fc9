#!/usr/bin/env bash
# Cross-checks (docs/platforms.md): every crate and binary compiles for Windows
# (x86_64-pc-windows-gnu) and macOS (x86_64-apple-darwin). `cargo check` only: nothing is
# linked or run there. Installs the targets and the C compilers of the C dependencies (zstd,
# liblzma, libsais) once per machine: Debian's gcc-mingw-w64-x86-64 for Windows, PyPI's
# ziglang (`zig cc`) for macOS. A target whose tools cannot be installed is skipped with the
# reason; code that does not compile for a target that could be set up fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
say() { echo "cross-check: $*"; }
status=0
started=$SECONDS

# Every step is bounded, so that a network that swallows packets or a starved build ends in a
# clear line instead of a hung CI run.
have_target() {
  rustup target list --installed 2>/dev/null | grep -qx "$1" ||
    timeout 300 rustup target add "$1" >/dev/null 2>&1
}

# What is checked: by default the crates that run on users' machines, where Windows and macOS
# matter (patchkit-formats, patchkit-self-patcher, patchkit-apply: libraries and binaries);
# CROSS_CHECK_ALL=1 checks every crate of the workspace with its unit tests (the end-to-end
# tests in tests/ drive Linux programs and run on Linux only), which takes several times longer.
if [[ "${CROSS_CHECK_ALL:-0}" == 1 ]]; then
  scope=(--workspace --exclude e2e-tests --all-targets)
else
  scope=(-p patchkit-formats -p patchkit-self-patcher -p patchkit-apply --lib --bins)
fi

check() {
  local target=$1
  local t0=$SECONDS
  say "cargo check ${scope[*]} --target $target"
  local limit=${CROSS_CHECK_TIMEOUT:-900}
  timeout "$limit" cargo check "${scope[@]}" --target "$target" -q
  local rc=$?
  if ((rc == 0)); then
    say "$target: ok ($((SECONDS - t0)) s)"
  elif ((rc == 124)); then
    say "$target: FAILED (not finished within ${limit} s, CROSS_CHECK_TIMEOUT)"
    status=1
  else
    say "$target: FAILED (the code does not compile for this target; see above)"
    status=1
  fi
}

# Windows: MinGW-w64's gcc compiles the C dependencies.
if ! have_target x86_64-pc-windows-gnu; then
  say "skipped Windows: 'rustup target add x86_64-pc-windows-gnu' failed (no network to the Rust distribution server?)"
else
  if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
    say "installing gcc-mingw-w64-x86-64 (apt)"
    { timeout 600 apt-get install -y -qq gcc-mingw-w64-x86-64 ||
      { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq gcc-mingw-w64-x86-64; }; } >/dev/null 2>&1
  fi
  if command -v x86_64-w64-mingw32-gcc >/dev/null; then
    check x86_64-pc-windows-gnu
  else
    say "skipped Windows: the C compiler x86_64-w64-mingw32-gcc is missing and 'apt-get install gcc-mingw-w64-x86-64' failed"
  fi
fi

# macOS: zig's clang with its bundled macOS headers compiles the C dependencies (no Apple SDK
# is needed to compile; `check` links nothing).
if ! have_target x86_64-apple-darwin; then
  say "skipped macOS: 'rustup target add x86_64-apple-darwin' failed (no network to the Rust distribution server?)"
else
  if ! python3 -c 'import ziglang' 2>/dev/null; then
    say "installing ziglang (pip)"
    timeout 600 python3 -m pip install --quiet --disable-pip-version-check ziglang >/dev/null 2>&1
  fi
  if python3 -c 'import ziglang' 2>/dev/null; then
    # A fixed place, so that the C dependencies' build scripts see the same compiler on the
    # next run and are not run again.
    wrap="${CARGO_TARGET_DIR:-$PWD/target}/cross-cc"
    mkdir -p "$wrap"
    # cc-rs passes its own `--target=...` (or `-arch`); zig wants `-target`, given here.
    cat >"$wrap/zigcc" <<'SH'
#!/usr/bin/env bash
args=()
skip=0
for a in "$@"; do
  if ((skip)); then skip=0; continue; fi
  case "$a" in
    --target=*|-mmacosx-version-min=*) ;;
    -arch|-target) skip=1 ;;
    *) args+=("$a") ;;
  esac
done
exec python3 -m ziglang cc -target x86_64-macos "${args[@]}"
SH
    printf '#!/usr/bin/env bash\nexec python3 -m ziglang ar "$@"\n' >"$wrap/zigar"
    chmod +x "$wrap/zigcc" "$wrap/zigar"
    CC_x86_64_apple_darwin="$wrap/zigcc" AR_x86_64_apple_darwin="$wrap/zigar" \
      SDKROOT="$wrap" check x86_64-apple-darwin
  else
    say "skipped macOS: 'pip install ziglang' failed, and there is no other C compiler for x86_64-apple-darwin on Linux"
  fi
fi

say "done in $((SECONDS - started)) s"
exit $status
