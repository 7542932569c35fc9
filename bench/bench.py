#!/usr/bin/env python3
"""Benchmark driver for issue 8: our patch-create/patch-apply against binary-diff peers.

Normally started by bench/run.sh (which installs tools, builds binaries and fetches the corpus).
Standard library only.

  bench.py [--corpus DIR [PAIR...]] [--large SIZE] [--many-files N]

Per corpus pair (DIR/<pair>/old -> DIR/<pair>/new), in the same run:
  * peers: bench/peers/bench-peers.sh on that pair (per changed file; added files counted as
    zstd -19 --long=27 for every peer), its TSVs parsed from WORK/peers/;
  * ours: keygen, release 1.0.0 (old), release 1.0.1 (new; timed), copy old to an app dir,
    patch-apply --method incremental (timed), app dir compared with new.
Then one table per pair (stdout and WORK/results.md, raw data in WORK/results.json).

Environment: REPS (3), TIMEOUT (seconds per command, 1800), TOOLS (peer list), OURS=0 / PEERS=0
to skip a half, PATCH_CREATE / PATCH_APPLY / FIXTURES_GEN (binary paths), OURS_UNAVAILABLE
(reason our binaries could not be built; set by run.sh), APP_IGNORE (comma-separated globs of
app-dir paths the comparison ignores, e.g. the updater's own state dir), LARGE_REPS, LARGE_EDITS
(200), LARGE_LEVEL (installer/repair zstd level of the large case), LARGE_BUDGET (its
--memory-budget), MANY_METHOD (method for installing the many-files tree; default: let patch-apply choose).
"""
import argparse
import fnmatch
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(HERE, "peers")
WORK = os.path.abspath(os.environ.get("WORK", os.path.join(HERE, "work")))
TOOLS_DIR = os.path.abspath(os.environ.get("TOOLS_DIR", os.path.join(HERE, "tools")))
REPS = max(1, int(os.environ.get("REPS", "3")))
TIMEOUT = int(os.environ.get("TIMEOUT", "1800"))
PEER_TOOLS = os.environ.get("TOOLS", "bsdiff xdelta3-9djw zstd19-long hdiffz-m bidiff").split()
PATCH_CREATE = os.environ.get("PATCH_CREATE", os.path.join(ROOT, "target", "release", "patch-create"))
PATCH_APPLY = os.environ.get("PATCH_APPLY", os.path.join(ROOT, "target", "release", "patch-apply"))
FIXTURES_GEN = os.environ.get("FIXTURES_GEN", os.path.join(ROOT, "target", "release", "fixtures-gen"))
# .patchkit is the updater's own state dir inside the app (docs/format.md): not part of the release.
APP_IGNORE = [g for g in os.environ.get("APP_IGNORE", ".patchkit").split(",") if g]

