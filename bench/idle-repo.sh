# Sourced by bench/idle-check.sh and bench/idle-cost.sh: in a fresh work dir $W (removed on
# exit), a repository of 3 small releases made by the binaries in $1 and served over HTTP on
# loopback by its `patch-create serve`. Sets W, PORT and SERVER, and cds into $W.
idle_repo() {
  local bin=$1
  W=$(mktemp -d "${TMPDIR:-/tmp}/patchkit-idle.XXXXXX")
  trap 'kill ${SERVER:-} 2>/dev/null || true; rm -rf "$W"' EXIT
  cd "$W"
  "$bin/fixtures-gen" sequence --out rel --versions 3 --small >/dev/null
  "$bin/patch-create" -q keygen --out keys >/dev/null
  for v in 1 2 3; do
    "$bin/patch-create" -q release --repo repo --root "rel/v$v" --version "$v.0.0" \
      --key keys/release.key --name idle >/dev/null
  done
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin/patch-create" serve --repo repo --addr "127.0.0.1:$PORT" >serve.log 2>&1 &
  SERVER=$!
  for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
}
