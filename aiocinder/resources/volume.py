"""Volumes."""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..connectors import get_connector_properties
from ..drivers.base import ModelUpdate, VolumeDriver
from ..exceptions import (
    AttachError,
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
from .connection import backend_option

if TYPE_CHECKING:
    from .backend import Backend
    from .connection import Connection
    from .snapshot import Snapshot

__all__ = ["Volume", "VolumeType"]

_log = logging.getLogger("aiocinder")

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

    __slots__ = ("_connections", "_handed_out", "_snapshots")

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
        self._snapshots: Lazy[list[Snapshot]] = Lazy(
            Volume._fetch_snapshots, Volume._build_snapshots
        )
        self._connections: Lazy[list[Connection]] = Lazy(
            Volume._fetch_connections, Volume._build_connections
        )
        #: Connections this object returned (connect, attach), so a reused
        #: connection comes back as the same object (made on first use: most
        #: volumes of a bulk scan never need it).
        self._handed_out: weakref.WeakValueDictionary[str, Connection] | None = None

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
        return list(await self._snapshots.get(self))

    async def connections(self) -> list[Connection]:
        """The volume's connections (lazy; a new list on every await)."""
        self._store("connections")
        return list(await self._connections.get(self))

    def _fetch_snapshots(self) -> Awaitable[list[SnapshotRecord]]:
        return runtime.loaders.snapshots.request(self.id)

    def _build_snapshots(self, records: list[SnapshotRecord]) -> list[Snapshot]:
        from .snapshot import Snapshot

        return [Snapshot(r, volume=self) for r in records]

    def _fetch_connections(self) -> Awaitable[list[ConnectionRecord]]:
        return runtime.loaders.connections.request(self.id)

    def _build_connections(self, records: list[ConnectionRecord]) -> list[Connection]:
        from .connection import Connection

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
        await backend._operation(self._locked(
            self._clone_into(clone, driver.create_cloned_volume, size is None), USABLE, "clone"
        ))
        return clone

    async def _clone_into(
        self, clone: Volume, call: Callable[..., ModelUpdate | None], default_size: bool
    ) -> None:
        """Create ``clone`` from this volume as stored now (under its lock): if it
        grew meanwhile, a clone of the default size grows too, a smaller size asked
        for is refused."""
        if clone._record.size < self._record.size:
            if not default_size:
                raise InvalidArgument(f"size {clone._record.size} is smaller than the "
                                      f"source's {self._record.size} GiB")
            clone._record = clone._record.replace(size=self._record.size)
        await clone._create(call, self._record)

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
        await backend._operation(self._locked(snapshot._create(driver), USABLE, "snapshot"))
        return snapshot

    async def extend(self, size: int) -> None:
        """Grow the volume to ``size`` GiB; its status comes back as it was.

        When this process has the volume attached (:attr:`local_attach`), the
        host is then made to see the new size (:meth:`Connection.extend`);
        other hosts call :meth:`Connection.extend` themselves.

        :raises InvalidArgument: ``size`` is not larger than the current size.
        :raises InvalidVolume: the volume is not ``available`` or ``in-use``.
        :raises DriverError: the driver failed; status ``error_extending``.
        :raises AttachError: the volume was extended (and the records say
            so), but rescanning it on this host failed.
        """
        store, backend, driver = self._prepare("extend")
        new_size = check_size(size)
        if new_size <= self.size:
            raise InvalidArgument(
                f"extend needs a size larger than the current {self.size} GiB, got {new_size}"
            )
        self._require_status(USABLE, "extend")
        await backend._operation(
            self._locked(self._extend(store, backend, driver, new_size), USABLE, "extend")
        )

    async def _extend(
        self, store: PersistenceStore, backend: Backend, driver: VolumeDriver, new_size: int
    ) -> None:
        if new_size <= self._record.size:  # grown meanwhile, by another process
            raise InvalidArgument(f"extend needs a size larger than the current "
                                  f"{self._record.size} GiB, got {new_size}")
        await self._persist(USABLE, status="extending")
        try:
            await backend._call(driver.extend_volume, self._record, new_size)
        except Exception as exc:
            await self._persist(status="error_extending")
            raise DriverError(f"extending volume {self.id} failed: {exc}", resource=self) from exc
        connected = await store.get_connections(volume_id=self.id)
        await self._persist(status="in-use" if connected else "available", size=new_size)
        local = self.local_attach
        if local is not None:
            # the storage grew and the records say so; now let this host see it
            await local._rescan(local.host_connector(), self)

    async def delete(self) -> None:
        """Delete the volume and its data.

        :raises InvalidVolume: it has snapshots or connections (asked of the
            store, not of a cache), or an operation on it is in flight.
        :raises DriverError: the driver failed; status ``error_deleting``.
        """
        store, backend, driver = self._prepare("delete")
        self._require_status(DELETABLE, "delete")
        await backend._operation(
            self._locked(self._delete(store, backend, driver), DELETABLE, "delete")
        )

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
        # under the volume's lock: no snapshot or connection can appear meanwhile
        await self._check_no_dependents(store)
        await self._persist(DELETABLE, status="deleting")
        try:
            await backend._call(driver.delete_volume, self._record)
        except Exception as exc:
            await self._persist(status="error_deleting")
            raise DriverError(f"deleting volume {self.id} failed: {exc}", resource=self) from exc
        await store.delete_volume(self.id)
        self._record = self._record.replace(status="deleted")
        backend._volume_removed(self)

    async def connect(
        self, connector_dict: Mapping[str, Any], *, attach_mode: str = "rw", new: bool = False
    ) -> Connection:
        """Export the volume and map it to the host ``connector_dict`` describes.

        ``connector_dict`` is the host's os-brick connector properties
        (:func:`aiocinder.get_connector_properties` on that host). The
        connection is stored as ``attaching`` first, ``attached`` after, and
        the volume becomes ``in-use``.

        Connecting is idempotent per host: when the volume already has an
        ``attached`` connection whose ``connector_info["host"]`` is this
        connector's ``"host"``, that connection is returned as it is (the
        driver is not called, nothing is refreshed). Pass ``new=True`` for
        another connection to the same host. A connector without ``"host"``
        always gets a new connection.

        :param attach_mode: ``"rw"`` or ``"ro"``.
        :param new: make a new connection even if the host has one.
        :raises InvalidArgument: bad connector, mode or ``new``; nothing was stored.
        :raises InvalidVolume: the volume is not ``available`` or ``in-use``, or
            the host's existing connection has the other ``attach_mode``
            (disconnect it, or pass ``new=True``).
        :raises DriverError: the driver failed; the export is removed again and
            no connection is left stored.
        """
        store, backend, driver = self._prepare("connect")
        connector = check_json_mapping(connector_dict, "connector_dict")
        if attach_mode not in ("rw", "ro"):
            raise InvalidArgument(f"attach_mode must be 'rw' or 'ro', got {attach_mode!r}")
        if not isinstance(new, bool):
            raise InvalidArgument(f"new must be True or False, got {new!r}")
        self._require_status(USABLE, "connect")
        connection, _ = await backend._operation(self._locked(
            self._connect_op(store, backend, driver, connector, attach_mode, new),
            USABLE, "connect",
        ))
        return connection

    async def _connect_op(
        self, store: PersistenceStore, backend: Backend, driver: VolumeDriver,
        connector: dict[str, Any], attach_mode: str, new: bool,
    ) -> tuple[Connection, bool]:
        from .connection import host_lock

        async with host_lock(self.id):
            return await self._find_or_connect(store, backend, driver, connector,
                                               attach_mode, new)

    async def _find_or_connect(
        self, store: PersistenceStore, backend: Backend, driver: VolumeDriver,
        connector: dict[str, Any], attach_mode: str, new: bool,
    ) -> tuple[Connection, bool]:
        """The host's existing connection, or a new one; and whether it is new.

        Runs in an operation, under the volume's host lock.
        """
        from .connection import Connection

        host = connector.get("host")
        if not new and host is not None:
            for found in await store.get_connections(volume_id=self.id):
                if found.status != "attached" or found.connector_info.get("host") != host:
                    continue
                if found.attach_mode != attach_mode:
                    raise InvalidVolume(
                        f"volume {self.id} is connected to host {host!r} as "
                        f"{found.attach_mode!r} already (connection {found.id}); disconnect "
                        f"it, or pass new=True for another connection",
                        resource=self,
                    )
                return self._connection_for(found), False
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
        self._hand_out(connection)
        await connection._connect(backend, driver, self)
        return connection, True

    def _connection_for(self, record: ConnectionRecord) -> Connection:
        """The live connection for a stored record: the one attached here, the
        one in the loaded :meth:`connections` list, or a new one."""
        from .connection import Connection

        local = self.local_attach
        if local is not None and local.id == record.id:
            return local
        candidates = list(self._handed_out.values()) if self._handed_out else []
        cached = self._connections.peek()
        if isinstance(cached, list):
            candidates += cached
        for connection in candidates:
            if connection.id == record.id:
                connection._record = record
                return connection
        connection = Connection(record, volume=self)
        self._cache_add(self._connections, connection)
        self._hand_out(connection)
        return connection

    def _hand_out(self, connection: Connection) -> None:
        if self._handed_out is None:
            self._handed_out = weakref.WeakValueDictionary()
        self._handed_out[connection.id] = connection

    # -- on this host, through os-brick -------------------------------------------

    async def attach(self) -> Connection:
        """Attach the volume on this host: connect it for this host, then os-brick.

        This host's connector properties are gathered
        (:func:`aiocinder.get_connector_properties`, with the backend's
        ``use_multipath_for_image_xfer`` and ``enforce_multipath_for_image_xfer``
        options), the volume is connected for them (:meth:`connect`, reusing
        this host's connection if it has one), then os-brick attaches it and
        checks the device (:meth:`Connection.attach`). The volume is
        ``in-use``; :attr:`local_attach` is the connection (in this process
        only) and ``connection.path`` the device's path.

        Attaching a volume this process has attached already returns its
        connection.

        :returns: the connection, attached here.
        :raises InvalidVolume: the volume is not ``available`` or ``in-use``.
        :raises AttachError: gathering the connector properties, os-brick's
            ``connect_volume`` or the device check failed (the message says
            which). Everything the attach did is undone first: os-brick
            detaches, the connection it made is disconnected (its export
            removed) and its record deleted, and the volume's record is as it
            was.
        :raises DriverError: the driver failed to connect (nothing is left).
        """
        store, backend, driver = self._prepare("attach")
        local = self.local_attach
        if local is not None:
            return local
        self._require_status(USABLE, "attach")
        multipath = bool(backend_option(self.backend_name, "use_multipath_for_image_xfer", False))
        enforce = bool(
            backend_option(self.backend_name, "enforce_multipath_for_image_xfer", False)
        )
        try:
            connector = await get_connector_properties(
                multipath=multipath, enforce_multipath=enforce
            )
        except AttachError as exc:
            raise AttachError(f"attaching volume {self.id}: {exc}", resource=self) from exc
        return await backend._operation(
            self._locked(self._attach(store, backend, driver, connector), USABLE, "attach")
        )

    async def _attach(self, store: PersistenceStore, backend: Backend, driver: VolumeDriver,
                      connector: dict[str, Any]) -> Connection:
        from .connection import host_lock

        async with host_lock(self.id):
            local = self.local_attach
            if local is not None:
                return local
            before = self._record
            connection, made = await self._find_or_connect(
                store, backend, driver, connector, "rw", False
            )
            try:
                await connection._attach_local(self)
            except AttachError as exc:
                if made:
                    await self._undo_attach(store, backend, driver, connection, before, exc)
                raise
            return connection

    async def _undo_attach(self, store: PersistenceStore, backend: Backend,
                           driver: VolumeDriver, connection: Connection,
                           before: VolumeRecord, error: AttachError) -> None:
        """Disconnect the connection a failed attach made; the volume's record back."""
        try:
            await connection._disconnect(store, backend, driver, self, True)
        except DriverError as exc:
            error.add_note(f"undoing the connection failed too, it is left as "
                           f"{connection.status!r}: {exc}")
            return
        if await store.get_connections(volume_id=self.id):
            return  # another connection (another process's) keeps the export
        restore = {name: getattr(before, name) for name in VOLUME_UPDATABLE
                   if getattr(self._record, name) != getattr(before, name)}
        if self._record.status != before.status and before.status in USABLE:
            restore["status"] = before.status
        if restore:
            await self._persist(**restore)

    async def detach(self, force: bool = False, ignore_errors: bool = False) -> None:
        """Detach the volume from this host, then disconnect it.

        os-brick detaches the device (:meth:`Connection.detach`),
        :attr:`local_attach` becomes None, then the connection is
        disconnected (:meth:`Connection.disconnect`: unmapped, the export
        removed with the last connection, the record deleted); with no
        connection left the volume is ``available``.

        :param force: passed to os-brick and to the driver's
            ``terminate_connection``; a failed local detach then does not
            stop the disconnect.
        :param ignore_errors: passed to os-brick; failures are logged instead
            of raised (the local detach and the disconnect are both tried).
        :raises InvalidVolume: this process has not attached the volume.
        :raises AttachError: os-brick failed to detach (without ``force``:
            the volume stays attached and connected).
        :raises DriverError: the driver failed to disconnect.
        """
        store, backend, driver = self._prepare("detach")
        if self.local_attach is None:
            raise InvalidVolume(
                f"volume {self.id} is not attached on this host by this process",
                resource=self,
            )
        await backend._operation(
            self._locked(self._detach(store, backend, driver, force, ignore_errors), None, "detach")
        )

    async def _detach(self, store: PersistenceStore, backend: Backend, driver: VolumeDriver,
                      force: bool, ignore_errors: bool) -> None:
        from .connection import host_lock

        async with host_lock(self.id):
            connection = self.local_attach
            if connection is None:
                return  # detached meanwhile
            errors: list[Exception] = []
            try:
                await connection._detach_local(force, ignore_errors, self)
            except AttachError as exc:
                if not force:
                    raise
                errors.append(exc)
            try:
                await connection._disconnect(store, backend, driver, self, force)
            except DriverError as exc:
                errors.append(exc)
            if errors and not ignore_errors:
                first = errors[0]
                for other in errors[1:]:
                    first.add_note(f"then: {other}")
                raise first
            for error in errors:
                _log.warning("detaching volume %s: %s (ignored)", self.id, error)

    async def cleanup(self) -> None:
        """Undo whatever this host has of the volume: detach and disconnect.

        Detaches :attr:`local_attach`, and every connection of the volume
        for this host (``connector_info["host"]`` is ``setup()``'s ``host``):
        a device recorded on one (by a process that is gone) is detached
        with os-brick, then each is disconnected. For after a crash: it does
        not wait for other processes that may be working on the volume.

        :raises AttachError, DriverError: some step failed; the others were
            still tried, and the first error is raised (the others are in its
            notes).
        """
        store, backend, driver = self._prepare("cleanup")
        await backend._operation(
            self._locked(self._cleanup(store, backend, driver), None, "clean up")
        )

    async def _cleanup(self, store: PersistenceStore, backend: Backend,
                       driver: VolumeDriver) -> None:
        from .connection import host_lock

        async with host_lock(self.id):
            host = runtime.options.host
            local = self.local_attach
            connections = [
                self._connection_for(record)
                for record in await store.get_connections(volume_id=self.id)
                if record.connector_info.get("host") == host
                or (local is not None and record.id == local.id)
            ]
            errors: list[Exception] = []
            for connection in connections:
                if connection.device or connection is local:
                    if connection.status != "attached":
                        await connection._persist(status="attached")
                    try:
                        await connection._detach_local(True, True, self)
                    except AttachError as exc:
                        errors.append(exc)
                try:
                    await connection._disconnect(store, backend, driver, self, True)
                except DriverError as exc:
                    errors.append(exc)
            if local is not None and local.id not in {c.id for c in connections}:
                del runtime.local_attachments[self.id]  # its record is gone already
            if errors:
                first = errors[0]
                for other in errors[1:]:
                    first.add_note(f"also: {other}")
                raise first

    async def disconnect(self, connection: Connection, force: bool = False) -> None:
        """Disconnect one of this volume's connections (see :meth:`Connection.disconnect`).

        :raises InvalidArgument: the connection belongs to another volume.
        """
        if connection.volume_id != self.id:
            raise InvalidArgument(f"connection {connection.id} is not one of volume {self.id}")
        await connection.disconnect(force=force)
