"""Copy every record from one metadata store into another.

For moving from one store to another (SQLite to PostgreSQL when a second host
joins, PostgreSQL to a SQLite file for a backup or a test), with both stores
open at once. Volumes are streamed (:meth:`PersistenceStore.iter_volumes`),
and each batch's snapshots and connections are read with the batched forms,
so memory stays bounded by the batch size however large the store.

Each record is stored as it is (ids, timestamps and every field), inserted, or
replacing the target's record with the same id. A copy can be run again: it
creates nothing twice, and skips records the target already holds as they are
(a record it does replace gets the target's own ``version``, and an
``updated_at`` of the time of the copy, as every update does). Records only the
target has are left alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from ..exceptions import InvalidArgument
from ..records import ConnectionRecord, SnapshotRecord, VolumeRecord
from .base import PersistenceStore

__all__ = ["CopyCounts", "copy_store"]

R = TypeVar("R", VolumeRecord, SnapshotRecord, ConnectionRecord)


@dataclass(frozen=True, slots=True)
class CopyCounts:
    """How many records :func:`copy_store` copied (or found already copied), of each kind."""

    volumes: int = 0
    snapshots: int = 0
    connections: int = 0
    key_values: int = 0


async def _put_all(
    records: Iterable[R], stored: Iterable[R], put: Callable[[R], Awaitable[R]]
) -> int:
    """Put every record the target does not already hold as it is; count them all."""
    held = {r.id: r.replace(version=0) for r in stored}
    count = 0
    for record in records:
        if held.get(record.id) != record.replace(version=0):
            await put(record)
        count += 1
    return count


async def copy_store(
    source: PersistenceStore, target: PersistenceStore, *, batch_size: int = 500
) -> CopyCounts:
    """Copy every volume, snapshot, connection and key-value entry of ``source`` into ``target``.

    Both stores must be open. A volume is written before its snapshots and
    connections, so a reader of the target never finds one without its
    volume. Records are written one by one: an interrupted copy leaves what
    it wrote, and running it again completes it.

    :param batch_size: volumes read (with their snapshots and connections) at a time.
    :returns: the number of records of each kind the source holds (all now in the target).
    :raises InvalidArgument: ``source`` and ``target`` are the same object, or
        ``batch_size`` is not an int >= 1.
    :raises PersistenceError: either store failed.
    """
    if source is target:
        raise InvalidArgument("copy_store(): the source and the target are the same store")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgument(f"batch_size must be an int >= 1, not {batch_size!r}")
    volumes = snapshots = connections = 0
    batch: list[VolumeRecord] = []

    async def flush() -> None:
        nonlocal volumes, snapshots, connections
        if not batch:
            return
        ids = [v.id for v in batch]
        volumes += await _put_all(batch, await target.get_volumes_by_ids(ids),
                                  target.put_volume)
        snapshots += await _put_all(await source.get_snapshots_by_volume_ids(ids),
                                    await target.get_snapshots_by_volume_ids(ids),
                                    target.put_snapshot)
        connections += await _put_all(await source.get_connections_by_volume_ids(ids),
                                      await target.get_connections_by_volume_ids(ids),
                                      target.put_connection)
        batch.clear()

    async for volume in source.iter_volumes(batch_size=batch_size):
        batch.append(volume)
        if len(batch) >= batch_size:
            await flush()
    await flush()

    key_values = 0
    held = {kv.key: kv for kv in await target.get_key_values()}
    for entry in await source.get_key_values():
        if held.get(entry.key) != entry:
            await target.set_key_value(entry)
        key_values += 1
    return CopyCounts(volumes, snapshots, connections, key_values)
