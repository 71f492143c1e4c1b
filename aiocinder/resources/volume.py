"""Volumes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..drivers.base import ModelUpdate, VolumeDriver
from ..exceptions import (
    BackendNotInitialised,
    DriverError,
    InvalidArgument,
    InvalidVolume,
    VolumeNotFound,
)
from ..lazy import Lazy
from ..persistence.base import PersistenceStore
from ..records import VOLUME_STATUSES, ConnectionRecord, SnapshotRecord, VolumeRecord
from ._base import (
    TRANSITIONAL,
    VOLUME_UPDATABLE,
    Editable,
    Field,
    Resource,
    check_id,
    check_json_mapping,
    check_size,
    check_specs,
    check_text,
    model_update,
)
from ._runtime import runtime

if TYPE_CHECKING:
    from .backend import Backend
    from .connection import Connection
    from .snapshot import Snapshot

__all__ = ["Volume", "VolumeType"]

#: Statuses from which a volume may be snapshotted, cloned, extended or connected.
USABLE = frozenset({"available", "in-use"})
#: Statuses from which a volume may be deleted (dependents are checked too).
DELETABLE = VOLUME_STATUSES - TRANSITIONAL - {"deleted"}


@dataclass(frozen=True, slots=True)
class VolumeType:
    """A volume's type: its name and its extra and QoS specs."""

    name: str | None
    extra_specs: Mapping[str, str]
    qos_specs: Mapping[str, str]


def load_volume(record: VolumeRecord) -> Volume:
    """A live volume for ``record``, honouring ``fail_on_missing_backend``.

    :raises BackendNotInitialised: its backend is not initialised here and
        ``setup(fail_on_missing_backend=True)`` (the default).
    """
    if (runtime.options.fail_on_missing_backend
            and record.backend_name not in runtime.backends):
        raise BackendNotInitialised(
            f"volume {record.id} belongs to backend {record.backend_name!r}, which is not "
            "initialised in this process (setup(fail_on_missing_backend=False) loads it "
            "anyway)"
        )
    return Volume(record)


