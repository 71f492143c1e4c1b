"""The resource-tracking scan over N volumes, beside the floor of the same run.

Each volume has 2 snapshots and 1 connection. Three ways to read them:

* ``documented loop``: cinderlib's tracking loop as its documentation writes
  it, awaited (``refresh`` on the backend and on every volume, then each
  volume's snapshots and connections, and each one's ``volume()``);
* ``concurrent scan``: the volumes' ``snapshots()`` and ``connections()``
  awaited all at once with ``asyncio.gather``;
* ``worker scan``: the same, by :data:`WORKERS` tasks of a task group that
  take the volumes one by one, the way a service bounds its concurrency;
* ``gather of no-ops``: ``asyncio.gather`` over 2N coroutines that do
  nothing, for what the caller's own gather costs in time and loop lag;
* ``prefetched scan``: ``backend.volumes(prefetch=("snapshots", "connections"))``
  then the same walk, served from the caches;
* ``floor``: the same rows read with 3 plain queries into dicts, with the
  standard library's ``sqlite3`` and ``json`` and nothing of aiocinder; on
  PostgreSQL, 3 plain asyncpg queries on a connection already open.

Figures are printed as ratios to the floor measured in the same run. Each
store is measured on its own (``--stores sqlite postgresql``): SQLite in a
temporary file, PostgreSQL in a new database on the server whose DSN is in
``AIOCINDER_BENCH_PG_DSN`` (its role must be allowed to ``CREATE DATABASE``),
or else on a throwaway server started as the tests start theirs
(``tests/pgserver.py``: ``fsync=off``, on ``/dev/shm`` when it has room).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocinder
from aiocinder.persistence.base import PersistenceStore
from aiocinder.records import ConnectionRecord, SnapshotRecord, VolumeRecord

from ._common import LagMonitor, lag_of

BACKEND = "bench"
#: The stores the scan can run on, and their names in the tables.
STORES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
#: A PostgreSQL server to measure on instead of a throwaway one.
PG_DSN_ENV = "AIOCINDER_BENCH_PG_DSN"
_TABLES = ("volumes", "snapshots", "connections")
#: Tasks of the worker scan.
WORKERS = 64


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


async def worker_scan(backend: aiocinder.Backend) -> int:
    await backend.refresh()
    volumes = iter(await backend.volumes())
    seen = 0

    async def worker() -> None:
        nonlocal seen
        for vol in volumes:  # shared: each volume goes to one worker
            found = len(await vol.snapshots()) + len(await vol.connections())
            seen += found  # not `seen += await ...`: that reads `seen` before awaiting

    async with asyncio.TaskGroup() as group:
        for _ in range(WORKERS):
            group.create_task(worker())
    return seen


async def gather_noops(n: int) -> int:
    async def noop() -> int:
        return 1

    return sum(await asyncio.gather(*(noop() for _ in range(2 * n))))


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
        for table in _TABLES:
            cursor = conn.execute(f"SELECT data, version FROM {table}")
            records = [json.loads(data) | {"version": v} for data, v in cursor]
            rows += len(records)
    return rows


async def pg_floor(conn: Any) -> int:
    """The same rows with 3 plain asyncpg queries on an open connection, into dicts."""
    rows = 0
    for table in _TABLES:
        fetched = await conn.fetch(f"SELECT data::text, version FROM {table}")
        records = [json.loads(data) | {"version": v} for data, v in fetched]
        rows += len(records)
    return rows


async def timed(fn: Callable[[], Awaitable[int]], expected: int, repeat: int
                ) -> tuple[float, list[float]]:
    """Best of ``repeat`` runs, and the loop lag samples taken meanwhile."""
    lags: list[float] = []
    best = float("inf")
    for _ in range(repeat):
        gc.collect()  # the garbage of the runs before is not this run's pause
        async with LagMonitor() as monitor:
            start = time.perf_counter()
            got = await fn()
            best = min(best, time.perf_counter() - start)
        lags += monitor.samples
        assert got == expected, (got, expected)
    return best, lags


async def run(n: int, repeat: int = 3, store: str = "sqlite") -> list[Result]:
    """The three scans and the floor over ``n`` volumes on ``store`` (see :data:`STORES`)."""
    with tempfile.TemporaryDirectory() as tmp:
        if store == "postgresql":
            async with _pg_database() as dsn:
                return await _measure(n, repeat, Path(tmp), {"storage": "postgresql",
                                                              "connection": dsn})
        db = Path(tmp) / "bench.sqlite"
        return await _measure(n, repeat, Path(tmp),
                              {"storage": "sqlite", "connection": f"sqlite:///{db}"})


async def _measure(n: int, repeat: int, tmp: Path, config: dict[str, Any]) -> list[Result]:
    store = await aiocinder.setup(config)
    try:
        await populate(store, n)
        backend = await aiocinder.Backend(
            BACKEND, volume_driver="aiocinder.drivers.file.FileDriver",
            volumes_dir=str(tmp / "volumes"),
        )
        results = []
        for name, fn, expected in (
            ("documented loop", lambda: documented_loop(backend), 3 * n),
            ("concurrent scan", lambda: concurrent_scan(backend), 3 * n),
            ("worker scan", lambda: worker_scan(backend), 3 * n),
            ("gather of no-ops", lambda: gather_noops(n), 2 * n),
            ("prefetched scan", lambda: prefetched_scan(backend), 3 * n),
        ):
            seconds, lags = await timed(fn, expected, repeat)
            lag = lag_of(lags)
            results.append(Result(name, seconds, lag.p99, lag.max))
        if config["storage"] == "postgresql":
            best = await _time_pg_floor(config["connection"], 4 * n, repeat)
        else:
            db = Path(config["connection"].removeprefix("sqlite:///"))
            best = min(_time_floor(db, 4 * n) for _ in range(repeat))
        results.append(Result("floor (3 plain queries)", best, 0.0, 0.0))
        return results
    finally:
        await aiocinder.shutdown()


async def _time_pg_floor(dsn: str, expected: int, repeat: int) -> float:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    conn = await asyncpg.connect(dsn)
    try:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            got = await pg_floor(conn)
            best = min(best, time.perf_counter() - start)
            assert got == expected
        return best
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _pg_database() -> AsyncIterator[str]:
    """A new database on the server of ``AIOCINDER_BENCH_PG_DSN``, or on a throwaway one."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import pgserver  # tests/pgserver.py: starts a server as the test suite does

    server = pgserver.PostgresServer(os.environ.get(PG_DSN_ENV) or None)
    try:
        await asyncio.to_thread(server.start)
    except pgserver.ServerUnavailable as exc:
        raise SystemExit(f"no PostgreSQL server for the benchmark: {exc}; set {PG_DSN_ENV} "
                         "to the DSN of one whose role may CREATE DATABASE") from exc
    try:
        async with server.database() as dsn:
            yield dsn
    finally:
        await asyncio.to_thread(server.stop)


