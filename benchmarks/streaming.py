"""Peak memory of a streaming scan over a very large backend.

N volumes (100,000 by default) are written straight into an SQLite store's
rows. Then a fresh process (so that nothing else this run did counts) opens
the store, initialises the backend, measures its memory (the baseline) and
scans:

* ``iter_volumes``: ``async for vol in backend.iter_volumes(batch_size=B)``;
* ``volumes()``, for contrast: ``await backend.volumes()``, every volume at once.

Growth is reported two ways: peak RSS (``VmHWM``, reset before the scan
through ``/proc/self/clear_refs``) minus the RSS before the scan, and the
``tracemalloc`` peak of a second pass (Python allocations only, every thread).
Event-loop lag is sampled during the first pass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiocinder
from aiocinder.records import VolumeRecord

from ._common import LagMonitor, create_sqlite_schema, print_table, write_rows

BACKEND = "stream"
MB = 1024 * 1024


def records(n: int) -> Iterator[VolumeRecord]:
    """Volumes like the tracking benchmark's."""
    for i in range(n):
        yield VolumeRecord(
            id=f"vol-{i:07d}", backend_name=BACKEND, size=1, status="available",
            name=f"volume {i}", metadata={"index": str(i)}, host=f"bench@{BACKEND}#{BACKEND}",
        )


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def _scan(backend: aiocinder.Backend, mode: str, batch_size: int) -> int:
    count = 0
    if mode == "iter_volumes":
        async for vol in backend.iter_volumes(batch_size=batch_size):
            count += bool(vol.status)
    else:
        for vol in await backend.volumes():
            count += bool(vol.status)
    return count


async def _measure(db: Path, mode: str, batch_size: int) -> dict[str, Any]:
    """In the worker process: baseline, then the scan twice (RSS, then tracemalloc)."""
    await aiocinder.setup({"storage": "sqlite", "connection": f"sqlite:///{db}"})
    try:
        backend = await aiocinder.Backend(
            BACKEND, volume_driver="aiocinder.drivers.file.FileDriver",
            volumes_dir=str(db.parent / "volumes"),
        )
        # Warm up the code paths on a few rows. (Not with the scan itself: on
        # volumes() that loads every volume, and the baseline taken after it
        # would already hold the peak.)
        async with contextlib.aclosing(backend.iter_volumes(batch_size=10)) as first:
            async for _ in first:
                break
        await aiocinder.Volume.get_by_id("vol-0000000")
        gc.collect()
        baseline = _status_kb("VmRSS")
        exact = _reset_peak()
        async with LagMonitor() as lag:
            start = time.perf_counter()
            count = await _scan(backend, mode, batch_size)
            seconds = time.perf_counter() - start
        peak = _status_kb("VmHWM")
        await backend.refresh()
        gc.collect()
        tracemalloc.start()
        await _scan(backend, mode, batch_size)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        await aiocinder.shutdown()
    return {"count": count, "seconds": seconds, "baseline_mb": baseline / 1024,
            "peak_rss_mb": peak / 1024, "rss_growth_mb": (peak - baseline) / 1024,
            "exact_peak": exact, "tracemalloc_peak_mb": traced_peak / MB,
            **lag.result().as_ms()}


def measure_in_subprocess(db: Path, mode: str, batch_size: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.streaming", "--worker", str(db), mode,
         str(batch_size)],
        check=True, capture_output=True, text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(n: int = 100_000, batch_sizes: tuple[int, ...] = (500,), contrast: bool = True
        ) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "stream.sqlite"
        asyncio.run(create_sqlite_schema(db))
        start = time.perf_counter()
        write_rows(db, volumes=records(n))
        filled = time.perf_counter() - start
        runs = [("iter_volumes", b) for b in batch_sizes]
        if contrast:
            runs.append(("volumes()", 0))
        for mode, batch in runs:
            result = measure_in_subprocess(db, mode, batch)
            assert result["count"] == n, result
            name = f"iter_volumes(batch_size={batch})" if batch else "volumes() (all at once)"
            rows.append({"benchmark": "streaming", "name": name, "n": n, "batch_size": batch,
                         "populate_seconds": filled, **result})
    print_table(
        f"streaming scan, SQLite, N = {n:,} volumes; memory growth over the baseline "
        f"before the scan ({rows[0]['baseline_mb']:.0f} MB RSS), in a fresh process",
        ["", "seconds", "RSS +MB", "traced MB", "lag p50 ms", "lag p99 ms", "lag max ms"],
        [[r["name"], r["seconds"], r["rss_growth_mb"], r["tracemalloc_peak_mb"],
          r["lag_p50_ms"], r["lag_p99_ms"], r["lag_max_ms"]] for r in rows],
        widths=[30, 10, 10, 11, 12, 12, 12],
    )
    return rows


def _worker() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=Path, required=True)
    parser.add_argument("mode", choices=["iter_volumes", "volumes()"])
    parser.add_argument("batch_size", type=int)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_measure(args.worker, args.mode, args.batch_size))))


if __name__ == "__main__":
    _worker()
