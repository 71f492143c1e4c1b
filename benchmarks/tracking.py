"""The resource-tracking scan over N volumes, beside the floor of the same run.

Each volume has 2 snapshots and 1 connection. Three ways to read them:

* ``documented loop``: cinderlib's tracking loop as its documentation writes
  it, awaited (``refresh`` on the backend and on every volume, then each
  volume's snapshots and connections, and each one's ``volume()``);
* ``concurrent scan``: the volumes' ``snapshots()`` and ``connections()``
  awaited all at once with ``asyncio.gather``;
* ``prefetched scan``: ``backend.volumes(prefetch=("snapshots", "connections"))``
  then the same walk, served from the caches;
* ``floor``: the same rows read with 3 plain queries into dicts, with the
  standard library's ``sqlite3`` and ``json`` and nothing of aiocinder.

Figures are printed as ratios to the floor measured in the same run.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocinder
from aiocinder.persistence.base import PersistenceStore
from aiocinder.records import ConnectionRecord, SnapshotRecord, VolumeRecord

BACKEND = "bench"


@dataclass
class Result:
    name: str
    seconds: float
    lag_p99: float
    lag_max: float


async def populate(store: PersistenceStore, n: int) -> None:
    """N volumes with 2 snapshots and 1 connection each, written as records."""
    for i in range(n):
        vol = await store.set_volume(VolumeRecord(
            id=f"vol-{i:06d}", backend_name=BACKEND, size=1, status="in-use",
            name=f"volume {i}", metadata={"index": str(i)}, host=f"bench@{BACKEND}#{BACKEND}",
        ))
        for s in range(2):
            await store.set_snapshot(SnapshotRecord(
                id=f"snap-{i:06d}-{s}", volume_id=vol.id, backend_name=BACKEND,
                volume_size=1, status="available", name=f"snapshot {i}.{s}",
            ))
        await store.set_connection(ConnectionRecord(
            id=f"conn-{i:06d}", volume_id=vol.id, backend_name=BACKEND, status="attached",
            connector_info={"host": f"node-{i % 50}", "ip": f"10.0.{i // 250}.{i % 250}"},
            conn_info={"driver_volume_type": "local", "data": {"device_path": f"/dev/x{i}"}},
        ))


async def documented_loop(backend: aiocinder.Backend) -> int:
    seen = 0
    await backend.refresh()
    for vol in await backend.volumes():
        await vol.refresh()
        for snap in await vol.snapshots():
            seen += (await snap.volume()).id == vol.id and snap.status == "available"
        for conn in await vol.connections():
            seen += ((await conn.volume()).id == vol.id and conn.status == "attached"
                     and bool(conn.connector_info["host"]) and bool(conn.connector_info["ip"]))
    return seen


async def concurrent_scan(backend: aiocinder.Backend) -> int:
    await backend.refresh()
    volumes = await backend.volumes()
    results = await asyncio.gather(
        *(v.snapshots() for v in volumes), *(v.connections() for v in volumes)
    )
    return sum(len(r) for r in results)


async def prefetched_scan(backend: aiocinder.Backend) -> int:
    await backend.refresh()
    seen = 0
    for vol in await backend.volumes(prefetch=("snapshots", "connections")):
        for snap in await vol.snapshots():
            seen += (await snap.volume()) is vol
        for conn in await vol.connections():
            seen += (await conn.volume()) is vol and bool(conn.connector_info["host"])
    return seen


def floor(db: Path) -> int:
    """The same rows with 3 plain queries, into dicts."""
    with sqlite3.connect(db) as conn:
        rows = 0
        for table in ("volumes", "snapshots", "connections"):
            cursor = conn.execute(f"SELECT data, version FROM {table}")
            records = [json.loads(data) | {"version": v} for data, v in cursor]
            rows += len(records)
    return rows


async def timed(fn: Callable[[], Awaitable[int]], expected: int, repeat: int
                ) -> tuple[float, list[float]]:
    """Best of ``repeat`` runs, and the loop lag samples taken meanwhile."""
    lags: list[float] = []
    loop = asyncio.get_running_loop()

    async def monitor() -> None:
        while True:
            start = loop.time()
            await asyncio.sleep(0.001)
            lags.append(max(0.0, loop.time() - start - 0.001))

    best = float("inf")
    for _ in range(repeat):
        task = loop.create_task(monitor())
        start = time.perf_counter()
        got = await fn()
        best = min(best, time.perf_counter() - start)
        task.cancel()
        assert got == expected, (got, expected)
    return best, lags


def _p99(samples: list[float]) -> float:
    return (statistics.quantiles(samples, n=100, method="inclusive")[98]
            if len(samples) > 1 else max(samples or [0]))


async def run(n: int, repeat: int = 3) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        store = await aiocinder.setup({"storage": "sqlite", "connection": f"sqlite:///{db}"})
        try:
            await populate(store, n)
            backend = await aiocinder.Backend(
                BACKEND, volume_driver="aiocinder.drivers.file.FileDriver",
                volumes_dir=str(Path(tmp) / "volumes"),
            )
            results = []
            for name, fn, expected in (
                ("documented loop", lambda: documented_loop(backend), 3 * n),
                ("concurrent scan", lambda: concurrent_scan(backend), 3 * n),
                ("prefetched scan", lambda: prefetched_scan(backend), 3 * n),
            ):
                seconds, lags = await timed(fn, expected, repeat)
                results.append(Result(name, seconds, _p99(lags), max(lags, default=0)))
            best = min(_time_floor(db, 4 * n) for _ in range(repeat))
            results.append(Result("floor (3 plain queries)", best, 0.0, 0.0))
            return results
        finally:
            await aiocinder.shutdown()


def _time_floor(db: Path, expected: int) -> float:
    start = time.perf_counter()
    got = floor(db)
    elapsed = time.perf_counter() - start
    assert got == expected
    return elapsed


def report(n: int, results: list[Result]) -> list[dict[str, Any]]:
    base = results[-1].seconds
    print(f"\ntracking scan, SQLite, N = {n:,} volumes (2 snapshots + 1 connection each)")
    print(f"{'':26}{'seconds':>10}{'x floor':>10}{'lag p99 ms':>12}{'lag max ms':>12}")
    rows = []
    for r in results:
        print(f"{r.name:26}{r.seconds:10.3f}{r.seconds / base:10.1f}"
              f"{r.lag_p99 * 1000:12.2f}{r.lag_max * 1000:12.2f}")
        rows.append({"name": r.name, "n": n, "seconds": r.seconds,
                     "ratio_to_floor": r.seconds / base,
                     "lag_p99_ms": r.lag_p99 * 1000, "lag_max_ms": r.lag_max * 1000})
    return rows