def _time_floor(db: Path, expected: int) -> float:
    start = time.perf_counter()
    got = floor(db)
    elapsed = time.perf_counter() - start
    assert got == expected
    return elapsed


def report(n: int, results: list[Result], store: str = "sqlite") -> list[dict[str, Any]]:
    base = results[-1].seconds
    print(f"\ntracking scan, {STORES[store]}, N = {n:,} volumes "
          "(2 snapshots + 1 connection each)")
    print(f"{'':26}{'seconds':>10}{'x floor':>10}{'lag p99 ms':>12}{'lag max ms':>12}")
    rows = []
    for r in results:
        print(f"{r.name:26}{r.seconds:10.3f}{r.seconds / base:10.1f}"
              f"{r.lag_p99 * 1000:12.2f}{r.lag_max * 1000:12.2f}")
        rows.append({"name": r.name, "n": n, "store": store, "seconds": r.seconds,
                     "ratio_to_floor": r.seconds / base,
                     "lag_p99_ms": r.lag_p99 * 1000, "lag_max_ms": r.lag_max * 1000})
    return rows


def compare(rows: list[dict[str, Any]]) -> None:
    """PostgreSQL next to SQLite, for each scan and N measured on both, in this run."""
    seconds = {(r["store"], r["n"], r["name"]): r["seconds"] for r in rows}
    pairs = [(n, name) for store, n, name in seconds
             if store == "sqlite" and ("postgresql", n, name) in seconds]
    if not pairs:
        return
    print("\ntracking scan, PostgreSQL next to SQLite (the same run)")
    print(f"{'':34}{'SQLite s':>10}{'PostgreSQL s':>14}{'PG / SQLite':>13}")
    for n, name in pairs:
        lite, pg = seconds["sqlite", n, name], seconds["postgresql", n, name]
        print(f"{f'{name}, N = {n:,}':34}{lite:10.3f}{pg:14.3f}{pg / lite:13.2f}")
