"""Snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..drivers.base import VolumeDriver
from ..exceptions import DriverError, InvalidSnapshot, SnapshotNotFound
from ..persistence.base import PersistenceStore
from ..records import SnapshotRecord, utcnow
from ._base import SNAPSHOT_UPDATABLE, Editable, Field, model_update
from ._child import VolumeChild
from ._runtime import runtime

if TYPE_CHECKING:
    from .backend import Backend
    from .volume import Volume

__all__ = ["Snapshot"]

#: Statuses from which a snapshot may be deleted.
DELETABLE = frozenset({"available", "error", "error_deleting"})


class Snapshot(VolumeChild[SnapshotRecord]):
    """A point-in-time copy of a volume, made with :meth:`Volume.create_snapshot`."""

    __slots__ = ()

    _kind = "snapshot"
    _not_found = SnapshotNotFound
    _invalid = InvalidSnapshot

    name = Editable[str | None]("The user's name for the snapshot (not unique).")
    description = Editable[str | None]("Free text.")
    metadata = Editable[Mapping[str, str]]("User metadata (str to str).")
    volume_id = Field[str]("The id of the snapshotted volume.")
    volume_size = Field[int]("The volume's size in GiB when it was snapshotted.")
    status = Field[str]("``creating``, ``available``, ``deleting``, ``error``...")
    provider_location = Field[str | None]("Where the driver put the snapshot.")
    provider_auth = Field[str | None]("Credentials the driver set, if any.")
    provider_id = Field[str | None]("The driver's own id for the snapshot.")
    project_id = Field[str | None]("Project that owns the snapshot.")
    user_id = Field[str | None]("User that created the snapshot.")
    created_at = Field[datetime]("When the snapshot was created (UTC).")
    updated_at = Field[datetime | None]("When the record last changed (UTC).")

    @classmethod
    async def get_by_id(cls, snapshot_id: str) -> Snapshot:
        """The snapshot with this id.

        :raises SnapshotNotFound: there is none.
        """
        store = runtime.store("Snapshot.get_by_id()")
        records = await store.get_snapshots(snapshot_id=snapshot_id)
        if not records:
            raise SnapshotNotFound(f"no snapshot has id {snapshot_id!r}")
        return cls(records[0])

    @classmethod
    async def get_by_name(cls, name: str) -> list[Snapshot]:
        """Every snapshot with this name; a new list each time."""
        store = runtime.store("Snapshot.get_by_name()")
        return [cls(r) for r in await store.get_snapshots(snapshot_name=name)]

    async def _fetch(self, store: PersistenceStore) -> SnapshotRecord:
        records = await store.get_snapshots(snapshot_id=self.id)
        if not records:
            raise SnapshotNotFound(f"snapshot {self.id} no longer exists", resource=self)
        return records[0]

    async def _write(self, store: PersistenceStore, record: SnapshotRecord) -> SnapshotRecord:
        return await store.set_snapshot(record)

    async def _create(self, driver: VolumeDriver) -> None:
        """Store as ``creating``, run the driver, store the result (an operation body)."""
        store = runtime.bookkeeping_store()
        backend = self.backend
        volume = self._volume_cache()
        # Both taken under the volume's lock: the size as reloaded there, and the
        # time, so listing order is the order snapshots were taken in, whichever
        # process took them.
        changes: dict[str, Any] = {"created_at": utcnow()}
        if volume is not None:
            changes["volume_size"] = volume.record.size
        self._record = await store.set_snapshot(self._record.replace(**changes))
        if volume is not None:
            volume._cache_add(volume._snapshots, self)
        try:
            update = await backend._call(driver.create_snapshot, self._record)
            changes = model_update(update, SNAPSHOT_UPDATABLE, f"snapshot {self.id}")
        except Exception as exc:
            await self._persist(status="error")
            raise DriverError(
                f"creating snapshot {self.id} failed: {exc}", resource=self
            ) from exc
        await self._persist(status="available", **changes)

    async def delete(self) -> None:
        """Delete the snapshot.

        :raises InvalidSnapshot: it is not ``available``, ``error`` or ``error_deleting``.
        :raises DriverError: the driver failed; status ``error_deleting``.
        """
        store = self._store("delete")
        backend = self.backend
        driver = backend._ready("delete")
        self._require_status(DELETABLE, "delete")
        await backend._operation(
            self._locked(self._delete(store, backend, driver), DELETABLE, "delete")
        )

    async def _delete(self, store: PersistenceStore, backend: Backend,
                      driver: VolumeDriver) -> None:
        await self._persist(DELETABLE, status="deleting")
        try:
            await backend._call(driver.delete_snapshot, self._record)
        except Exception as exc:
            await self._persist(status="error_deleting")
            raise DriverError(
                f"deleting snapshot {self.id} failed: {exc}", resource=self
            ) from exc
        await store.delete_snapshot(self.id)
        self._record = self._record.replace(status="deleted")
        volume = self._volume_cache()
        if volume is not None:
            volume._cache_remove(volume._snapshots, self)

    async def create_volume(
        self,
        size: int | None = None,
        name: str | None = None,
        description: str | None = None,
        *,
        id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Volume:
        """A new volume holding the snapshot's data (the source volume's type and host).

        :param size: GiB, at least the snapshot's ``volume_size`` (the default).
        :raises InvalidSnapshot: the snapshot is not ``available``.
        :raises InvalidArgument: bad arguments; nothing was stored.
        :raises DriverError: the driver failed; the volume is stored as ``error``.
        """
        from .volume import Volume

        self._store("create_volume")
        backend = self.backend
        driver = backend._ready("create_volume")
        self._require_status(frozenset({"available"}), "create a volume from")
        source = await self.volume()
        record = source._new_record(
            self.volume_size, size, name, description, id, metadata, snapshot_id=self.id
        )
        volume = Volume(record)
        await backend._operation(self._locked(
            self._create_volume(volume, driver), frozenset({"available"}), "create a volume from"
        ))
        return volume

    async def _create_volume(self, volume: Volume, driver: VolumeDriver) -> None:
        """Create ``volume`` from this snapshot as stored now (under its volume's lock)."""
        await volume._create(driver.create_volume_from_snapshot, self._record)
