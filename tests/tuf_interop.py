#!/usr/bin/env python3
"""python-tuf (ngclient) against patchkit repositories served over HTTP on 127.0.0.1.

Usage: tuf_interop.py --root ROOT_JSON --good DIR --old DIR --expired DIR
                      [--forged DIR:TARGET]... TARGET...

It must accept the good repository (refresh, get_targetinfo and download_target of each
TARGET, which may live in top-level targets or in a delegated role: `recent` or an archive
chunk) and refuse tampered ones: a flipped target byte, modified targets metadata, a flipped
byte in each delegated role's metadata, expired metadata, a rollback to older (validly signed)
metadata, and each --forged repository, where the delegated role that lists TARGET was changed
with its signatures kept and re-pinned by a validly signed snapshot. Prints one line per check
and exits non-zero on the first failure.
"""

import argparse
import functools
import http.server
import os
import shutil
import sys
import tempfile
import threading

from tuf.api import exceptions
from tuf.ngclient import Updater


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory):
    handler = functools.partial(Quiet, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def client(work, name, root_bytes):
    meta = os.path.join(work, name, "metadata")
    dl = os.path.join(work, name, "downloads")
    os.makedirs(meta, exist_ok=True)
    os.makedirs(dl, exist_ok=True)
    return meta, dl


def updater(meta, dl, base, root_bytes):
    return Updater(
        metadata_dir=meta,
        metadata_base_url=f"{base}/metadata/",
        target_base_url=f"{base}/targets/",
        target_dir=dl,
        bootstrap=root_bytes,
    )


def fetch_all(up, targets):
    up.refresh()
    for t in targets:
        info = up.get_targetinfo(t)
        if info is None:
            raise AssertionError(f"target {t} not found")
        path = up.download_target(info)
        with open(path, "rb") as f:
            data = f.read()
        if len(data) != info.length:
            raise AssertionError(f"{t}: downloaded {len(data)} bytes, expected {info.length}")


def expect_refused(label, fn, *errors):
    try:
        fn()
    except errors as e:
        print(f"ok: {label} refused: {type(e).__name__}: {e}")
        return
    raise AssertionError(f"{label}: python-tuf accepted it")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--good", required=True)
    ap.add_argument("--old", required=True)
    ap.add_argument("--expired", required=True)
    ap.add_argument("--forged", action="append", default=[])
    ap.add_argument("targets", nargs="+")
    a = ap.parse_args()
    with open(a.root, "rb") as f:
        root_bytes = f.read()
    work = tempfile.mkdtemp(prefix="tuf-interop-")
    try:
        # 1. The good repository is accepted.
        srv, base = serve(a.good)
        meta, dl = client(work, "good", root_bytes)
        fetch_all(updater(meta, dl, base, root_bytes), a.targets)
        print(f"ok: good repository accepted, downloaded {len(a.targets)} targets")

        # 2. Rollback: the same client, now served the older repository.
        old_srv, old_base = serve(a.old)
        expect_refused(
            "rollback to older metadata",
            lambda: updater(meta, dl, old_base, root_bytes).refresh(),
            exceptions.BadVersionNumberError,
            exceptions.RepositoryError,
        )
        old_srv.shutdown()
        srv.shutdown()

        # 3. A flipped byte in a target file.
        flipped = os.path.join(work, "flipped-repo")
        shutil.copytree(a.good, flipped, symlinks=True)
        srv, base = serve(flipped)
        meta, dl = client(work, "flipped", root_bytes)
        up = updater(meta, dl, base, root_bytes)
        up.refresh()
        info = up.get_targetinfo(a.targets[-1])
        sha = info.hashes["sha256"]
        d, _, name = info.path.rpartition("/")
        stored = os.path.join(flipped, "targets", d, f"{sha}.{name}")
        with open(stored, "r+b") as f:
            f.seek(info.length // 2)
            b = f.read(1)
            f.seek(info.length // 2)
            f.write(bytes([b[0] ^ 1]))
        expect_refused(
            "flipped target byte",
            lambda: up.download_target(info),
            exceptions.LengthOrHashMismatchError,
            exceptions.DownloadError,
        )
        srv.shutdown()

        # 4. Modified targets metadata (a target's length changed, signatures left alone).
        modified = os.path.join(work, "modified-repo")
        shutil.copytree(a.good, modified, symlinks=True)
        md = os.path.join(modified, "metadata")
        newest = max(
            (f for f in os.listdir(md) if f.endswith(".targets.json")),
            key=lambda f: int(f.split(".")[0]),
        )
        p = os.path.join(md, newest)
        with open(p, "rb") as f:
            data = f.read()
        i = data.index(b'"length": ') + len(b'"length": ')
        digit = b"2" if data[i : i + 1] != b"2" else b"3"
        data = data[:i] + digit + data[i + 1 :]
        with open(p, "wb") as f:
            f.write(data)
        srv, base = serve(modified)
        meta, dl = client(work, "modified", root_bytes)
        expect_refused(
            "modified targets metadata",
            lambda: updater(meta, dl, base, root_bytes).refresh(),
            exceptions.RepositoryError,
            exceptions.DownloadError,
        )
        srv.shutdown()

        # 4b. A flipped byte in each delegated role's newest metadata (pinned by snapshot).
        roles = sorted(
            {f.split(".", 1)[1] for f in os.listdir(os.path.join(a.good, "metadata"))
             if f.split(".")[0].isdigit() and not f.endswith((".root.json", ".snapshot.json", ".targets.json"))}
        )
        if not roles:
            raise AssertionError("the good repository has no delegated roles")
        for role in roles:
            flipped = os.path.join(work, f"flipped-{role}")
            shutil.copytree(a.good, flipped, symlinks=True)
            md = os.path.join(flipped, "metadata")
            newest = max(
                (f for f in os.listdir(md) if f.split(".", 1)[1:] == [role]),
                key=lambda f: int(f.split(".")[0]),
            )
            p = os.path.join(md, newest)
            with open(p, "rb") as f:
                data = bytearray(f.read())
            data[len(data) // 2] ^= 1
            with open(p, "wb") as f:
                f.write(data)
            srv, base = serve(flipped)
            meta, dl = client(work, f"flipped-{role}", root_bytes)
            up = updater(meta, dl, base, root_bytes)
            up.refresh()

            def lookup_all(up=up):
                for t in a.targets:
                    up.get_targetinfo(t)

            expect_refused(
                f"flipped byte in delegated role {role}",
                lookup_all,
                exceptions.RepositoryError,
                exceptions.DownloadError,
            )
            srv.shutdown()

        # 4c. Forged delegated roles: content changed, signatures kept, snapshot re-signed.
        for spec in a.forged:
            d, _, target = spec.rpartition(":")
            srv, base = serve(d)
            meta, dl = client(work, "forged-" + os.path.basename(d), root_bytes)
            up = updater(meta, dl, base, root_bytes)
            up.refresh()
            expect_refused(
                f"forged delegated role listing {target}",
                lambda up=up, target=target: up.get_targetinfo(target),
                exceptions.UnsignedMetadataError,
            )
            srv.shutdown()

        # 5. Expired metadata.
        srv, base = serve(a.expired)
        meta, dl = client(work, "expired", root_bytes)
        expect_refused(
            "expired metadata",
            lambda: updater(meta, dl, base, root_bytes).refresh(),
            exceptions.ExpiredMetadataError,
        )
        srv.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("all python-tuf interop checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