class Volume(Resource[VolumeRecord]):
    """A volume on a backend.

    Volumes are created with :meth:`Backend.create_volume`, :meth:`clone` or
    :meth:`Snapshot.create_volume`, and found with :meth:`get_by_id` and
    :meth:`get_by_name`. Fields mirror cinderlib's.
    """

    __slots__ = ("_connections", "_snapshots")

    _kind = "volume"
    _not_found = VolumeNotFound
    _invalid = InvalidVolume
    _serialized_lists = ("snapshots", "connections")

    name = Editable[str | None]("The user's name for the volume (not unique).")
    description = Editable[str | None]("Free text.")
    metadata = Editable[Mapping[str, str]]("User metadata (str to str).")
    size = Field[int]("Size in GiB.")
    status = Field[str]("``creating``, ``available``, ``in-use``, ``error``...")
    host = Field[str | None]("``<host>@<backend>#<pool>``, as Cinder writes it.")
    availability_zone = Field[str | None]("Availability zone, if any.")
    volume_type_name = Field[str | None]("Name of the volume type, if any.")
    extra_specs = Field[Mapping[str, str]]("The volume type's extra specs.")
    qos_specs = Field[Mapping[str, str]]("The volume type's QoS specs.")
    admin_metadata = Field[Mapping[str, str]]("Metadata the driver keeps.")
    provider_location = Field[str | None]("Where the driver put the volume.")
    provider_auth = Field[str | None]("Credentials the driver set for the volume.")
    provider_id = Field[str | None]("The driver's own id for the volume.")
    source_volid = Field[str | None]("The volume this one was cloned from.")
    snapshot_id = Field[str | None]("The snapshot this volume was created from.")
    project_id = Field[str | None]("Project that owns the volume.")
    user_id = Field[str | None]("User that created the volume.")
    bootable = Field[bool]("Whether the volume is bootable.")
    multiattach = Field[bool]("Whether the volume may be attached to several hosts.")
    created_at = Field[datetime]("When the volume was created (UTC).")
    updated_at = Field[datetime | None]("When the record last changed (UTC).")

    def __init__(self, record: VolumeRecord) -> None:
        super().__init__(record)
        self._snapshots: Lazy[list[Snapshot]] = Lazy(self._load_snapshots)
        self._connections: Lazy[list[Connection]] = Lazy(self._load_connections)

    @property
    def volume_type(self) -> VolumeType:
        """The volume type (name, extra specs, QoS specs)."""
        return VolumeType(self.volume_type_name, self.extra_specs, self.qos_specs)

    @property
    def local_attach(self) -> Connection | None:
        """The connection attached on this host by this process, if any (in memory only)."""
        return runtime.local_attachments.get(self.id)

    # -- lookups -------------------------------------------------------------

    @classmethod
    async def get_by_id(cls, volume_id: str) -> Volume:
        """The volume with this id.

        :raises VolumeNotFound: there is none.
        :raises BackendNotInitialised: see :func:`aiocinder.setup`'s
            ``fail_on_missing_backend``.
        """
        runtime.store("Volume.get_by_id()")
        record = await runtime.loaders.volume.get(volume_id)
        if record is None:
            raise VolumeNotFound(f"no volume has id {volume_id!r}")
        return load_volume(record)

    @classmethod
    async def get_by_name(cls, name: str) -> list[Volume]:
        """Every volume with this name (names are not unique); a new list each time."""
        store = runtime.store("Volume.get_by_name()")
        return [load_volume(r) for r in await store.get_volumes(volume_name=name)]

    async def _fetch(self, store: PersistenceStore) -> VolumeRecord:
        record = await runtime.loaders.volume.get(self.id)
        if record is None:
            raise VolumeNotFound(f"volume {self.id} no longer exists", resource=self)
        return record

    async def _write(self, store: PersistenceStore, record: VolumeRecord) -> VolumeRecord:
        return await store.set_volume(record)

    # -- lazy properties -------------------------------------------------------

    async def snapshots(self) -> list[Snapshot]:
        """The volume's snapshots (lazy; a new list on every await)."""
        self._store("snapshots")
        return list(await self._snapshots.get())

    async def connections(self) -> list[Connection]:
        """The volume's connections (lazy; a new list on every await)."""
        self._store("connections")
        return list(await self._connections.get())

    async def _load_snapshots(self) -> list[Snapshot]:
        from .snapshot import Snapshot

        records = await runtime.loaders.snapshots.get(self.id)
        return [Snapshot(r, volume=self) for r in records]

    async def _load_connections(self) -> list[Connection]:
        from .connection import Connection

        records = await runtime.loaders.connections.get(self.id)
        return [Connection(r, volume=self) for r in records]

    def _reset_caches(self) -> None:
        self._snapshots.reset()
        self._connections.reset()

    def _cache_add(self, lazy: Lazy[list[Any]], item: Any) -> None:
        cached = lazy.peek()
        if isinstance(cached, list) and item not in cached:
            cached.append(item)

    def _cache_remove(self, lazy: Lazy[list[Any]], item: Any) -> None:
        cached = lazy.peek()
        if isinstance(cached, list) and item in cached:
            cached.remove(item)

    # -- operations --------------------------------------------------------------

    def _prepare(self, method: str) -> tuple[PersistenceStore, Backend, VolumeDriver]:
        store = self._store(method)
        backend = self.backend
        return store, backend, backend._ready(method)

    async def _create(
        self, call: Callable[..., ModelUpdate | None], *sources: VolumeRecord | SnapshotRecord
    ) -> None:
        """Store as ``creating``, run the driver, store the result (an operation body)."""
        store = runtime.bookkeeping_store()
        backend = self.backend
        self._record = await store.set_volume(self._record)
        backend._volume_added(self)
        try:
            update = await backend._call(call, self._record, *sources)
            changes = model_update(update, VOLUME_UPDATABLE, f"volume {self.id}")
        except Exception as exc:
            await self._persist(status="error")
            raise DriverError(f"creating volume {self.id} failed: {exc}", resource=self) from exc
        await self._persist(status="available", **changes)

    def _new_record(
        self,
        min_size: int,
        size: object,
        name: object,
        description: object,
        id: object,
        metadata: object,
        *,
        source_volid: str | None = None,
        snapshot_id: str | None = None,
    ) -> VolumeRecord:
        """The record of a volume made from this one (clone, or from a snapshot of it)."""
        new_size = min_size if size is None else check_size(size)
        if new_size < min_size:
            raise InvalidArgument(f"size {new_size} is smaller than the source's {min_size} GiB")
        return VolumeRecord(
            id=check_id(id),
            backend_name=self.backend_name,
            size=new_size,
            name=check_text(name, "name"),
            description=check_text(description, "description", limit=65535),
            host=self.host,
            availability_zone=self.availability_zone,
            volume_type_name=self.volume_type_name,
            extra_specs=dict(self._record.extra_specs),
            qos_specs=dict(self._record.qos_specs),
            metadata=check_specs(metadata, "metadata"),
            project_id=runtime.options.project_id,
            user_id=runtime.options.user_id,
            source_volid=source_volid,
            snapshot_id=snapshot_id,
        )

    async def clone(
        self,
        size: int | None = None,
        name: str | None = None,
        description: str | None = None,
        *,
        id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Volume:
        """A new volume holding a copy of this one's data (same type and host).

        :param size: GiB, at least this volume's size (the default).
        :raises InvalidArgument: bad arguments; nothing was stored.
        :raises InvalidVolume: this volume is not ``available`` or ``in-use``.
        :raises DriverError: the driver failed; the clone is stored as ``error``.
        """
        _, backend, driver = self._prepare("clone")
        self._require_status(USABLE, "clone")
        record = self._new_record(
            self.size, size, name, description, id, metadata, source_volid=self.id
        )
        clone = Volume(record)
        await backend._operation(clone._create(driver.create_cloned_volume, self._record))
        return clone

    async def create_snapshot(
        self,
        name: str | None = None,
        description: str | None = None,
        *,
        id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Snapshot:
        """Snapshot the volume.

        :raises InvalidVolume: the volume is not ``available`` or ``in-use``.
        :raises InvalidArgument: bad arguments; nothing was stored.
        :raises DriverError: the driver failed; the snapshot is stored as ``error``.
        """
        from .snapshot import Snapshot

        _, backend, driver = self._prepare("create_snapshot")
        self._require_status(USABLE, "snapshot")
        record = SnapshotRecord(
            id=check_id(id),
            volume_id=self.id,
            backend_name=self.backend_name,
            volume_size=self.size,
            name=check_text(name, "name"),
            description=check_text(description, "description", limit=65535),
            metadata=check_specs(metadata, "metadata"),
            project_id=runtime.options.project_id,
            user_id=runtime.options.user_id,
        )
        snapshot = Snapshot(record, volume=self)
        await backend._operation(snapshot._create(driver))
        return snapshot

    async def extend(self, size: int) -> None:
        """Grow the volume to ``size`` GiB; its status comes back as it was.

        :raises InvalidArgument: ``size`` is not larger than the current size.
        :raises InvalidVolume: the volume is not ``available`` or ``in-use``.
        :raises DriverError: the driver failed; status ``error_extending``.
        """
        store, backend, driver = self._prepare("extend")
        new_size = check_size(size)
        if new_size <= self.size:
            raise InvalidArgument(
                f"extend needs a size larger than the current {self.size} GiB, got {new_size}"
            )
        self._require_status(USABLE, "extend")
        await backend._operation(self._extend(store, backend, driver, new_size))

    async def _extend(
        self, store: PersistenceStore, backend: Backend, driver: VolumeDriver, new_size: int
    ) -> None:
        await self._persist(USABLE, status="extending")
        try:
            await backend._call(driver.extend_volume, self._record, new_size)
        except Exception as exc:
            await self._persist(status="error_extending")
            raise DriverError(f"extending volume {self.id} failed: {exc}", resource=self) from exc
        connected = await store.get_connections(volume_id=self.id)
        await self._persist(status="in-use" if connected else "available", size=new_size)

    async def delete(self) -> None:
        """Delete the volume and its data.

        :raises InvalidVolume: it has snapshots or connections (asked of the
            store, not of a cache), or an operation on it is in flight.
        :raises DriverError: the driver failed; status ``error_deleting``.
        """
        store, backend, driver = self._prepare("delete")
        self._require_status(DELETABLE, "delete")
        await self._check_no_dependents(store)
        await backend._operation(self._delete(store, backend, driver))

    async def _check_no_dependents(self, store: PersistenceStore) -> None:
        snapshots = await store.get_snapshots(volume_id=self.id)
        connections = await store.get_connections(volume_id=self.id)
        if snapshots or connections:
            raise InvalidVolume(
                f"cannot delete volume {self.id}: it has {len(snapshots)} snapshot(s) and "
                f"{len(connections)} connection(s)",
                resource=self,
            )

    async def _delete(self, store: PersistenceStore, backend: Backend,
                      driver: VolumeDriver) -> None:
        previous = self._record.status
        await self._persist(DELETABLE, status="deleting")
        try:
            # a snapshot or connection may have been made between the check and now
            await self._check_no_dependents(store)
        except InvalidVolume:
            await self._persist(status=previous)
            raise
        try:
            await backend._call(driver.delete_volume, self._record)
        except Exception as exc:
            await self._persist(status="error_deleting")
            raise DriverError(f"deleting volume {self.id} failed: {exc}", resource=self) from exc
        await store.delete_volume(self.id)
        self._record = self._record.replace(status="deleted")
        backend._volume_removed(self)

    async def connect(
        self, connector_dict: Mapping[str, Any], *, attach_mode: str = "rw"
    ) -> Connection:
        """Export the volume and map it to the host ``connector_dict`` describes.

        ``connector_dict`` is the host's os-brick connector properties. The
        connection is stored as ``attaching`` first, ``attached`` after, and
        the volume becomes ``in-use``.

        :param attach_mode: ``"rw"`` or ``"ro"``.
        :raises InvalidArgument: bad connector or mode; nothing was stored.
        :raises InvalidVolume: the volume is not ``available`` or ``in-use``.
        :raises DriverError: the driver failed; the export is removed again and
            no connection is left stored.
        """
        from .connection import Connection

        _, backend, driver = self._prepare("connect")
        connector = check_json_mapping(connector_dict, "connector_dict")
        if attach_mode not in ("rw", "ro"):
            raise InvalidArgument(f"attach_mode must be 'rw' or 'ro', got {attach_mode!r}")
        self._require_status(USABLE, "connect")
        record = ConnectionRecord(
            id=str(uuid.uuid4()),
            volume_id=self.id,
            backend_name=self.backend_name,
            connector_info=connector,
            attach_mode=attach_mode,
            project_id=runtime.options.project_id,
            user_id=runtime.options.user_id,
        )
        connection = Connection(record, volume=self)
        await backend._operation(connection._connect(backend, driver, self))
        return connection

    async def disconnect(self, connection: Connection, force: bool = False) -> None:
        """Disconnect one of this volume's connections (see :meth:`Connection.disconnect`).

        :raises InvalidArgument: the connection belongs to another volume.
        """
        if connection.volume_id != self.id:
            raise InvalidArgument(f"connection {connection.id} is not one of volume {self.id}")
        await connection.disconnect(force=force)
