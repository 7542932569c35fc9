#!/usr/bin/env python3
"""Before/after comparison of two builds of patch-create/patch-apply, in the same run.

Normally started by bench/compare.sh. Standard library only; reuses bench.py's helpers.

  compare.py --old OLD_BIN_DIR --new NEW_BIN_DIR [--corpus DIR [PAIR...]] [--idle]

Per corpus pair and per repetition, the two builds run one after the other, the order swapped
every repetition (old, new, new, old, ...) so that a slow spell of the shared machine hits both:
keygen (once per build), `release` of old as 1.0.0 and of new as 1.0.1 (timed; `timings.diff_s`
from the JSON), then `patch-apply apply --method incremental` on a copy of old (timed, and its
`apply` phase from the event lines); the app dir must then match new exactly. Patch and
installer bytes must be the same for both builds (else the table says so).

--idle: for each build, a repository of 3 small releases (fixtures-gen sequence --small) served
by that build's `patch-create serve` on loopback, an app at the newest, and `patch-apply check`
timed IDLE_REPS times per build, interleaved (one untimed check first).

Output: a markdown table on stdout and in WORK/compare.md, raw numbers in WORK/compare.json.
Environment: REPS (3), IDLE_REPS (9), WORK (bench/work), TIMEOUT, APP_IGNORE as bench.py.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (bench.py next to this file: run_timed, compare_trees, ...)
from bench import Fail, log, med, must, run_timed  # noqa: E402

IDLE_REPS = max(1, int(os.environ.get("IDLE_REPS", "9")))
SIDES = ("old", "new")


def tool(bins, name):
    path = os.path.join(bins, name)
    if not os.access(path, os.X_OK):
        raise SystemExit(f"compare.py: {path} is missing or not executable")
    return path


def release(bins, repo, root, version, kdir):
    res = must(run_timed([tool(bins, "patch-create"), "release", "--repo", repo, "--root", root,
                          "--version", version, "--key", os.path.join(kdir, "release.key"),
                          "--name", "bench", "--json"]), f"{bins}: release {version}")
    js = bench.json_object(res["out"])
    if js is None:
        raise Fail(f"{bins}: release {version}: stdout is not a JSON object")
    res["json"] = js
    return res


def one_rep(side, bins, pair, old, new, W):
    """One create + apply round of a build; returns the measurements of this repetition."""
    kdir, repo, app = (os.path.join(W, side, d) for d in ("keys", "repo", "app"))
    if not os.path.isfile(os.path.join(kdir, "release.key")):
        bench.reset_dir(kdir)
        must(run_timed([tool(bins, "patch-create"), "keygen", "--out", kdir]), f"{side} keygen")
    if os.path.lexists(repo):
        shutil.rmtree(repo)
    r1 = release(bins, repo, old, "1.0.0", kdir)
    r2 = release(bins, repo, new, "1.0.1", kdir)
    js_bytes, disk_bytes, note = bench.patch_sizes(repo, r2["json"], "1.0.0", "1.0.1")
    bench.copy_tree(old, app)
    ra = must(run_timed([tool(bins, "patch-apply"), "apply", "--app-dir", app, "--repo", repo,
                         "--public-key", os.path.join(kdir, "release.pub"), "--method", "incremental",
                         "--json"]), f"{side} apply")
    last = bench.last_json_line(ra["out"]) or {}
    ok, cmp_note = bench.compare_trees(app, new)
    shutil.rmtree(app, ignore_errors=True)
    return {
        "create_v1_s": r1["wall_s"], "create_s": r2["wall_s"], "create_rss_kb": r2["rss_kb"],
        "diff_s": (r2["json"].get("timings") or {}).get("diff_s"),
        "apply_s": ra["wall_s"], "apply_rss_kb": ra["rss_kb"],
        "apply_phase_s": bench.phase_times(ra["out"]).get("apply"),
        "patch_bytes": js_bytes, "patch_disk_bytes": disk_bytes, "size_note": note,
        "installer_bytes": (r2["json"].get("installer") or {}).get("bytes"),
        "method": last.get("method"), "identical": ok, "cmp": cmp_note,
    }


def compare_pair(bins, pair, old, new, reps):
    W = os.path.join(bench.WORK, "compare", pair)
    runs = {s: [] for s in SIDES}
    for rep in range(reps):
        order = SIDES if rep % 2 == 0 else SIDES[::-1]
        for side in order:
            r = one_rep(side, bins[side], pair, old, new, W)
            runs[side].append(r)
            log(f"  {pair} {side} rep{rep + 1}: release 1.0.0 {r['create_v1_s']:.2f}s, 1.0.1 "
                f"{r['create_s']:.2f}s (diff {r['diff_s']}), apply {r['apply_s']:.3f}s, patch "
                f"{r['patch_bytes']} B, {r['cmp']}")
    return runs


def summarise(runs):
    s = {}
    for side, rs in runs.items():
        s[side] = {k: med([r[k] for r in rs]) for k in
                   ("create_v1_s", "create_s", "diff_s", "apply_s", "apply_phase_s")}
        s[side]["create_rss_kb"] = max(r["create_rss_kb"] for r in rs)
        s[side]["apply_rss_kb"] = max(r["apply_rss_kb"] for r in rs)
        s[side]["patch_bytes"] = sorted({r["patch_bytes"] for r in rs}, key=str)
        s[side]["installer_bytes"] = sorted({r["installer_bytes"] for r in rs}, key=str)
        s[side]["identical"] = all(r["identical"] for r in rs)
        s[side]["methods"] = sorted({str(r["method"]) for r in rs})
    return s


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def idle_setup(side, bins, W):
    """A served 3-release repository and an app at its newest; returns (check argv, server)."""
    d = os.path.join(W, side)
    bench.reset_dir(d)
    must(run_timed([tool(bins, "fixtures-gen"), "sequence", "--out", os.path.join(d, "rel"),
                    "--versions", "3", "--small"]), f"{side} fixtures-gen")
    must(run_timed([tool(bins, "patch-create"), "-q", "keygen", "--out", os.path.join(d, "keys")]),
         f"{side} keygen")
    for v in (1, 2, 3):
        must(run_timed([tool(bins, "patch-create"), "-q", "release", "--repo", os.path.join(d, "repo"),
                        "--root", os.path.join(d, "rel", f"v{v}"), "--version", f"{v}.0.0",
                        "--key", os.path.join(d, "keys", "release.key"), "--name", "idle"]),
             f"{side} release {v}")
    port = free_port()
    log_f = open(os.path.join(d, "serve.log"), "w")
    srv = subprocess.Popen([tool(bins, "patch-create"), "serve", "--repo", os.path.join(d, "repo"),
                            "--addr", f"127.0.0.1:{port}"], stdout=log_f, stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    app = os.path.join(d, "app")
    shutil.copytree(os.path.join(d, "rel", "v3"), app, symlinks=True)
    os.makedirs(os.path.join(app, ".patchkit"))
    argv = [tool(bins, "patch-apply"), "check", "--app-dir", app, "--repo", f"http://127.0.0.1:{port}",
            "--public-key", os.path.join(d, "keys", "release.pub"), "--json"]
    must(run_timed(argv), f"{side} first check")
    return argv, srv


def idle_compare(bins):
    W = os.path.join(bench.WORK, "compare", "_idle")
    setups = {}
    try:
        for side in SIDES:
            setups[side] = idle_setup(side, bins[side], W)
        times = {s: [] for s in SIDES}
        for rep in range(IDLE_REPS):
            for side in (SIDES if rep % 2 == 0 else SIDES[::-1]):
                r = must(run_timed(setups[side][0]), f"{side} idle check")
                times[side].append((r["wall_s"], r["rss_kb"], r["cpu_s"]))
        return {s: {"wall_s": med([t for t, _, _ in v]), "cpu_s": med([c for _, _, c in v]),
                    "rss_kb": max(k for _, k, _ in v), "runs": v}
                for s, v in times.items()}
    finally:
        for argv_srv in setups.values():
            argv_srv[1].kill()
            argv_srv[1].wait()


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"


def f3(x):
    return "-" if x is None else f"{x:.3f}"


def table(results, idle, reps):
    md = [f"Medians of {reps} interleaved runs per build (order swapped each run); peak RSS = max.",
          "", "| pair | patch B old / new | installer B old / new | release 1.0.0 s old / new (×) "
          "| release 1.0.1 s old / new (×) | diff_s old / new (×) | apply s old / new (×) "
          "| apply phase s old / new (×) | peak RSS apply MB old / new | result |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for pair, s in results.items():
        o, n = s["old"], s["new"]
        same = o["patch_bytes"] == n["patch_bytes"] and o["installer_bytes"] == n["installer_bytes"]
        pb = "/".join(f"{x:,}" if isinstance(x, int) else str(x) for x in o["patch_bytes"])
        nb = "/".join(f"{x:,}" if isinstance(x, int) else str(x) for x in n["patch_bytes"])
        ib = "/".join(f"{x:,}" if isinstance(x, int) else str(x) for x in o["installer_bytes"])
        nib = "/".join(f"{x:,}" if isinstance(x, int) else str(x) for x in n["installer_bytes"])
        res = ("identical" if o["identical"] and n["identical"] else "**tree differs**") + (
            "" if same else "; **sizes differ**")
        md.append(
            f"| {pair} | {pb} / {nb} | {ib} / {nib} | "
            f"{o['create_v1_s']:.2f} / {n['create_v1_s']:.2f} ({ratio(n['create_v1_s'], o['create_v1_s'])}) | "
            f"{o['create_s']:.2f} / {n['create_s']:.2f} ({ratio(n['create_s'], o['create_s'])}) | "
            f"{f3(o['diff_s'])} / {f3(n['diff_s'])} ({ratio(n['diff_s'], o['diff_s'])}) | "
            f"{f3(o['apply_s'])} / {f3(n['apply_s'])} ({ratio(n['apply_s'], o['apply_s'])}) | "
            f"{f3(o['apply_phase_s'])} / {f3(n['apply_phase_s'])} "
            f"({ratio(n['apply_phase_s'], o['apply_phase_s'])}) | "
            f"{o['apply_rss_kb'] / 1024:.0f} / {n['apply_rss_kb'] / 1024:.0f} | {res} |")
    if idle:
        o, n = idle["old"], idle["new"]
        md += ["", f"Idle `patch-apply check` over HTTP (app at the newest of 3 small releases), "
               f"median of {IDLE_REPS} interleaved runs: old {o['wall_s'] * 1000:.1f} ms / new "
               f"{n['wall_s'] * 1000:.1f} ms (× {ratio(n['wall_s'], o['wall_s'])}); user+system CPU: "
               f"old {o['cpu_s'] * 1000:.1f} ms / new {n['cpu_s'] * 1000:.1f} ms "
               f"(× {ratio(n['cpu_s'], o['cpu_s'])}); peak RSS "
               f"{o['rss_kb'] / 1024:.1f} / {n['rss_kb'] / 1024:.1f} MB."]
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="dir with the old build's patch-create, patch-apply, fixtures-gen")
    ap.add_argument("--new", required=True, help="dir with the new build's binaries")
    ap.add_argument("--corpus", help="corpus dir with <pair>/old and <pair>/new")
    ap.add_argument("--idle", action="store_true", help="also time the idle check of both builds")
    ap.add_argument("pairs", nargs="*")
    a = ap.parse_args()
    bins = {"old": os.path.abspath(a.old), "new": os.path.abspath(a.new)}
    os.makedirs(bench.WORK, exist_ok=True)
    results, raw = {}, {"bins": bins, "reps": bench.REPS, "pairs": {}}
    if a.corpus:
        corpus = os.path.abspath(a.corpus)
        pairs = a.pairs or sorted(d for d in os.listdir(corpus) if os.path.isdir(os.path.join(corpus, d, "new")))
        for pair in pairs:
            log(f"pair {pair}")
            try:
                runs = compare_pair(bins, pair, os.path.join(corpus, pair, "old"),
                                    os.path.join(corpus, pair, "new"), bench.REPS)
            except Fail as e:
                log(f"  {pair}: {e}")
                raw["pairs"][pair] = {"error": str(e)}
                continue
            raw["pairs"][pair] = runs
            results[pair] = summarise(runs)
    idle = None
    if a.idle:
        log("idle check")
        try:
            idle = idle_compare(bins)
        except Fail as e:
            log(f"  idle: {e}")
        raw["idle"] = idle
    md = table(results, idle, bench.REPS)
    print("\n".join(md), flush=True)
    with open(os.path.join(bench.WORK, "compare.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(bench.WORK, "compare.json"), "w") as f:
        json.dump({**raw, "summary": results}, f, indent=1, default=str)
    log(f"wrote {bench.WORK}/compare.md and compare.json")


if __name__ == "__main__":
    main()