PEER_DESC = {
    "bsdiff": "bsdiff/bspatch 4.3 (Debian)",
    "qbsdiff": "qbsdiff 1.4.4 crate",
    "bidiff": "bidiff/bipatch 1.0 crates + zstd -19",
    "xdelta3-9djw": "xdelta3 -9 -S djw",
    "xdelta3": "xdelta3 (default)",
    "zstd19-long": "zstd -19 --long=31 --patch-from",
    "zstd3-long": "zstd -3 --long=31 --patch-from",
    "hdiffz-m": "HDiffPatch hdiffz -m-6 -SD -c-zstd-21-24",
    "hdiffz-s": "HDiffPatch hdiffz -s-64 -SD -c-zstd-21-24",
    "hdiffz-dir": "HDiffPatch hdiffz -m-6 on whole dirs",
}
OURS = "ours"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ helpers
def run_timed(cmd, timeout=TIMEOUT, cwd=None):
    """Run cmd under `/usr/bin/time -v`; return dict(rc, wall_s, cpu_s, rss_kb, out, err)."""
    tf = tempfile.NamedTemporaryFile(prefix="bench-time-", delete=False)
    tf.close()
    full = ["/usr/bin/time", "-v", "-o", tf.name] + [str(c) for c in cmd]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                             start_new_session=True)
    except OSError as e:
        os.unlink(tf.name)
        return {"rc": 127, "wall_s": 0.0, "rss_kb": 0, "out": "", "err": str(e)}
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        rc = 124
        err = (err or b"") + f"\n[bench] timed out after {timeout} s".encode()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # User + system CPU of the command (and of /usr/bin/time, the same small cost for every run).
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    rss = 0
    try:
        with open(tf.name, errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("Maximum resident set size"):
                    rss = int(line.rsplit(":", 1)[1].strip())
                elif line.startswith("Exit status:") and rc != 124:
                    rc = int(line.rsplit(":", 1)[1].strip())
                elif line.startswith("Command terminated by signal"):
                    rc = 128 + int(line.rsplit(" ", 1)[1])
    finally:
        os.unlink(tf.name)
    return {"rc": rc, "wall_s": wall, "cpu_s": cpu, "rss_kb": rss,
            "out": out.decode(errors="replace"), "err": err.decode(errors="replace")}


def json_object(text):
    """The whole text as one JSON object, else the last line that parses as an object."""
    text = text.strip()
    try:
        v = json.loads(text)
        if isinstance(v, dict):
            return v
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        try:
            v = json.loads(line)
            if isinstance(v, dict):
                return v
        except ValueError:
            continue
    return None


def last_json_line(text):
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            try:
                v = json.loads(line)
                return v if isinstance(v, dict) else None
            except ValueError:
                return None
    return None


class Fail(Exception):
    pass


def must(res, what):
    if res["rc"] != 0:
        tail = "\n".join((res["err"] or res["out"]).strip().splitlines()[-8:])
        raise Fail(f"{what} failed (rc={res['rc']}): {tail}")
    return res


def tree_entries(root):
    """rel path -> ('d',) | ('l', target) | ('f', size, exec_bit) | ('o',)"""
    ents = {}
    for d, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            full = os.path.join(d, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if os.path.islink(full):
                ents[rel] = ("l", os.readlink(full))
            elif os.path.isdir(full):
                ents[rel] = ("d",)
            elif os.path.isfile(full):
                ents[rel] = ("f", st.st_size, bool(st.st_mode & 0o111))
            else:
                ents[rel] = ("o",)
    return ents


def same_bytes(a, b, chunk=1 << 20):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def compare_trees(app, ref):
    """(ok, note): ok when every file/symlink/dir of ref is in app with the same bytes/target and
    app has nothing else (except APP_IGNORE globs). Exec-bit differences are reported, not fatal."""
    a, r = tree_entries(app), tree_entries(ref)

    def ignored(p):
        return any(fnmatch.fnmatch(p, g) or fnmatch.fnmatch(p.split(os.sep)[0], g) for g in APP_IGNORE)

    missing = sorted(p for p in r if p not in a)
    extra = sorted(p for p in a if p not in r and not ignored(p))
    differ, modes = [], []
    for p, e in r.items():
        if p not in a:
            continue
        x = a[p]
        if x[0] != e[0]:
            differ.append(p)
        elif e[0] == "l" and x[1] != e[1]:
            differ.append(p)
        elif e[0] == "f":
            if x[1] != e[1] or not same_bytes(os.path.join(app, p), os.path.join(ref, p)):
                differ.append(p)
            elif x[2] != e[2]:
                modes.append(p)
    bad = []
    for label, lst in (("missing", missing), ("differ", differ), ("extra", extra)):
        if lst:
            bad.append(f"{len(lst)} {label} (e.g. {', '.join(lst[:3])})")
    note = "; ".join(bad) if bad else "identical"
    if modes:
        note += f"; exec bit differs on {len(modes)} (e.g. {', '.join(modes[:3])})"
    return (not bad), note


def reset_dir(p):
    if os.path.lexists(p):
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
    os.makedirs(p)


def copy_tree(src, dst):
    if os.path.lexists(dst):
        shutil.rmtree(dst)
    r = subprocess.run(["cp", "-a", "--reflink=auto", src, dst], capture_output=True, text=True)
    if r.returncode != 0:
        raise Fail(f"cp -a {src} {dst}: {r.stderr.strip()}")


def phase_times(out):
    """Seconds per phase from `patch-apply --json` event lines (each carries `t`)."""
    marks = []
    for line in out.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("event") == "phase" and isinstance(e.get("t"), (int, float)):
            marks.append((e.get("phase"), e["t"]))
    spans = {}
    for (ph, t0), (_, t1) in zip(marks, marks[1:]):
        spans[ph] = spans.get(ph, 0.0) + (t1 - t0)
    return spans


def copy_time(src, dst):
    """Wall seconds of `cp -a` of src to a fresh dst (the apply-vs-copy yardstick)."""
    if os.path.lexists(dst):
        shutil.rmtree(dst)
    t0 = time.perf_counter()
    r = subprocess.run(["cp", "-a", src, dst], capture_output=True, text=True)
    t = time.perf_counter() - t0
    shutil.rmtree(dst, ignore_errors=True)
    if r.returncode != 0:
        raise Fail(f"cp -a {src} {dst}: {r.stderr.strip()}")
    return t


def tree_bytes(root):
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(root) for f in fs)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ours_unavailable():
    why = os.environ.get("OURS_UNAVAILABLE", "").strip()
    if why:
        return why
    for b in (PATCH_CREATE, PATCH_APPLY):
        if not os.access(b, os.X_OK):
            return f"{b} not found (cargo build --release -p patchkit-create -p patchkit-apply)"
    return None


# ------------------------------------------------------------------------------------ our tool
def keygen(kdir):
    reset_dir(kdir)
    must(run_timed([PATCH_CREATE, "keygen", "--out", kdir]), "patch-create keygen")
    for f in ("release.key", "release.pub"):
        if not os.path.isfile(os.path.join(kdir, f)):
            raise Fail(f"patch-create keygen did not write {kdir}/{f}")


def release(repo, root, version, kdir, what, extra=()):
    res = must(run_timed([PATCH_CREATE, "release", "--repo", repo, "--root", root, "--version", version,
                          "--key", os.path.join(kdir, "release.key"), "--name", "bench", "--json",
                          *extra]), what)
    js = json_object(res["out"])
    if js is None:
        raise Fail(f"{what}: stdout is not a JSON object: {res['out'][-300:]!r}")
    res["json"] = js
    return res


def patch_sizes(repo, js, frm, to):
    """(bytes from JSON, bytes on disk, note) for the patches of the release JSON."""
    patches = js.get("patches")
    if not isinstance(patches, list) or not patches:
        return None, None, "no `patches` in release JSON"
    notes = []
    if not any(p.get("from") == frm and p.get("to") == to for p in patches):
        notes.append(f"no {frm}->{to} entry in patches")
    total, disk = 0, 0
    for p in patches:
        total += int(p.get("bytes", 0))
        path = os.path.join(repo, p.get("path", ""))
        if p.get("path") and os.path.isfile(path):
            disk += os.path.getsize(path)
        else:
            notes.append(f"patch file {p.get('path')!r} not found in repo")
    if disk != total:
        notes.append(f"on-disk size {disk:,} != JSON bytes {total:,}")
    return total, disk, "; ".join(notes)


def ours_pair(pair, old, new):
    """Run our tool REPS times on old -> new. Returns a result dict (or one with 'error')."""
    why = ours_unavailable()
    if why:
        return {"error": f"not run: {why}"}
    W = os.path.join(WORK, "ours", pair)
    kdir, repo, app = os.path.join(W, "keys"), os.path.join(W, "repo"), os.path.join(W, "app")
    out = {"create": [], "apply": [], "diff_s": [], "create_v1": [], "notes": [], "apply_phase_s": [],
           "copy_s": []}
    try:
        keygen(kdir)
        for rep in range(1, REPS + 1):
            if os.path.lexists(repo):
                shutil.rmtree(repo)
            r1 = release(repo, old, "1.0.0", kdir, "release 1.0.0")
            r2 = release(repo, new, "1.0.1", kdir, "release 1.0.1")
            out["create_v1"].append(r1["wall_s"])
            out["create"].append((r2["wall_s"], r2["rss_kb"]))
            t = r2["json"].get("timings") or {}
            out["diff_s"].append(t.get("diff_s"))
            js_bytes, disk_bytes, note = patch_sizes(repo, r2["json"], "1.0.0", "1.0.1")
            copy_tree(old, app)
            ra = must(run_timed([PATCH_APPLY, "apply", "--app-dir", app, "--repo", repo, "--public-key",
                                 os.path.join(kdir, "release.pub"), "--method", "incremental", "--json"]),
                      "patch-apply apply")
            last = last_json_line(ra["out"]) or {}
            ok, cmp_note = compare_trees(app, new)
            out["apply"].append((ra["wall_s"], ra["rss_kb"]))
            out["apply_phase_s"].append(phase_times(ra["out"]).get("apply"))
            out["copy_s"].append(copy_time(new, os.path.join(W, "copy")))
            log(f"  {pair} ours rep{rep}: create {r2['wall_s']:.2f}s {r2['rss_kb']}KB, apply "
                f"{ra['wall_s']:.2f}s {ra['rss_kb']}KB, patch {js_bytes} B, {cmp_note}")
            if rep == 1:
                inst = r2["json"].get("installer") or {}
                out.update(bytes=js_bytes, disk_bytes=disk_bytes, size_note=note, ok=ok, cmp=cmp_note,
                           method=last.get("method"), downloaded=last.get("downloaded_bytes"),
                           installer_bytes=inst.get("bytes"), last_line=last)
                if last.get("method") not in (None, "incremental"):
                    out["notes"].append(f"apply reported method {last.get('method')!r}, not incremental")
                if last.get("from") != "1.0.0" or last.get("to") != "1.0.1":
                    out["notes"].append(f"apply reported from={last.get('from')!r} to={last.get('to')!r}")
            else:
                if js_bytes != out["bytes"]:
                    out["notes"].append(f"patch size varies between reps ({out['bytes']} vs {js_bytes})")
                if not ok:
                    out["ok"], out["cmp"] = False, f"rep {rep}: {cmp_note}"
            shutil.rmtree(app, ignore_errors=True)
    except Fail as e:
        out["error"] = str(e)
        log(f"  {pair} ours: {e}")
    return out


# ------------------------------------------------------------------------------------ peers
def tsv(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines:
        return []
    head = lines[0].split("\t")
    return [dict(zip(head, ln.split("\t"))) for ln in lines[1:] if ln]


def peer_tools():
    have, skipped = [], []
    for t in PEER_TOOLS:
        need = {"bidiff": "rsdiff-bench", "qbsdiff": "rsdiff-bench", "hdiffz-m": "hdiffz",
                "hdiffz-s": "hdiffz", "hdiffz-dir": "hdiffz"}.get(t)
        if need and not os.access(os.path.join(TOOLS_DIR, need), os.X_OK):
            skipped.append(f"{t} (no {TOOLS_DIR}/{need})")
        else:
            have.append(t)
    return have, skipped


def peers_pair(corpus, pair, tools):
    pw = os.path.join(WORK, "peers")
    env = dict(os.environ, REPS=str(REPS), TIMEOUT=str(TIMEOUT), TOOLS=" ".join(tools),
               RSDIFF=os.path.join(TOOLS_DIR, "rsdiff-bench"), HDIFFZ=os.path.join(TOOLS_DIR, "hdiffz"),
               HPATCHZ=os.path.join(TOOLS_DIR, "hpatchz"))
    logf = os.path.join(WORK, "logs", f"peers-{pair}.log")
    with open(logf, "w") as lf:
        rc = subprocess.call(["bash", os.path.join(SHARED, "bench-peers.sh"), corpus, pw, pair],
                             env=env, stdout=lf, stderr=subprocess.STDOUT)
    info = next((r for r in tsv(os.path.join(pw, "pairs.tsv")) if r["pair"] == pair), None)
    sizes = {r["tool"]: r for r in tsv(os.path.join(pw, "sizes.tsv")) if r["pair"] == pair}
    times = [r for r in tsv(os.path.join(pw, "times.tsv")) if r["pair"] == pair]
    res = {}
    add_z = int(info["added_zst_bytes"]) if info else 0
    for t in tools:
        tr = {ph: [r for r in times if r["tool"] == t and r["phase"] == ph] for ph in ("diff", "apply")}
        s = sizes.get(t)
        d = {}
        if not tr["diff"]:
            d["error"] = "did not run"
        elif s is None:
            bad = tr["diff"][-1]
            d["error"] = ("timed out" if bad["rc"] in ("124", "137") else f"diff failed rc={bad['rc']}") \
                + f" after {bad['wall_s']} s"
        else:
            delta = int(s["delta_bytes"] or 0)
            d["delta"] = delta
            d["bytes"] = delta if t == "hdiffz-dir" else delta + add_z
            d["ok"] = s["files_bad"] == "0" and all(r["rc"] == "0" for r in tr["apply"])
            d["cmp"] = "identical" if d["ok"] else f"{s['files_bad']} files differ / apply rc " + \
                ",".join(r["rc"] for r in tr["apply"])
            for ph, key in (("diff", "create"), ("apply", "apply")):
                ok = [r for r in tr[ph] if r["rc"] == "0"]
                d[key + "_s"] = med([float(r["wall_s"]) for r in ok])
                d[key + "_rss"] = max((int(r["maxrss_kb"] or 0) for r in tr[ph]), default=0)
                d[key + "_n"] = len(ok)
        res[t] = d
    return {"rc": rc, "info": info, "tools": res, "log": logf}


# ------------------------------------------------------------------------------------ report
def fnum(x):
    return "-" if x is None else f"{x:,}"


def fs(x):
    return "-" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def fmb(kb):
    return "-" if not kb else f"{kb / 1024:.0f}"


def ratio(v, best):
    if v is None or not best:
        return "-"
    return f"{v / best:.2f}x"


def pair_table(pair, peers, ours):
    rows = []  # (name, bytes, create_s, apply_s, create_rss_kb, apply_rss_kb, check)
    for t, d in (peers.get("tools") or {}).items():
        if "error" in d:
            rows.append((t, None, None, None, None, None, f"FAILED: {d['error']}"))
        else:
            rows.append((t, d["bytes"], d["create_s"], d["apply_s"], d["create_rss"], d["apply_rss"],
                         "ok" if d["ok"] else f"MISMATCH: {d['cmp']}"))
    best = {}
    peer_ok = [r for r in rows if r[1] is not None]
    for i in range(1, 6):
        vals = [r[i] for r in peer_ok if r[i]]
        best[i] = min(vals) if vals else None
    if ours is not None:
        if "error" in ours and "bytes" not in ours:
            rows.insert(0, (OURS, None, None, None, None, None, ours["error"]))
        else:
            c_s = med([c[0] for c in ours["create"]])
            a_s = med([a[0] for a in ours["apply"]])
            c_r = max((c[1] for c in ours["create"]), default=None)
            a_r = max((a[1] for a in ours["apply"]), default=None)
            chk = "ok" if ours.get("ok") else f"MISMATCH: {ours.get('cmp')}"
            if ours.get("error"):
                chk += f"; later rep failed: {ours['error']}"
            rows.insert(0, (OURS, ours.get("bytes"), c_s, a_s, c_r, a_r, chk))
    hdr = ("| tool | patch bytes | x best | create/diff s | x best | apply s | x best | "
           "peak RSS create MB | x best | peak RSS apply MB | x best | round trip |")
    lines = [hdr, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        name = f"**{r[0]}**" if r[0] == OURS else r[0]
        lines.append(f"| {name} | {fnum(r[1])} | {ratio(r[1], best[1])} | {fs(r[2])} | {ratio(r[2], best[2])} | "
                     f"{fs(r[3])} | {ratio(r[3], best[3])} | {fmb(r[4])} | {ratio(r[4], best[4])} | "
                     f"{fmb(r[5])} | {ratio(r[5], best[5])} | {r[6]} |")
    return lines


def pair_section(pair, corpus, peers, ours):
    out = [f"### {pair}"]
    src = os.path.join(corpus, pair, "SOURCE")
    if os.path.isfile(src):
        out[0] += f" ({open(src).read().strip()})"
    out.append("")
    info = peers.get("info") if peers else None
    if info:
        out.append(f"old {int(info['old_bytes']):,} B / new {int(info['new_bytes']):,} B, {info['files_new']} files "
                   f"in new; changed {info['changed']}, renamed {info['renamed']}, added {info['added']} "
                   f"({int(info['added_bytes']):,} B, {int(info['added_zst_bytes']):,} B as zstd -19), removed "
                   f"{info['removed']}. Baseline: new tree as tar.zst -19 = {int(info['newtree_zst_bytes']):,} B.")
        out.append("")
    out += pair_table(pair, peers or {}, ours)
    out.append("")
    notes = [f"Medians of {REPS} runs (warm page cache); peak RSS = max over runs; `x best` = ratio to the best "
             "peer in that column (ours excluded)."]
    if peers:
        notes.append("Peers: run per changed file by bench/peers/bench-peers.sh (files with the same path and "
                     "different content, plus digit-only renames, e.g. *-1.13.2.dist-info -> *-1.13.3...); "
                     "added files are counted for every peer as `zstd -19 --long=27` of each file (same bytes for "
                     "every peer, not timed); removed/unchanged files cost 0. Peer times cover the diff/apply of "
                     "those files only.")
    if ours is not None and "create" in ours and ours["create"]:
        d = med(ours["diff_s"])
        notes.append(f"Ours: create = wall time of `patch-create release` of 1.0.1 over the whole tree (hashing, "
                     f"diffing, packaging, signing, installer), JSON diff_s median {fs(d)} s; "
                     f"release 1.0.0 took {fs(med(ours['create_v1']))} s (not in the table). Patch bytes = sum of "
                     f"`patches[].bytes` (on disk {fnum(ours.get('disk_bytes'))} B"
                     f"{'; ' + ours['size_note'] if ours.get('size_note') else ''}); installer "
                     f"{fnum(ours.get('installer_bytes'))} B. Apply = `patch-apply apply --method incremental` on a "
                     f"copy of old (method reported {ours.get('method')!r}, downloaded "
                     f"{fnum(ours.get('downloaded'))} B); app dir vs new: {ours.get('cmp')}.")
        a_ph, cp_s = med(ours.get("apply_phase_s", [])), med(ours.get("copy_s", []))
        a_s = med([a[0] for a in ours["apply"]])
        zs = ((peers or {}).get("tools") or {}).get("zstd19-long") or {}
        if a_ph is not None:
            vs = (f" vs `zstd -d --patch-from` of the changed files {fs(zs['apply_s'])} s = "
                  f"{ratio(a_ph, zs['apply_s'])}") if zs.get("apply_s") else ""
            notes.append(f"Ours, diff application alone (the `apply` phase: unpack the patch, decode every op, "
                         f"hash each output; the staged outputs are fsynced in the next phase, the commit, and "
                         f"`zstd -d` does not fsync): median {fs(a_ph)} s{vs}.")
        if cp_s:
            notes.append(f"Ours, whole `patch-apply apply` {fs(a_s)} s vs `cp -a` of the new tree {fs(cp_s)} s "
                         f"= {ratio(a_s, cp_s)} (goal <= 3x).")
        notes += [f"Ours: {n}" for n in ours.get("notes", [])]
    out += [f"- {n}" for n in notes]
    out.append("")
    return out


# ------------------------------------------------------------------------------------ synthetic
def need_fixtures():
    if not os.access(FIXTURES_GEN, os.X_OK):
        raise Fail(f"{FIXTURES_GEN} not found (cargo build --release -p fixtures)")


def large_case(size_arg):
    why = ours_unavailable()
    if why:
        return {"error": f"not run: {why}"}
    reps = max(1, int(os.environ.get("LARGE_REPS", str(REPS))))
    edits = os.environ.get("LARGE_EDITS", "200")
    W = os.path.join(WORK, "large")
    old, new = os.path.join(W, "old"), os.path.join(W, "new")
    kdir, repo, app = os.path.join(W, "keys"), os.path.join(W, "repo"), os.path.join(W, "app")
    marker = os.path.join(W, "fixture.txt")
    stamp = f"{size_arg} edits={edits}"
    res = {"size": size_arg, "reps": reps, "create": [], "apply": [], "create_v1": [], "notes": []}
    # zstd -19 of the installer and repair file of a multi-GB file takes hours: LARGE_LEVEL sets
    # their level (`release --level`; patch members keep theirs). LARGE_BUDGET sets
    # `release --memory-budget` (default: patch-create's own, 4 x the file within 256M..4G).
    large_args = []
    if os.environ.get("LARGE_LEVEL"):
        large_args += ["--level", os.environ["LARGE_LEVEL"]]
        res["notes"].append(f"installer and repair files at zstd level {os.environ['LARGE_LEVEL']} (LARGE_LEVEL)")
    if os.environ.get("LARGE_BUDGET"):
        large_args += ["--memory-budget", os.environ["LARGE_BUDGET"]]
        res["notes"].append(f"release --memory-budget {os.environ['LARGE_BUDGET']} (LARGE_BUDGET)")
    try:
        need_fixtures()
        if not (os.path.isfile(marker) and open(marker).read() == stamp):
            log(f"large: generating {size_arg} pair")
            for d in (old, new):
                reset_dir(d)
            g = must(run_timed([FIXTURES_GEN, "large-pair", "--old", os.path.join(old, "big.bin"), "--new",
                                os.path.join(new, "big.bin"), "--bytes", size_arg, "--edits", edits],
                               timeout=max(TIMEOUT, 7200)), "fixtures-gen large-pair")
            res["gen_s"] = g["wall_s"]
            with open(marker, "w") as f:
                f.write(stamp)
        res["old_bytes"], res["new_bytes"] = tree_bytes(old), tree_bytes(new)
        keygen(kdir)
        for rep in range(1, reps + 1):
            if os.path.lexists(repo):
                shutil.rmtree(repo)
            r1 = release(repo, old, "1.0.0", kdir, "release 1.0.0", large_args)
            r2 = release(repo, new, "1.0.1", kdir, "release 1.0.1", large_args)
            res["create_v1"].append((r1["wall_s"], r1["rss_kb"]))
            res["create"].append((r2["wall_s"], r2["rss_kb"], (r2["json"].get("timings") or {}).get("diff_s")))
            b, disk, note = patch_sizes(repo, r2["json"], "1.0.0", "1.0.1")
            copy_tree(old, app)
            ra = must(run_timed([PATCH_APPLY, "apply", "--app-dir", app, "--repo", repo, "--public-key",
                                 os.path.join(kdir, "release.pub"), "--method", "incremental", "--json"]),
                      "patch-apply apply")
            last = last_json_line(ra["out"]) or {}
            same = subprocess.run(["cmp", "-s", os.path.join(app, "big.bin"), os.path.join(new, "big.bin")]).returncode == 0
            res["apply"].append((ra["wall_s"], ra["rss_kb"]))
            log(f"  large rep{rep}: create {r2['wall_s']:.1f}s {r2['rss_kb']}KB, apply {ra['wall_s']:.1f}s "
                f"{ra['rss_kb']}KB, patch {b} B, identical={same}")
            if rep == 1:
                res.update(bytes=b, size_note=note, method=last.get("method"), ok=same)
            res["ok"] = res["ok"] and same
            shutil.rmtree(app, ignore_errors=True)
    except Fail as e:
        res["error"] = str(e)
        log(f"  large: {e}")
    return res


def large_section(res):
    out = [f"### Synthetic large file ({res['size']}, one-file tree, 200 edits)", ""]
    if "create" not in res or not res["create"]:
        return out + [f"Not measured: {res.get('error')}", ""]
    n = res["new_bytes"]
    c_s, a_s = med([c[0] for c in res["create"]]), med([a[0] for a in res["apply"]])
    c1 = med([c[0] for c in res["create_v1"]])
    out += ["| step | wall s | throughput MB/s | peak RSS MB |", "|---|---:|---:|---:|",
            f"| release 1.0.0 (first, installer only) | {fs(c1)} | {n / 1e6 / c1:.1f} | "
            f"{fmb(max(c[1] for c in res['create_v1']))} |",
            f"| release 1.0.1 (diff from 1.0.0) | {fs(c_s)} | {n / 1e6 / c_s:.1f} | "
            f"{fmb(max(c[1] for c in res['create']))} |",
            f"| apply incremental | {fs(a_s)} | {n / 1e6 / a_s:.1f} | {fmb(max(a[1] for a in res['apply']))} |", "",
            f"- file {n:,} B; patch {fnum(res.get('bytes'))} B{'; ' + res['size_note'] if res.get('size_note') else ''}; "
            f"diff_s median {fs(med([c[2] for c in res['create']]))}; method {res.get('method')!r}; "
            f"result identical: {res.get('ok')}; median of {len(res['create'])} runs; throughput = new file bytes / wall.",
            *[f"- {n}" for n in res.get("notes", [])],
            ""]
    if res.get("error"):
        out.insert(-1, f"- a later run failed: {res['error']}")
    return out


def many_case(count):
    why = ours_unavailable()
    if why:
        return {"error": f"not run: {why}"}
    W = os.path.join(WORK, "many")
    tree, kdir, repo, app = (os.path.join(W, x) for x in ("tree", "keys", "repo", "app"))
    marker = os.path.join(W, "fixture.txt")
    res = {"count": count, "install": [], "check1": [], "check2": [], "notes": []}
    try:
        need_fixtures()
        if not (os.path.isfile(marker) and open(marker).read() == str(count)):
            log(f"many-files: generating {count} files")
            if os.path.lexists(tree):
                shutil.rmtree(tree)
            must(run_timed([FIXTURES_GEN, "many-files", "--out", tree, "--count", count]), "fixtures-gen many-files")
            with open(marker, "w") as f:
                f.write(str(count))
        res["files"] = sum(len(fs_) for _, _, fs_ in os.walk(tree))
        res["tree_bytes"] = tree_bytes(tree)
        keygen(kdir)
        if os.path.lexists(repo):
            shutil.rmtree(repo)
        r1 = release(repo, tree, "1.0.0", kdir, "release 1.0.0")
        res["release"] = (r1["wall_s"], r1["rss_kb"])
        pub = os.path.join(kdir, "release.pub")
        for rep in range(1, REPS + 1):
            reset_dir(app)
            cmd = [PATCH_APPLY, "apply", "--app-dir", app, "--repo", repo, "--public-key", pub, "--json"]
            if os.environ.get("MANY_METHOD"):
                cmd[-1:-1] = ["--method", os.environ["MANY_METHOD"]]
            ra = must(run_timed(cmd), "patch-apply apply (install into empty dir)")
            last = last_json_line(ra["out"]) or {}
            res["install"].append((ra["wall_s"], ra["rss_kb"]))
            if rep == 1:
                ok, note = compare_trees(app, tree)
                res.update(ok=ok, cmp=note, method=last.get("method"))
            checks = []
            for i in (1, 2):
                rc = must(run_timed([PATCH_APPLY, "check", "--app-dir", app, "--repo", repo, "--public-key", pub,
                                     "--json"]), f"patch-apply check #{i}")
                js = json_object(rc["out"]) or {}
                if js.get("up_to_date") is not True:
                    res["notes"].append(f"rep {rep} check #{i}: up_to_date={js.get('up_to_date')!r}")
                checks.append((rc["wall_s"], rc["rss_kb"]))
            res["check1"].append(checks[0])
            res["check2"].append(checks[1])
            log(f"  many-files rep{rep}: install {ra['wall_s']:.2f}s, check cold-ish {checks[0][0]:.2f}s, "
                f"warm {checks[1][0]:.2f}s")
        shutil.rmtree(app, ignore_errors=True)
    except Fail as e:
        res["error"] = str(e)
        log(f"  many-files: {e}")
    return res


def many_section(res):
    out = [f"### Synthetic many files ({res['count']} small files)", ""]
    if not res.get("check2"):
        return out + [f"Not measured: {res.get('error')}", ""]
    out += ["| step | wall s | peak RSS MB |", "|---|---:|---:|",
            f"| release 1.0.0 (1 run) | {fs(res['release'][0])} | {fmb(res['release'][1])} |",
            f"| install: apply into empty dir | {fs(med([x[0] for x in res['install']]))} | "
            f"{fmb(max(x[1] for x in res['install']))} |",
            f"| check, first run | {fs(med([x[0] for x in res['check1']]))} | {fmb(max(x[1] for x in res['check1']))} |",
            f"| **check, second (warm) run** | **{fs(med([x[0] for x in res['check2']]))}** | "
            f"{fmb(max(x[1] for x in res['check2']))} |", "",
            f"- {res['files']:,} files, {res['tree_bytes']:,} B; install method {res.get('method')!r}; installed tree "
            f"vs source: {res.get('cmp')}; medians of {len(res['check2'])} runs."]
    out += [f"- {n}" for n in res["notes"]]
    if res.get("error"):
        out.append(f"- a later run failed: {res['error']}")
    return out + [""]


# ------------------------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="corpus dir with <pair>/old and <pair>/new")
    ap.add_argument("--large", metavar="SIZE", help="synthetic one-file case, e.g. 512M or 8G")
    ap.add_argument("--many-files", metavar="N", help="synthetic tree of N small files")
    ap.add_argument("pairs", nargs="*")
    a = ap.parse_args()
    os.makedirs(os.path.join(WORK, "logs"), exist_ok=True)
    do_ours = os.environ.get("OURS", "1") != "0"
    do_peers = os.environ.get("PEERS", "1") != "0"
    md = [f"## Benchmark results ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, REPS={REPS})", ""]
    data = {"reps": REPS, "pairs": {}}

    if a.corpus:
        corpus = os.path.abspath(a.corpus)
        pairs = a.pairs or sorted(d for d in os.listdir(corpus) if os.path.isdir(os.path.join(corpus, d, "old"))
                                  and os.path.isdir(os.path.join(corpus, d, "new")))
        tools, skipped = peer_tools()
        if skipped:
            log(f"peers skipped: {', '.join(skipped)}")
        if do_peers:
            pw = os.path.join(WORK, "peers")
            os.makedirs(pw, exist_ok=True)
            for f in ("pairs.tsv", "sizes.tsv", "times.tsv"):  # fresh results for this run
                if os.path.exists(os.path.join(pw, f)):
                    os.unlink(os.path.join(pw, f))
        for pair in pairs:
            P = os.path.join(corpus, pair)
            if not (os.path.isdir(os.path.join(P, "old")) and os.path.isdir(os.path.join(P, "new"))):
                log(f"skip {pair}: no {P}/old and {P}/new")
                md += [f"### {pair}", "", f"Skipped: no {P}/old and {P}/new.", ""]
                continue
            log(f"pair {pair}")
            peers = None
            if do_peers:
                log(f"  peers ({' '.join(tools)}), log {WORK}/logs/peers-{pair}.log")
                peers = peers_pair(corpus, pair, tools)
                for t, d in peers["tools"].items():
                    log(f"  {pair} {t}: " + (d["error"] if "error" in d else
                        f"{d['bytes']:,} B, diff {fs(d['create_s'])} s, apply {fs(d['apply_s'])} s, "
                        f"RSS {fmb(d['create_rss'])}/{fmb(d['apply_rss'])} MB, {d['cmp']}"))
            ours = None
            if do_ours:
                log("  ours")
                ours = ours_pair(pair, os.path.join(P, "old"), os.path.join(P, "new"))
            sec = pair_section(pair, corpus, peers, ours)
            md += sec
            print("\n".join(sec), flush=True)
            data["pairs"][pair] = {"peers": peers, "ours": ours}
        if skipped:
            md.append(f"Peers not run (missing binaries): {', '.join(skipped)}.\n")
        md.append("Peer settings: " + "; ".join(f"`{t}` = {PEER_DESC.get(t, t)}" for t in tools) + ".\n")
        if do_peers and os.path.isfile(os.path.join(WORK, "peers", "pairs.tsv")):
            with open(os.path.join(WORK, "peers.md"), "w") as f:
                subprocess.call([sys.executable, os.path.join(SHARED, "report-peers.py"), os.path.join(WORK, "peers")],
                                stdout=f)
            md.append(f"(Detailed peer tables from bench/peers/report-peers.py: {WORK}/peers.md.)\n")

    if a.large:
        log(f"large {a.large}")
        r = large_case(a.large)
        sec = large_section(r)
        md += sec
        print("\n".join(sec), flush=True)
        data["large"] = r
    if a.many_files:
        log(f"many-files {a.many_files}")
        r = many_case(a.many_files)
        sec = many_section(r)
        md += sec
        print("\n".join(sec), flush=True)
        data["many_files"] = r

    with open(os.path.join(WORK, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    log(f"wrote {WORK}/results.md and {WORK}/results.json")


if __name__ == "__main__":
    main()
