"""Helpers the benchmarks share: loop-lag sampling, tables, fast SQLite filling."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiocinder
from aiocinder.persistence.sqlite import _CONNECTIONS, _SNAPSHOTS, _VOLUMES
from aiocinder.records import ConnectionRecord, SnapshotRecord, VolumeRecord

#: Where benchmarks keep what they build once (virtual environments).
REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".bench-venvs"


@dataclass(frozen=True)
class Lag:
    """Event-loop lag over one measurement, in seconds."""

    p50: float
    p99: float
    max: float
    samples: int

    def as_ms(self) -> dict[str, float]:
        return {"lag_p50_ms": self.p50 * 1000, "lag_p99_ms": self.p99 * 1000,
                "lag_max_ms": self.max * 1000}


def lag_of(samples: Sequence[float]) -> Lag:
    """p50, p99 (within the samples) and max of lag samples."""
    if len(samples) < 2:
        worst = max(samples, default=0.0)
        return Lag(worst, worst, worst, len(samples))
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Lag(cuts[49], cuts[98], max(samples), len(samples))


class LagMonitor:
    """Measure how late the event loop runs a task that sleeps ``interval`` at a time.

    Use it as ``async with LagMonitor() as lag: ...``; ``lag.result()`` after.
    A sample is how much later than asked the sleeper woke up: whatever ran on
    the loop meanwhile without yielding.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._due = 0.0

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, loop.time() - self._due))

    async def __aenter__(self) -> LagMonitor:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        await asyncio.sleep(0)  # let it take its first start time
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._task is not None
        # The sampler may be due but not run yet: without this, a blocking
        # stretch at the very end of the measurement would go unrecorded.
        late = asyncio.get_running_loop().time() - self._due
        if late > 0:
            self.samples.append(late)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def result(self) -> Lag:
        return lag_of(self.samples)


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]],
                widths: Sequence[int] | None = None) -> None:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    rows = [[_cell(v) for v in row] for row in rows]
    widths = widths or [max(len(str(h)), *(len(r[i]) for r in rows)) + 2
                        for i, h in enumerate(header)]
    print(f"\n{title}")
    print("".join(h.ljust(w) if i == 0 else h.rjust(w)
                  for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    for row in rows:
        print("".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# -- filling an SQLite store fast ---------------------------------------------


class RecordCollector:
    """Stands in for a store's ``set_*`` methods and keeps what it is given.

    ``tracking.populate(collector, n)`` then yields exactly the records the
    tracking benchmark stores, without the cost of one write per record.
    """

    def __init__(self) -> None:
        self.volumes: list[VolumeRecord] = []
        self.snapshots: list[SnapshotRecord] = []
        self.connections: list[ConnectionRecord] = []

    async def set_volume(self, record: VolumeRecord) -> VolumeRecord:
        self.volumes.append(record)
        return record

    async def set_snapshot(self, record: SnapshotRecord) -> SnapshotRecord:
        self.snapshots.append(record)
        return record

    async def set_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        self.connections.append(record)
        return record


async def create_sqlite_schema(db: Path) -> None:
    """An empty aiocinder SQLite database at ``db`` (setup migrates it)."""
    await aiocinder.setup({"storage": "sqlite", "connection": f"sqlite:///{db}"})
    await aiocinder.shutdown()


def write_rows(db: Path, volumes: Iterable[VolumeRecord] = (),
               snapshots: Iterable[SnapshotRecord] = (),
               connections: Iterable[ConnectionRecord] = ()) -> None:
    """Insert records as new rows (version 1) with ``executemany``, in the
    SQLite store's own row format, in one transaction per table."""
    with sqlite3.connect(db) as conn:
        for table, records in ((_VOLUMES, volumes), (_SNAPSHOTS, snapshots),
                               (_CONNECTIONS, connections)):
            conn.executemany(table.insert, (table.row(r) for r in records))
    conn.close()
