"""A metadata store that keeps everything in this process's memory.

The default store: nothing survives the process, nothing is shared with other
processes. It follows the same contract as the SQL stores (compare-and-swap
versions, ordering, errors), so code tested against it behaves the same on
SQLite or PostgreSQL.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Generic, TypeVar

import anyio.lowlevel

from ..exceptions import (
    AlreadyExists,
    ConflictError,
    ConnectionNotFound,
    InvalidArgument,
    NotFound,
    SnapshotNotFound,
    UsageError,
    VolumeNotFound,
)
from ..records import ConnectionRecord, KeyValue, SnapshotRecord, VolumeRecord, utcnow
from .base import PersistenceStore

__all__ = ["MemoryStore"]

R = TypeVar("R", VolumeRecord, SnapshotRecord, ConnectionRecord)


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


def _order_key(record: VolumeRecord | SnapshotRecord | ConnectionRecord) -> tuple[datetime, str]:
    # Naive datetimes count as UTC, as records.from_dict reads them; comparing
    # naive with aware datetimes would raise.
    created = record.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return created, record.id


def _select(records: Iterable[R], filters: dict[str, Any]) -> list[R]:
    """The records whose attributes equal every filter, in store order."""
    found = [r for r in records if all(getattr(r, k) == v for k, v in filters.items())]
    found.sort(key=_order_key)
    return found


class _Table(Generic[R]):
    """Records by id and, for snapshots and connections, by volume id too: a
    volume's lazy lists are read one volume at a time, and a scan over every
    record for each would make the tracking loop quadratic.

    :param volume_of: the volume id of a record, for tables indexed by it.
    """

    __slots__ = ("by_volume", "rows", "volume_of")

    def __init__(self, volume_of: Callable[[R], str] | None = None) -> None:
        self.rows: dict[str, R] = {}
        self.volume_of: Callable[[R], str] | None = volume_of
        self.by_volume: dict[str, dict[str, R]] = {}

    def get(self, record_id: str) -> R | None:
        return self.rows.get(record_id)

    def put(self, record: R) -> None:
        self.pop(record.id)
        self.rows[record.id] = record
        if self.volume_of is not None:
            self.by_volume.setdefault(self.volume_of(record), {})[record.id] = record

    def pop(self, record_id: str) -> None:
        old = self.rows.pop(record_id, None)
        if old is not None and self.volume_of is not None:
            volume_id = self.volume_of(old)
            group = self.by_volume[volume_id]
            del group[record_id]
            if not group:
                del self.by_volume[volume_id]

    def candidates(self, record_id: str | None = None, volume_ids: Iterable[str] | None = None,
                   ) -> Iterable[R]:
        """The records that may match (the caller still filters): by id, by
        volume ids when indexed, else all."""
        if record_id is not None:
            found = self.rows.get(record_id)
            return () if found is None else (found,)
        if volume_ids is not None and self.volume_of is not None:
            groups = self.by_volume
            return [r for v in volume_ids for r in groups.get(v, {}).values()]
        return self.rows.values()

    def clear(self) -> None:
        self.rows.clear()
        self.by_volume.clear()


def _filters(**given: Any) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v is not None}


def _id_set(ids: Collection[str], method: str) -> set[str]:
    if isinstance(ids, str):
        raise InvalidArgument(f"MemoryStore.{method}() takes a collection of ids, not a str")
    return set(ids)


class MemoryStore(PersistenceStore):
    """Records in dicts keyed by id.

    Records are immutable, so they are stored and returned as they are; every
    write stores a new record. All methods run without awaiting anything but
    :meth:`iter_volumes` between batches, so each call is atomic.
    """

    name = "memory"

    def __init__(self) -> None:
        self._state = _State.NEW
        self._volumes: _Table[VolumeRecord] = _Table()
        self._snapshots: _Table[SnapshotRecord] = _Table(attrgetter("volume_id"))
        self._connections: _Table[ConnectionRecord] = _Table(attrgetter("volume_id"))
        self._key_values: dict[str, str | None] = {}

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Make the store usable. Idempotent.

        :raises UsageError: the store was closed.
        """
        if self._state is _State.CLOSED:
            raise UsageError("MemoryStore.open() called after close()")
        self._state = _State.OPEN

    async def close(self) -> None:
        """Drop every record. Idempotent; the store cannot be opened again."""
        self._state = _State.CLOSED
        for table in (self._volumes, self._snapshots, self._connections, self._key_values):
            table.clear()

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold ``key`` exclusively among the tasks of this process (the only
        process that sees this store): an :class:`asyncio.Lock` per key.

        :raises InvalidArgument: ``key`` is not a ``str``.
        :raises UsageError: the store is not open.
        """
        self._check("lock")
        return super().lock(key)

    def _check(self, method: str) -> None:
        if self._state is not _State.OPEN:
            when = "after close()" if self._state is _State.CLOSED else "before open()"
            raise UsageError(f"MemoryStore.{method}() called {when}")

    def _write(self, table: _Table[R], record: R, not_found: type[NotFound], method: str) -> R:
        self._check(method)
        kind = not_found.__name__.removesuffix("NotFound").lower()
        stored = table.get(record.id)
        if record.version == 0:
            if stored is not None:
                raise AlreadyExists(f"{kind} {record.id!r} already exists", resource=record)
            new = record.replace(version=1)
        elif record.version < 0:
            raise InvalidArgument(f"{kind} {record.id!r} has a negative version")
        elif stored is None:
            raise not_found(f"{kind} {record.id!r} not found", resource=record)
        elif stored.version != record.version:
            raise ConflictError(
                f"{kind} {record.id!r} was changed meanwhile: stored version "
                f"{stored.version}, update based on version {record.version}",
                resource=record,
            )
        else:
            new = record.replace(version=record.version + 1, updated_at=utcnow())
        table.put(new)
        return new

    # -- volumes -----------------------------------------------------------

    async def get_volumes(
        self,
        volume_id: str | None = None,
        volume_name: str | None = None,
        backend_name: str | None = None,
    ) -> list[VolumeRecord]:
        """Volumes matching every given filter, ordered by ``created_at`` then ``id``.

        :raises UsageError: the store is not open.
        """
        self._check("get_volumes")
        filters = _filters(name=volume_name, backend_name=backend_name)
        return _select(self._volumes.candidates(volume_id), filters)

    async def get_volumes_by_ids(self, volume_ids: Collection[str]) -> list[VolumeRecord]:
        """The volumes with these ids; missing ids are left out.

        :raises InvalidArgument: ``volume_ids`` is a single ``str``.
        :raises UsageError: the store is not open.
        """
        self._check("get_volumes_by_ids")
        ids = _id_set(volume_ids, "get_volumes_by_ids")
        return _select((r for i in ids if (r := self._volumes.get(i)) is not None), {})

    def iter_volumes(
        self,
        backend_name: str | None = None,
        *,
        status: str | None = None,
        volume_name: str | None = None,
        batch_size: int = 500,
    ) -> AsyncIterator[VolumeRecord]:
        """Stream volumes in store order, ``batch_size`` at a time.

        Each batch starts after the last volume yielded, as the SQL stores'
        keyset pagination does: a volume deleted meanwhile is not yielded, one
        created meanwhile is when it sorts after the position reached.

        :raises InvalidArgument: ``batch_size`` is not an int >= 1.
        :raises UsageError: the store is not open.
        """
        self._check("iter_volumes")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgument(f"batch_size must be an int >= 1, not {batch_size!r}")
        filters = _filters(backend_name=backend_name, status=status, name=volume_name)
        return self._iter_volumes(filters, batch_size)

    async def _iter_volumes(
        self, filters: dict[str, Any], batch_size: int
    ) -> AsyncIterator[VolumeRecord]:
        after: tuple[datetime, str] | None = None
        while True:
            self._check("iter_volumes")
            candidates = (
                r
                for r in self._volumes.rows.values()
                if (after is None or _order_key(r) > after)
                and all(getattr(r, k) == v for k, v in filters.items())
            )
            batch = heapq.nsmallest(batch_size, candidates, key=_order_key)
            for record in batch:
                yield record
            if len(batch) < batch_size:
                return
            after = _order_key(batch[-1])
            await anyio.lowlevel.checkpoint()

    async def set_volume(self, record: VolumeRecord) -> VolumeRecord:
        """Insert (``version == 0``) or compare-and-swap update the volume.

        :returns: the record as stored (version advanced, ``updated_at`` set on update).
        :raises AlreadyExists: inserting an id that is already stored.
        :raises ConflictError: the stored version is not ``record.version``.
        :raises VolumeNotFound: updating a volume that is no longer stored.
        :raises UsageError: the store is not open.
        """
        return self._write(self._volumes, record, VolumeNotFound, "set_volume")

    async def delete_volume(self, volume_id: str) -> None:
        """Delete the volume; a missing one is not an error.

        :raises UsageError: the store is not open.
        """
        self._check("delete_volume")
        self._volumes.pop(volume_id)

    # -- snapshots ---------------------------------------------------------

    async def get_snapshots(
        self,
        snapshot_id: str | None = None,
        snapshot_name: str | None = None,
        volume_id: str | None = None,
        backend_name: str | None = None,
    ) -> list[SnapshotRecord]:
        """Snapshots matching every given filter, in store order.

        :raises UsageError: the store is not open.
        """
        self._check("get_snapshots")
        filters = _filters(
            id=snapshot_id, name=snapshot_name, volume_id=volume_id, backend_name=backend_name
        )
        candidates = self._snapshots.candidates(
            snapshot_id, None if volume_id is None else (volume_id,)
        )
        return _select(candidates, filters)

    async def get_snapshots_by_volume_ids(
        self, volume_ids: Collection[str]
    ) -> list[SnapshotRecord]:
        """The snapshots of all these volumes, in store order.

        :raises InvalidArgument: ``volume_ids`` is a single ``str``.
        :raises UsageError: the store is not open.
        """
        self._check("get_snapshots_by_volume_ids")
        ids = _id_set(volume_ids, "get_snapshots_by_volume_ids")
        return _select(self._snapshots.candidates(volume_ids=ids), {})

    async def set_snapshot(self, record: SnapshotRecord) -> SnapshotRecord:
        """Insert or compare-and-swap update the snapshot, as :meth:`set_volume`.

        :raises AlreadyExists: inserting an id that is already stored.
        :raises ConflictError: the stored version is not ``record.version``.
        :raises SnapshotNotFound: updating a snapshot that is no longer stored.
        :raises UsageError: the store is not open.
        """
        return self._write(self._snapshots, record, SnapshotNotFound, "set_snapshot")

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete the snapshot; a missing one is not an error.

        :raises UsageError: the store is not open.
        """
        self._check("delete_snapshot")
        self._snapshots.pop(snapshot_id)

    # -- connections -------------------------------------------------------

    async def get_connections(
        self,
        connection_id: str | None = None,
        volume_id: str | None = None,
        backend_name: str | None = None,
    ) -> list[ConnectionRecord]:
        """Connections matching every given filter, in store order.

        :raises UsageError: the store is not open.
        """
        self._check("get_connections")
        filters = _filters(id=connection_id, volume_id=volume_id, backend_name=backend_name)
        candidates = self._connections.candidates(
            connection_id, None if volume_id is None else (volume_id,)
        )
        return _select(candidates, filters)

    async def get_connections_by_volume_ids(
        self, volume_ids: Collection[str]
    ) -> list[ConnectionRecord]:
        """The connections of all these volumes, in store order.

        :raises InvalidArgument: ``volume_ids`` is a single ``str``.
        :raises UsageError: the store is not open.
        """
        self._check("get_connections_by_volume_ids")
        ids = _id_set(volume_ids, "get_connections_by_volume_ids")
        return _select(self._connections.candidates(volume_ids=ids), {})

    async def set_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        """Insert or compare-and-swap update the connection, as :meth:`set_volume`.

        :raises AlreadyExists: inserting an id that is already stored.
        :raises ConflictError: the stored version is not ``record.version``.
        :raises ConnectionNotFound: updating a connection that is no longer stored.
        :raises UsageError: the store is not open.
        """
        return self._write(self._connections, record, ConnectionNotFound, "set_connection")

    async def delete_connection(self, connection_id: str) -> None:
        """Delete the connection; a missing one is not an error.

        :raises UsageError: the store is not open.
        """
        self._check("delete_connection")
        self._connections.pop(connection_id)

    # -- key-value store ---------------------------------------------------

    async def get_key_values(self, key: str | None = None) -> list[KeyValue]:
        """The entry for ``key`` (zero or one), or every entry ordered by key.

        :raises UsageError: the store is not open.
        """
        self._check("get_key_values")
        if key is not None:
            if key not in self._key_values:
                return []
            return [KeyValue(key, self._key_values[key])]
        return [KeyValue(k, v) for k, v in sorted(self._key_values.items())]

    async def set_key_value(self, key_value: KeyValue) -> None:
        """Create or replace an entry.

        :raises UsageError: the store is not open.
        """
        self._check("set_key_value")
        self._key_values[key_value.key] = key_value.value

    async def delete_key_value(self, key: str) -> None:
        """Delete an entry; a missing key is not an error.

        :raises UsageError: the store is not open.
        """
        self._check("delete_key_value")
        self._key_values.pop(key, None)
