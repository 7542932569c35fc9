#!/usr/bin/env python3
"""Runs the workspace's test binaries side by side instead of one after another.

`cargo test` runs test binaries sequentially; most of ours spend their time waiting on real
servers, agents, browsers and timeouts, so two or three at once use the machine better. This
builds every test binary once (`cargo test --workspace --no-run`), runs them from a pool (the
slowest first, from the durations of the previous run kept in target/test-durations.json, or
on a fresh clone from .ci/test-durations.json, a copy of one run's kept in the repository),
each in its package directory with CARGO_MANIFEST_DIR set as cargo would, prints each binary's
summary as it finishes (its whole output when it fails), then runs the doc-tests.

A binary whose tests failed (not one killed for its time) has those tests run once more,
alone, after the pool: if they pass then, the binary passes and each such test is printed as
`FLAKY: binary::test`. The timing-heavy tests (supervised agents, kills timed into a commit)
have missed their deadlines with three binaries sharing 2 cores; a real failure fails twice.

Usage: .ci/run-tests.py [--jobs N] [--timeout SECS]   (TEST_JOBS, default 3; TEST_TIMEOUT,
default 900: a test binary still running then is killed with everything it started and fails).
Exit status 1 if anything failed.
Standard library only.
"""
import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def target_dir():
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout
    return json.loads(meta)["target_directory"]


def test_binaries():
    """(name, executable, package dir) of every test binary, building them first."""
    p = subprocess.run(["cargo", "test", "--workspace", "--no-run", "--message-format=json", "-q"],
                       cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("error: building the test binaries failed (see above)")
    out = []
    for line in p.stdout.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") != "compiler-artifact" or not m.get("executable"):
            continue
        if not m.get("profile", {}).get("test"):
            continue
        pkg = os.path.dirname(m["manifest_path"])
        kind = m["target"]["kind"][0]
        name = f"{os.path.basename(pkg)}::{m['target']['name']}" + ("" if kind == "test" else f" ({kind})")
        out.append((name, m["executable"], pkg))
    return out


def run_one(name, exe, pkg, timeout, args=()):
    """Runs one test binary in its own process group; past `timeout` seconds the whole group
    (the binary and every server, agent or browser it started) is killed and the binary counts
    as failed, with what it printed so far (the harness names tests running for over 60 s)."""
    env = dict(os.environ, CARGO_MANIFEST_DIR=pkg)
    t0 = time.monotonic()
    p = subprocess.Popen([exe, *args], cwd=pkg, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, errors="replace", start_new_session=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    try:
        rc = p.wait(timeout=timeout)
        # The binary has exited, but a process it started and did not stop (an agent left
        # behind by a failed test) may still hold the output pipe open: the pipe would never
        # reach its end. Give it a few seconds, then kill what is left of the group.
        reader.join(timeout=15)
        if reader.is_alive():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            reader.join(timeout=10)
            lines.append(f"\nLEFT PROCESSES BEHIND: {name} exited with processes of its group "
                         "still running; they were killed\n")
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = p.wait()
        # A process that left the group (a session of its own) may still hold the pipe open:
        # keep what was read so far.
        reader.join(timeout=10)
        lines.append(f"\nTIMED OUT: {name} was killed after {timeout} s (TEST_TIMEOUT)\n")
        rc = -1
    return name, rc, "".join(lines), time.monotonic() - t0


def failed_tests(out):
    """The names of the tests a libtest binary reported as failed in `out`."""
    names = []
    for l in out.splitlines():
        if l.startswith("test ") and l.rstrip().endswith(" ... FAILED"):
            names.append(l[len("test "):-len(" ... FAILED")].strip())
    return names


def retry_alone(name, exe, pkg, tests, timeout):
    """Runs only `tests` of one binary again, with nothing else running; `True` if they all
    pass. Used once, for binaries whose failures were test failures (not a timeout): the
    fleet_agent tests time whole agents and supervised apps, and a 2-core machine running
    three binaries at once has made one of them miss its deadline. Each test that passes only
    here is printed as FLAKY, so it stays visible. Run like the pool's binaries, so that an app
    a failed test left running cannot hold the output pipe open until the timeout."""
    _, rc, out, _ = run_one(name, exe, pkg, timeout, ["--exact", *tests])
    print(out)
    return rc == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("TEST_JOBS", "3")))
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("TEST_TIMEOUT", "900")),
                    help="seconds one test binary may run before it is killed and fails")
    a = ap.parse_args()
    durations_file = os.path.join(target_dir(), "test-durations.json")
    known = {}
    # The previous run's durations; on a fresh clone, the ones kept in the repository.
    for path in (durations_file, os.path.join(ROOT, ".ci", "test-durations.json")):
        try:
            with open(path) as f:
                known = json.load(f)
            break
        except (OSError, ValueError):
            continue
    bins = test_binaries()
    # Slowest first (unknown ones count as slow), so the pool does not end on one long binary.
    bins.sort(key=lambda b: -known.get(b[0], 1e9))
    failed = []
    retries = []
    durations = {}
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = [pool.submit(run_one, *b, a.timeout) for b in bins]
        for fut in concurrent.futures.as_completed(futures):
            name, rc, out, secs = fut.result()
            durations[name] = round(secs, 2)
            results = [l for l in out.splitlines() if l.startswith("test result:")]
            print(f"== {name} ({secs:.1f} s)")
            if rc != 0:
                failed.append(name)
                print(out)
                tests = failed_tests(out) if rc > 0 else []
                if tests:
                    retries.append((name, tests))
            else:
                for l in results:
                    print(l)
            sys.stdout.flush()
    print(f"== {len(bins)} test binaries in {time.monotonic() - t0:.0f} s, {a.jobs} at a time")
    by_name = {b[0]: b for b in bins}
    for name, tests in retries:
        print(f"== retrying alone: {name}: {', '.join(tests)}")
        sys.stdout.flush()
        _, exe, pkg = by_name[name]
        passed = retry_alone(name, exe, pkg, tests, a.timeout)
        if passed:
            failed.remove(name)
            for t in tests:
                print(f"FLAKY: {name}::{t} failed with other binaries running, passed alone")
        sys.stdout.flush()
    try:
        with open(durations_file, "w") as f:
            json.dump(durations, f, indent=1, sort_keys=True)
    except OSError:
        pass
    print("== doc-tests")
    sys.stdout.flush()
    d = subprocess.run(["cargo", "test", "--workspace", "--doc", "-q"], cwd=ROOT)
    if d.returncode != 0:
        failed.append("doc-tests")
    if failed:
        print("FAILED: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
