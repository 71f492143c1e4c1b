"""A PNG chart of one run's results, for the docs (needs matplotlib: ``.[bench]``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

AIOCINDER = "#2a7ab9"
CINDERLIB = "#c8553d"
BASELINE = "#8a8a8a"
TARGET = "#2f9e44"


def draw(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Five panels: cinderlib, floor, driver calls, loop lag, streaming memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 9.5), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    _cinderlib(fig.add_subplot(grid[0, 0]), [r for r in rows if r["benchmark"] == "cinderlib"])
    _floor(fig.add_subplot(grid[0, 1]), [r for r in rows if r["benchmark"] == "tracking"])
    _drivers(fig.add_subplot(grid[0, 2]), [r for r in rows if r["benchmark"] == "drivers"])
    _lag(fig.add_subplot(grid[1, :2]), rows)
    _streaming(fig.add_subplot(grid[1, 2]), [r for r in rows if r["benchmark"] == "streaming"])
    fig.suptitle("aiocinder benchmarks (one run; every figure against a baseline of that run)",
                 fontsize=13)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _not_run(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _label_bars(ax: Any, bars: Any, labels: Sequence[str]) -> None:
    for bar, label in zip(bars, labels, strict=True):
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")


def _cinderlib(ax: Any, rows: list[dict[str, Any]]) -> None:
    title = "Tracking loop vs cinderlib 5.2"
    if not rows:
        return _not_run(ax, title)
    names = [r["name"].replace("aiocinder ", "aiocinder\n").replace("cinderlib ", "cinderlib\n")
             for r in rows]
    colors = [CINDERLIB if r["name"].startswith("cinderlib") else AIOCINDER for r in rows]
    bars = ax.bar(names, [r["seconds"] for r in rows], color=colors)
    _label_bars(ax, bars, [f"{r['seconds']:.2f} s\n{r['speedup']:.0f}x" if i else
                           f"{r['seconds']:.1f} s" for i, r in enumerate(rows)])
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log)")
    ax.set_title(f"{title}, N = {rows[0]['n']:,}, SQLite\n(x = times faster than cinderlib)")
    ax.tick_params(axis="x", labelsize=8)
    ax.margins(y=0.25)


def _floor(ax: Any, rows: list[dict[str, Any]]) -> None:
    title = "aiocinder scans vs the floor"
    scans = [r for r in rows if not r["name"].startswith("floor")]
    if not scans:
        return _not_run(ax, title)
    names = list(dict.fromkeys(r["name"] for r in scans))
    groups = list(dict.fromkeys((r["n"], r.get("store", "sqlite")) for r in scans))
    width = 0.8 / len(groups)
    for g, (n, store) in enumerate(groups):
        values = [next((r["ratio_to_floor"] for r in scans if r["name"] == name
                        and (r["n"], r.get("store", "sqlite")) == (n, store)), 0.0)
                  for name in names]
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, values, width, label=f"N = {n:,}, {store}")
        _label_bars(ax, bars, [f"{v:.1f}" for v in values])
    ax.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax.axhline(1, color=BASELINE, linewidth=1)
    ax.axhline(3, color=TARGET, linestyle="--", linewidth=1, label="target 3x (concurrent)")
    ax.set_ylabel("x floor (3 plain queries into dicts)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)


def _drivers(ax: Any, rows: list[dict[str, Any]]) -> None:
    title = "Concurrent driver calls vs the ideal"
    if not rows:
        return _not_run(ax, title)
    xs = range(len(rows))
    ideal = ax.bar([x - 0.2 for x in xs], [r["ideal_seconds"] for r in rows], 0.4,
                   color=BASELINE, label="ideal: ceil(calls / limit) x latency")
    measured = ax.bar([x + 0.2 for x in xs], [r["seconds"] for r in rows], 0.4,
                      color=AIOCINDER, label="aiocinder")
    _label_bars(ax, ideal, [f"{r['ideal_seconds']:.2f} s" for r in rows])
    _label_bars(ax, measured, [f"{r['ratio_to_ideal']:.2f}x" for r in rows])
    ax.set_xticks(list(xs), [r["name"] for r in rows])
    ax.set_ylabel("seconds")
    ax.set_title(f"{title}\n{rows[0]['calls']} calls of {rows[0]['latency_ms']:g} ms, target 1.1x")
    ax.legend(fontsize=8)
    ax.margins(y=0.15)


def _lag(ax: Any, rows: Sequence[dict[str, Any]]) -> None:
    title = "Event-loop lag while it runs (tracking scans at the largest N)"
    largest = max((r["n"] for r in rows if r["benchmark"] == "tracking"), default=0)
    measured = [r for r in rows if "lag_p99_ms" in r and r["benchmark"] != "target"
                and not r["name"].startswith(("floor", "cinderlib "))
                and (r["benchmark"] != "tracking" or r["n"] == largest)]
    if not measured:
        return _not_run(ax, title)
    labels = [(f"{r.get('store', '')} " if r["benchmark"] == "tracking" else
               f"{r['benchmark']}: ") + r["name"].removeprefix("aiocinder ")
              + (f", N={r['n']:,}" if "n" in r else "") for r in measured]
    xs = range(len(measured))
    for offset, key, color, label in ((-0.27, "lag_p50_ms", "#9cc3e4", "p50"),
                                      (0.0, "lag_p99_ms", AIOCINDER, "p99"),
                                      (0.27, "lag_max_ms", "#1b3f5e", "max")):
        values = [max(r[key], 0.01) if key in r else math.nan for r in measured]
        ax.bar([x + offset for x in xs], values, 0.27, color=color, label=label)
    ax.axhline(2, color=TARGET, linestyle="--", linewidth=1, label="target: p99 < 2 ms")
    ax.set_yscale("log")
    ax.set_ylim(0.005, 30 * max(max(r["lag_max_ms"] for r in measured), 2.0))
    ax.set_ylabel("ms late (log)")
    ax.set_xticks(list(xs), labels, fontsize=7, rotation=30, ha="right")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=4)


def _streaming(ax: Any, rows: list[dict[str, Any]]) -> None:
    title = "Memory of a scan"
    if not rows:
        return _not_run(ax, title)
    names = [r["name"].replace("(batch", "\n(batch").replace(" (all", "\n(all") for r in rows]
    colors = [AIOCINDER if r["batch_size"] else BASELINE for r in rows]
    bars = ax.bar(names, [r["rss_growth_mb"] for r in rows], color=colors)
    _label_bars(ax, bars, [f"{r['rss_growth_mb']:.0f} MB" for r in rows])
    ax.axhline(50, color=TARGET, linestyle="--", linewidth=1, label="target: < 50 MB")
    ax.set_ylabel("peak RSS growth over the baseline, MB")
    ax.set_title(f"{title}, N = {rows[0]['n']:,} volumes")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
