"""Process-wide state set by :func:`aiocinder.setup`: the store and the options.

Also the operation runner: every operation runs its three steps (persist the
transitional status, call the driver, persist the result) in a task of its
own, which the caller awaits through :func:`asyncio.shield`. A cancelled
caller gets :class:`asyncio.CancelledError` at once; the operation still
finishes its bookkeeping, and :func:`aiocinder.shutdown` waits for it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..exceptions import UsageError
from ..persistence.base import PersistenceStore
from ..records import ConnectionRecord, SnapshotRecord, VolumeRecord
from ._batch import Coalescer

if TYPE_CHECKING:
    from .backend import Backend
    from .connection import Connection

__all__ = ["Options", "Runtime", "runtime"]

T = TypeVar("T")
R = TypeVar("R", SnapshotRecord, ConnectionRecord)

_log = logging.getLogger("aiocinder")


class State(enum.Enum):
    """Where the runtime is in its life."""

    IDLE = "idle"
    READY = "ready"
    CLOSING = "closing"


@dataclass(frozen=True, slots=True)
class Options:
    """The options :func:`aiocinder.setup` was given (beyond persistence)."""

    fail_on_missing_backend: bool = True
    host: str = field(default_factory=socket.gethostname)
    project_id: str = "aiocinder"
    user_id: str = "aiocinder"
    output_all_backend_info: bool = False
    root_helper: str = "sudo"
    cinder_options: Mapping[str, Any] = field(default_factory=dict)


class Runtime:
    """The one instance :data:`runtime` holds what ``setup()`` configured."""

    def __init__(self) -> None:
        self.state = State.IDLE
        self.generation = 0
        self.options = Options()
        self._store: PersistenceStore | None = None
        #: Coalescing loaders over the active store (set by :meth:`start`).
        self.loaders: Loaders
        self._operations: set[asyncio.Task[Any]] = set()
        #: Initialised backends by name; ``Backend.backends`` is this very dict.
        self.backends: dict[str, Backend] = {}
        #: Backends being initialised, so concurrent awaits share one start.
        self.starting: dict[str, asyncio.Task[Backend]] = {}
        #: Connections attached on this host by this process, by volume id.
        self.local_attachments: dict[str, Connection] = {}

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def store(self, caller: str) -> PersistenceStore:
        """The active store, or a :class:`UsageError` naming ``caller``."""
        if self._store is None or self.state is not State.READY:
            raise UsageError(self._not_ready(caller))
        return self._store

    def bookkeeping_store(self) -> PersistenceStore:
        """The store for operations already in flight (also while shutdown waits)."""
        if self._store is None:
            raise UsageError("aiocinder is not set up")
        return self._store

    def check(self, caller: str, generation: int) -> None:
        """Refuse objects from before the last ``shutdown()``."""
        if self.state is not State.READY:
            raise UsageError(self._not_ready(caller))
        if generation != self.generation:
            raise UsageError(
                f"{caller} called on an object from before aiocinder.shutdown(); "
                "load it again"
            )

    def _not_ready(self, caller: str) -> str:
        if self.state is State.CLOSING:
            return f"{caller} called while aiocinder.shutdown() is running"
        if self.generation:
            return f"{caller} called after aiocinder.shutdown()"
        return f"{caller} called before aiocinder.setup()"

    def start(self, store: PersistenceStore, options: Options) -> None:
        self._store = store
        self.loaders = Loaders(store)
        self.options = options
        self.generation += 1
        self.state = State.READY

    async def run_operation(
        self, coro: Coroutine[Any, Any, T], group: set[asyncio.Task[Any]] | None = None
    ) -> T:
        """Run ``coro`` in its own task and await it through a shield.

        :param group: another set that tracks the task while it runs (a backend's).
        :raises asyncio.CancelledError: when the caller is cancelled; the
            operation goes on to its end regardless.
        """
        task = asyncio.get_running_loop().create_task(coro)
        self._operations.add(task)
        task.add_done_callback(self._operation_done)
        if group is not None:
            group.add(task)
            task.add_done_callback(group.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_log_orphan_failure)
            raise

    def _operation_done(self, task: asyncio.Task[Any]) -> None:
        self._operations.discard(task)
        if not task.cancelled():
            task.exception()  # its caller may be gone; the error is in the record

    async def drain(self) -> None:
        """Wait until every operation and backend start in flight has finished."""
        while self._operations or self.starting:
            await asyncio.wait({*self._operations, *self.starting.values()})

    async def stop(self) -> PersistenceStore | None:
        """Enter CLOSING, wait for operations, and hand back the store to close."""
        if self.state is not State.READY:
            return None
        self.state = State.CLOSING
        await self.drain()
        store, self._store = self._store, None
        return store

    def stopped(self) -> None:
        self.state = State.IDLE


def group_by_volume(records: Iterable[R]) -> dict[str, list[R]]:
    """Records grouped by their ``volume_id``, in their order."""
    groups: dict[str, list[R]] = {}
    for record in records:
        groups.setdefault(record.volume_id, []).append(record)
    return groups


class Loaders:
    """Coalescing loaders over one store: concurrent lazy loads share queries."""

    def __init__(self, store: PersistenceStore) -> None:
        self.volume = Coalescer[str, VolumeRecord | None](
            self._volumes, self._volume, lambda: None
        )
        self.snapshots = Coalescer[str, list[SnapshotRecord]](
            self._snapshots, lambda vid: store.get_snapshots(volume_id=vid), list
        )
        self.connections = Coalescer[str, list[ConnectionRecord]](
            self._connections, lambda vid: store.get_connections(volume_id=vid), list
        )
        self._store = store

    async def _volume(self, volume_id: str) -> VolumeRecord | None:
        records = await self._store.get_volumes(volume_id=volume_id)
        return records[0] if records else None

    async def _volumes(self, ids: Sequence[str]) -> dict[str, VolumeRecord | None]:
        return {r.id: r for r in await self._store.get_volumes_by_ids(ids)}

    async def _snapshots(self, ids: Sequence[str]) -> dict[str, list[SnapshotRecord]]:
        return group_by_volume(await self._store.get_snapshots_by_volume_ids(ids))

    async def _connections(self, ids: Sequence[str]) -> dict[str, list[ConnectionRecord]]:
        return group_by_volume(await self._store.get_connections_by_volume_ids(ids))


def _log_orphan_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        _log.warning("an operation whose caller was cancelled failed: %s", exc,
                     exc_info=exc)


#: The process-wide runtime.
runtime = Runtime()
