"""The benchmarks beyond the tracking scan, their options, and the targets table.

``python -m benchmarks --only cinderlib drivers streaming`` picks benchmarks;
every figure is a ratio to a baseline measured in the same run, and the last
table checks them against the targets of issue 7.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from . import drivers, streaming, vs_cinderlib
from ._common import print_table

BENCHMARKS = ("tracking", "cinderlib", "drivers", "streaming")

# The targets, as ratios or limits.
SPEEDUP_VS_CINDERLIB = 50.0
CONCURRENT_VS_FLOOR = 3.0
DRIVERS_VS_IDEAL = 1.1
LAG_P99_MS = 2.0
STREAM_GROWTH_MB = 50.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS),
                        metavar="NAME",
                        help=f"benchmarks to run, among {', '.join(BENCHMARKS)} (default: all)")
    group = parser.add_argument_group("cinderlib")
    group.add_argument("--cinderlib-n", type=int, default=5000,
                       help="volumes for the cinderlib comparison (default: 5000)")
    group.add_argument("--cinderlib-repeat", type=int, default=1,
                       help="runs of cinderlib's loop; best kept (default: 1)")
    group.add_argument("--cinderlib-venv", type=Path, default=vs_cinderlib.VENV,
                       help="a venv with cinderlib 5.2 (default: built on first use in "
                            ".bench-venvs/cinderlib)")
    group.add_argument("--cinderlib-requirements", type=Path, default=vs_cinderlib.REQUIREMENTS,
                       help="pins to build that venv from")
    group = parser.add_argument_group("driver calls")
    group.add_argument("--driver-calls", type=int, default=500, help="default: 500")
    group.add_argument("--driver-latency-ms", type=float, default=50.0, help="default: 50")
    group.add_argument("--limits", type=int, nargs="+", default=[8, 32],
                       help="max_concurrent_driver_calls to try (default: 8 32)")
    group = parser.add_argument_group("streaming")
    group.add_argument("--stream-n", type=int, default=100_000, help="default: 100000")
    group.add_argument("--batch-sizes", type=int, nargs="+", default=[500],
                       help="iter_volumes batch sizes (default: 500)")
    parser.add_argument("--chart", type=Path,
                        help="write a PNG chart of the results (needs matplotlib: "
                             "pip install -e '.[bench]')")


def run(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the selected benchmarks after the tracking rows; print the targets; chart."""
    for row in rows:
        row.setdefault("benchmark", "tracking")
    rows = list(rows)
    if "cinderlib" in args.only:
        python = vs_cinderlib.ensure_venv(args.cinderlib_venv, args.cinderlib_requirements)
        rows += vs_cinderlib.run(args.cinderlib_n, args.repeat, args.cinderlib_repeat, python)
    if "drivers" in args.only:
        rows += drivers.run(args.driver_calls, args.driver_latency_ms / 1000,
                            tuple(args.limits))
    if "streaming" in args.only:
        rows += streaming.run(args.stream_n, tuple(args.batch_sizes))
    checks = targets(rows)
    print("\nload average (1, 5, 15 min) at the end: "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg())
          + f" on {os.cpu_count()} CPUs (other work on the machine skews every figure)")
    if args.chart:
        from . import chart

        chart.draw(rows, args.chart)
        print(f"\nchart written to {args.chart}")
    return rows + checks


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per measured figure that has a target, printed as a table."""
    checks: list[dict[str, Any]] = []

    def check(what: str, value: float, goal: str, met: bool, unit: str = "x") -> None:
        checks.append({"benchmark": "target", "name": what, "value": value, "goal": goal,
                       "met": met, "unit": unit})

    for r in rows:
        bench, name = r["benchmark"], r["name"]
        where = f"N={r['n']:,}" if "n" in r else ""
        if "store" in r:
            where += f" {r['store']}"
        if bench == "cinderlib" and name == "aiocinder documented loop":
            check(f"documented loop vs cinderlib, {where}", r["speedup"],
                  f">= {SPEEDUP_VS_CINDERLIB:g}x faster", r["speedup"] >= SPEEDUP_VS_CINDERLIB)
        if bench == "tracking" and name in ("concurrent scan", "worker scan"):
            check(f"{name} vs floor, {where}", r["ratio_to_floor"],
                  f"<= {CONCURRENT_VS_FLOOR:g}x", r["ratio_to_floor"] <= CONCURRENT_VS_FLOOR)
        if bench == "drivers":
            check(f"{r['calls']} driver calls, {name}", r["ratio_to_ideal"],
                  f"<= {DRIVERS_VS_IDEAL:g}x ideal", r["ratio_to_ideal"] <= DRIVERS_VS_IDEAL)
        if bench == "streaming" and r["batch_size"]:
            check(f"streaming {where}, {name}", r["rss_growth_mb"],
                  f"< {STREAM_GROWTH_MB:g} MB", r["rss_growth_mb"] < STREAM_GROWTH_MB, "MB")
    for r in rows:
        baseline = r["name"].startswith(("floor", "cinderlib ", "gather of no-ops"))
        if "lag_p99_ms" in r and not baseline:
            where = f", N={r['n']:,}" if "n" in r else ""
            if "store" in r:
                where += f" {r['store']}"
            check(f"lag p99, {r['benchmark']}: {r['name']}{where}", r["lag_p99_ms"],
                  f"< {LAG_P99_MS:g} ms", r["lag_p99_ms"] < LAG_P99_MS, "ms")
    print_table(
        "targets",
        ["", "measured", "target", "met"],
        [[c["name"], f"{c['value']:,.2f} {c['unit']}", c["goal"], "yes" if c["met"] else "NO"]
         for c in checks],
        widths=[64, 14, 18, 6],
    )
    return checks
