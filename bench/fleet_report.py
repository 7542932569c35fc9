#!/usr/bin/env python3
"""Markdown tables of bench/fleet.sh's steps: fleet_report.py WORK/fleet (reads <backend>/step-N.json)."""
import glob
import json
import os
import sys


def row(r):
    c, s = r["checkin"], r["server"]
    n = r["devices"]
    per_k = n / 1000.0
    eq_k = r["equivalent_devices_at_60s"] / 1000.0
    rss_above = max(s["rss_kb"] - s["rss_idle_kb"], 0) / 1024.0
    cpu = s.get("steady_cpu_cores", s["cpu_cores"])
    db_cpu = f" + db {s.get('steady_db_cpu_cores', s['db_cpu_s'] / s['wall_s']) * 100:.0f} %" \
        if s["backend"] == "postgres" else ""
    steady_db = s.get("steady_db_bytes_per_checkin")
    steady = "-" if steady_db is None else f"{steady_db:.0f}"
    per_day = s.get("steady_db_bytes_per_device_day", s["db_bytes_per_device_day"])
    return (f"| {n:,} | {r['equivalent_devices_at_60s']:,.0f} | {c['rate_per_s']:.1f} / {r['expected_rate_per_s']:.1f} "
            f"| {c['latency']['p50_ms']:.1f} | {c['latency']['p99_ms']:.1f} | {c['idle_latency']['p50_ms']:.1f} "
            f"| {c['errors']} | {cpu * 100:.0f} %{db_cpu} | {cpu * 100 / eq_k:.1f} % "
            f"| {s['rss_kb'] / 1024:.0f} ({s['hwm_kb'] / 1024:.0f}) | {rss_above / per_k:.1f} "
            f"| {c['idle_wire_bytes']:.0f} | {c['req_body_bytes']:.0f} / {c['resp_body_bytes']:.0f} "
            f"| {s['db_bytes_per_checkin']:.0f} / {steady} | {per_day / 1024:.0f} |")


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "bench/work/fleet"
    out = []
    for backend in ("sqlite", "postgres"):
        steps = []
        for p in glob.glob(os.path.join(base, backend, "step-*.json")):
            with open(p) as f:
                steps.append(json.load(f))
        if not steps:
            continue
        steps.sort(key=lambda r: r["devices"])
        r0 = steps[0]
        servers = r0["server"]["servers"]
        out += [f"### {backend} ({servers} server{'s' if servers > 1 else ''}"
                f"{', round-robin' if servers > 1 else ''}; interval {r0['interval_s']:g} s, "
                f"window {r0['measured_window_s']:g} s after warm-up)", "",
                "| devices | = devices at 60 s | check-ins/s got / expected | p50 ms | p99 ms | idle p50 ms "
                "| errors | server CPU, steady (of 1 core) | CPU per 1k devices at 60 s | server RSS MB (peak) "
                "| RSS MB per 1k devices above idle | B per idle check-in (wire) | mean body B sent / received "
                "| DB B per check-in (phase / steady) | DB KiB per device per day (steady, 60 s polling) |",
                "|---:|---:|---|---:|---:|---:|---:|---|---:|---|---:|---:|---|---:|---:|"]
        out += [row(r) for r in steps]
        outcomes = {}
        for r in steps:
            for k, v in r["checkin"]["outcomes"].items():
                outcomes[k] = outcomes.get(k, 0) + v
        out += ["", "Check-in outcomes over all steps: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(outcomes.items())),
                ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
