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
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from importlib.metadata import entry_points
from types import TracebackType
from typing import Any, Self, TypeVar

from ..exceptions import AlreadyExists, ConflictError, InvalidArgument, NotFound
from ..records import ConnectionRecord, KeyValue, SnapshotRecord, VolumeRecord

__all__ = ["PersistenceStore", "create_store"]

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
