"""The async persistence protocol every metadata store implements.

A store keeps plain records (:mod:`aiocinder.records`), never live objects,
and never imports drivers. The resource layer calls it; drivers reach it only
through the resource layer.

Writes use compare-and-swap on ``version``:

* ``set_volume(rec)`` with ``rec.version == 0`` inserts the record; an id that
  is already stored raises :class:`~aiocinder.exceptions.AlreadyExists` and
  changes nothing.
* with ``rec.version == n > 0`` it replaces the stored row only if the stored
  version is still ``n``; otherwise :class:`~aiocinder.exceptions.ConflictError`
  (or the ``*NotFound`` error when the row is gone). Every write returns the
  record as stored: ``version`` advanced, ``updated_at`` set on updates.

Reads return lists ordered by ``created_at`` then ``id``. ``*_by_ids`` forms
read many ids in one query; ``iter_volumes`` streams with memory bounded by
``batch_size``.

:meth:`PersistenceStore.lock` gives mutual exclusion on a key among every
process that uses the same store: the resources hold ``volume:<id>`` for each
operation that changes a volume, its snapshots or its connections.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Hashable, Mapping
from contextlib import AbstractAsyncContextManager
from importlib.metadata import entry_points
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from ..exceptions import AlreadyExists, ConflictError, InvalidArgument, NotFound
from ..records import ConnectionRecord, KeyValue, SnapshotRecord, VolumeRecord

__all__ = ["KeyedLocks", "PersistenceStore", "create_store", "lock_id"]

#: Entry point group where third parties register their stores.
ENTRY_POINT_GROUP = "aiocinder.persistence"

_PUT_RETRIES = 10

_BUILTIN: dict[str, str] = {
    "memory": "aiocinder.persistence.memory:MemoryStore",
    "sqlite": "aiocinder.persistence.sqlite:SQLiteStore",
    "postgresql": "aiocinder.persistence.postgresql:PostgreSQLStore",
}


class PersistenceStore(abc.ABC):
    """Base class of metadata stores.

    A store is opened once with :meth:`open` (create or migrate the schema,
    connect) and released with :meth:`close`. It may also be used as
    ``async with store:``.
    """

    #: Short name shown in reprs and errors ("memory", "sqlite"...).
    name: str = "store"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- lifecycle ---------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""

    # -- volumes -----------------------------------------------------------

    @abc.abstractmethod
    async def get_volumes(
        self,
        volume_id: str | None = None,
        volume_name: str | None = None,
        backend_name: str | None = None,
    ) -> list[VolumeRecord]:
        """Volumes matching every given filter (all volumes when none is given)."""

    @abc.abstractmethod
    async def get_volumes_by_ids(self, volume_ids: Collection[str]) -> list[VolumeRecord]:
        """The volumes with these ids, in one query. Missing ids are left out."""

    @abc.abstractmethod
    def iter_volumes(
        self,
        backend_name: str | None = None,
        *,
        status: str | None = None,
        volume_name: str | None = None,
        batch_size: int = 500,
    ) -> AsyncIterator[VolumeRecord]:
        """Stream volumes, ``batch_size`` rows at a time, filtered by the database."""

    @abc.abstractmethod
    async def set_volume(self, record: VolumeRecord) -> VolumeRecord:
        """Insert (``version == 0``) or compare-and-swap update; return the stored record."""

    @abc.abstractmethod
    async def delete_volume(self, volume_id: str) -> None:
        """Delete the volume's row. Deleting a missing row is not an error."""

    # -- snapshots ---------------------------------------------------------

    @abc.abstractmethod
    async def get_snapshots(
        self,
        snapshot_id: str | None = None,
        snapshot_name: str | None = None,
        volume_id: str | None = None,
        backend_name: str | None = None,
    ) -> list[SnapshotRecord]:
        """Snapshots matching every given filter."""

    @abc.abstractmethod
    async def get_snapshots_by_volume_ids(
        self, volume_ids: Collection[str]
    ) -> list[SnapshotRecord]:
        """The snapshots of all these volumes, in one query."""

    @abc.abstractmethod
    async def set_snapshot(self, record: SnapshotRecord) -> SnapshotRecord:
        """Insert or compare-and-swap update, as :meth:`set_volume`."""

    @abc.abstractmethod
    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete the snapshot's row. Deleting a missing row is not an error."""

    # -- connections -------------------------------------------------------

    @abc.abstractmethod
    async def get_connections(
        self,
        connection_id: str | None = None,
        volume_id: str | None = None,
        backend_name: str | None = None,
    ) -> list[ConnectionRecord]:
        """Connections matching every given filter."""

    @abc.abstractmethod
    async def get_connections_by_volume_ids(
        self, volume_ids: Collection[str]
    ) -> list[ConnectionRecord]:
        """The connections of all these volumes, in one query."""

    @abc.abstractmethod
    async def set_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        """Insert or compare-and-swap update, as :meth:`set_volume`."""

    @abc.abstractmethod
    async def delete_connection(self, connection_id: str) -> None:
        """Delete the connection's row. Deleting a missing row is not an error."""

    # -- key-value store ---------------------------------------------------

    @abc.abstractmethod
    async def get_key_values(self, key: str | None = None) -> list[KeyValue]:
        """The entry for ``key`` (a list of zero or one), or every entry when None."""

    @abc.abstractmethod
    async def set_key_value(self, key_value: KeyValue) -> None:
        """Create or replace an entry."""

    @abc.abstractmethod
    async def delete_key_value(self, key: str) -> None:
        """Delete an entry. Deleting a missing key is not an error."""

    # -- locks -------------------------------------------------------------

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold ``key`` exclusively among every process that uses this store::

            async with store.lock(f"volume:{volume_id}"):
                ...  # no other holder of this key, in any process, meanwhile

        Waiting does not block the event loop, and a task cancelled while it
        waits leaves the lock free. The lock is not reentrant: a task that
        holds a key and asks for it again waits forever. The library holds
        ``volume:<id>`` for every operation that changes a volume, its
        snapshots or its connections, and reloads the records once it has it.

        The SQL stores exclude processes and hosts (SQLite: byte-range locks on
        a file beside the database; PostgreSQL: advisory locks). This base
        implementation, which the memory store uses, excludes the tasks of this
        process only: a store that several processes share must override it.

        :raises InvalidArgument: ``key`` is not a ``str``.
        :raises UsageError: the store is not open.
        :raises PersistenceError: the lock could not be taken (SQL stores).
        """
        number = lock_id(key)
        locks: KeyedLocks | None = self.__dict__.get("_process_locks")
        if locks is None:
            locks = self.__dict__["_process_locks"] = KeyedLocks()
        return locks.hold(number)

    # -- whole-record writes (load, copy, import) -----------------------------

    async def put_volume(self, record: VolumeRecord) -> VolumeRecord:
        """Store ``record`` as it is, inserting it or replacing what has its id."""
        return await _put(record, self.get_volumes, self.set_volume, "volume_id")

    async def put_snapshot(self, record: SnapshotRecord) -> SnapshotRecord:
        """Store ``record`` as it is, inserting it or replacing what has its id."""
        return await _put(record, self.get_snapshots, self.set_snapshot, "snapshot_id")

    async def put_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        """Store ``record`` as it is, inserting it or replacing what has its id."""
        return await _put(record, self.get_connections, self.set_connection, "connection_id")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


R = TypeVar("R", VolumeRecord, SnapshotRecord, ConnectionRecord)

_LOCK_PERSON: Final = b"aiocinder-lock"


def lock_id(key: str) -> int:
    """A stable signed 64-bit number for a lock key (the same in every process).

    BLAKE2b of the key's UTF-8 bytes: PostgreSQL's advisory locks take it as
    their ``bigint``, the SQLite store derives a byte offset from it.

    :raises InvalidArgument: ``key`` is not a ``str``.
    """
    if not isinstance(key, str):
        raise InvalidArgument(f"a lock key must be a str, not {key!r}")
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass"), digest_size=8, person=_LOCK_PERSON
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


class KeyedLocks:
    """One :class:`asyncio.Lock` per key, made when first asked for and dropped
    when nobody holds it or waits for it (so a long-lived process keeps no lock
    per volume it ever touched). Excludes the tasks of one process."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        """The keys held or waited for now."""
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Hold ``key`` for the block; waiters are served in order."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


async def _put(
    record: R,
    get: Callable[..., Awaitable[list[R]]],
    set_: Callable[[R], Awaitable[R]],
    key: str,
) -> R:
    for _ in range(_PUT_RETRIES):
        stored = await get(**{key: record.id})
        try:
            return await set_(record.replace(version=stored[0].version if stored else 0))
        except (ConflictError, AlreadyExists, NotFound):
            continue  # changed, created or deleted meanwhile: look again
    raise ConflictError(f"{record.id} kept changing while being stored")


def _load_class(storage: str) -> type[PersistenceStore]:
    path = _BUILTIN.get(storage)
    if path is None:
        found = entry_points(group=ENTRY_POINT_GROUP, name=storage)
        if not found:
            known = ", ".join(sorted(_BUILTIN))
            raise InvalidArgument(
                f"unknown persistence storage {storage!r}: use one of {known}, an entry "
                f"point name in group {ENTRY_POINT_GROUP!r}, a store class or an instance"
            )
        loaded = next(iter(found)).load()
    else:
        module_name, _, attr = path.partition(":")
        loaded = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(loaded, type) and issubclass(loaded, PersistenceStore)):
        raise InvalidArgument(f"persistence storage {storage!r} is not a PersistenceStore class")
    return loaded


def create_store(config: Mapping[str, Any] | None) -> PersistenceStore:
    """Build the store a ``persistence_config`` mapping describes (not opened yet).

    ``storage`` is ``memory`` (the default), ``sqlite``, ``postgresql``, an entry
    point name in group ``aiocinder.persistence``, a :class:`PersistenceStore`
    subclass or an instance; the other keys are passed to the class.

    :raises InvalidArgument: unknown storage, or options the store refuses.
    """
    options = dict(config or {})
    storage = options.pop("storage", "memory")
    if isinstance(storage, PersistenceStore):
        if options:
            raise InvalidArgument(
                f"persistence options {sorted(options)} given with a store instance"
            )
        return storage
    if isinstance(storage, type) and issubclass(storage, PersistenceStore):
        cls = storage
    elif isinstance(storage, str):
        cls = _load_class(storage)
    else:
        raise InvalidArgument(f"persistence storage must be a name, class or store: {storage!r}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise InvalidArgument(f"invalid options for {cls.__name__}: {exc}") from exc
