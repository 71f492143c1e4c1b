"""Drivers and tools the tests share (imported as ``support``)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiocinder.drivers.file import FileDriver
from aiocinder.persistence.sqlite import SQLiteStore
from aiocinder.records import SnapshotRecord, VolumeRecord


def persistence(url: str) -> dict[str, str]:
    """The persistence_config for a store URL: a PostgreSQL DSN or a SQLite URL."""
    storage = "postgresql" if url.startswith("postgres") else "sqlite"
    return {"storage": storage, "connection": url}


@contextlib.contextmanager
def sql_store_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A new SQLite file, or a new database on the tests' PostgreSQL server."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'aiocinder.sqlite'}"
        return
    import pgserver

    database = pgserver.require_server().database()
    with asyncio.Runner() as runner:
        dsn = runner.run(database.__aenter__())
        try:
            yield dsn
        finally:
            runner.run(database.__aexit__(None, None, None))


class ArrayFault(RuntimeError):
    """What the scripted driver raises when told to fail."""


class ScriptedFileDriver(FileDriver):
    """The real FileDriver with an array's latency and failures added.

    :param delay: seconds every data-path call sleeps first (in its worker thread).
    :param fail: names of methods that raise :class:`ArrayFault`.
    :param gate: if given, data-path calls wait for this event before working.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        fail: Collection[str] = (),
        gate: threading.Event | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.delay = delay
        self.fail = frozenset(fail)
        self.gate = gate
        self.started = threading.Event()
        self.calls: Counter[str] = Counter()

    def _step(self, method: str) -> None:
        self.calls[method] += 1
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay:
            time.sleep(self.delay)
        if method in self.fail:
            raise ArrayFault(f"array refused {method}")

    def create_volume(self, volume: VolumeRecord) -> dict[str, Any] | None:
        self._step("create_volume")
        return super().create_volume(volume)

    def delete_volume(self, volume: VolumeRecord) -> None:
        self._step("delete_volume")
        super().delete_volume(volume)

    def create_snapshot(self, snapshot: SnapshotRecord) -> dict[str, Any] | None:
        self._step("create_snapshot")
        return super().create_snapshot(snapshot)

    def delete_snapshot(self, snapshot: SnapshotRecord) -> None:
        self._step("delete_snapshot")
        super().delete_snapshot(snapshot)

    def create_cloned_volume(self, volume: VolumeRecord, src: VolumeRecord) -> Any:
        self._step("create_cloned_volume")
        return super().create_cloned_volume(volume, src)

    def extend_volume(self, volume: VolumeRecord, new_size: int) -> None:
        self._step("extend_volume")
        super().extend_volume(volume, new_size)

    def initialize_connection(self, volume: VolumeRecord, connector: Any) -> dict[str, Any]:
        self._step("initialize_connection")
        return super().initialize_connection(volume, connector)

    def terminate_connection(self, volume: VolumeRecord, connector: Any,
                             force: bool = False) -> None:
        self._step("terminate_connection")
        super().terminate_connection(volume, connector, force)


class CountingSQLiteStore(SQLiteStore):
    """A real SQLite store that counts the reads made through it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: Counter[str] = Counter()

    async def get_volumes(self, *args: Any, **kwargs: Any) -> Any:
        self.reads["get_volumes"] += 1
        return await super().get_volumes(*args, **kwargs)

    async def get_snapshots(self, *args: Any, **kwargs: Any) -> Any:
        self.reads["get_snapshots"] += 1
        return await super().get_snapshots(*args, **kwargs)

    async def get_connections(self, *args: Any, **kwargs: Any) -> Any:
        self.reads["get_connections"] += 1
        return await super().get_connections(*args, **kwargs)

    async def get_volumes_by_ids(self, *args: Any, **kwargs: Any) -> Any:
        self.reads["get_volumes_by_ids"] += 1
        return await super().get_volumes_by_ids(*args, **kwargs)

    async def get_snapshots_by_volume_ids(self, *args: Any, **kwargs: Any) -> Any:
        self.reads["get_snapshots_by_volume_ids"] += 1
        return await super().get_snapshots_by_volume_ids(*args, **kwargs)

    async def get_connections_by_volume_ids(self, *args: Any, **kwargs: Any) -> Any:
        self.reads["get_connections_by_volume_ids"] += 1
        return await super().get_connections_by_volume_ids(*args, **kwargs)

    def iter_volumes(self, *args: Any, **kwargs: Any) -> Any:
        self.reads["iter_volumes"] += 1
        return super().iter_volumes(*args, **kwargs)


@dataclass
class LagMonitor:
    """Measures event-loop lag: how late a 1 ms sleeper wakes up."""

    interval: float = 0.001
    samples: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, loop.time() - start - self.interval))

    async def __aenter__(self) -> LagMonitor:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def worst(self) -> float:
        return max(self.samples, default=0.0)

    @property
    def p99(self) -> float:
        if len(self.samples) < 2:
            return self.worst
        return statistics.quantiles(self.samples, n=100)[98]


class Ticker:
    """Counts the turns of the event loop another task gets while some work runs:
    ``async with Ticker() as ticker: ...`` then ``ticker.turns``."""

    def __init__(self) -> None:
        self.turns = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        await asyncio.sleep(0)  # its first turn is not the work's
        self.turns = 0
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
