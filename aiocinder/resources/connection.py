"""Connections: a volume exported and mapped to a host."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..drivers.base import VolumeDriver
from ..exceptions import ConnectionNotFound, DriverError, InvalidConnection
from ..lazy import Lazy
from ..persistence.base import PersistenceStore
from ..records import ConnectionRecord
from ._base import VOLUME_UPDATABLE, Field, Resource, model_update
from ._runtime import runtime

if TYPE_CHECKING:
    from .backend import Backend
    from .volume import Volume

__all__ = ["Connection"]

#: Statuses from which a connection may be disconnected.
DISCONNECTABLE = frozenset({"attached", "error_attaching", "error_detaching"})


class Connection(Resource[ConnectionRecord]):
    """A volume mapped to one host, made with :meth:`Volume.connect`.

    ``connector_info`` is the host's os-brick connector properties,
    ``conn_info`` what the driver answered (``driver_volume_type`` and
    ``data``), ``device`` what os-brick gave when the volume was attached on
    the host. ``status`` is persisted: ``attaching``, ``attached``,
    ``detaching``, ``error_attaching`` or ``error_detaching``.
    """

    __slots__ = ("_volume",)

    _kind = "connection"
    _not_found = ConnectionNotFound
    _invalid = InvalidConnection

    volume_id = Field[str]("The id of the connected volume.")
    status = Field[str]("``attaching``, ``attached``, ``detaching``, ``error_*``.")
    connector_info = Field[Mapping[str, Any]]("The host's os-brick connector properties.")
    conn_info = Field[Mapping[str, Any]]("The driver's connection info.")
    device = Field[Mapping[str, Any] | None]("What os-brick returned when attaching here.")
    attach_mode = Field[str]("``rw`` or ``ro``.")
    instance_uuid = Field[str | None]("The instance the volume is attached to, if any.")
    project_id = Field[str | None]("Project that owns the connection.")
    user_id = Field[str | None]("User that made the connection.")
    created_at = Field[datetime]("When the connection was made (UTC).")
    updated_at = Field[datetime | None]("When the record last changed (UTC).")

    def __init__(self, record: ConnectionRecord, *, volume: Volume | None = None) -> None:
        super().__init__(record)
        self._volume: Lazy[Volume] = Lazy(self._load_volume)
        if volume is not None:
            self._volume.set(volume)

    @property
    def connector(self) -> Mapping[str, Any]:
        """Alias of :attr:`connector_info`."""
        return self.connector_info

    @property
    def protocol(self) -> str | None:
        """The transport (``driver_volume_type``): ``iscsi``, ``local``..."""
        return self._record.protocol

    @property
    def path(self) -> str | None:
        """The device path on the host, once attached there."""
        return self._record.path

    @property
    def connected(self) -> bool:
        """Whether the volume is exported and mapped to the host."""
        return self._record.status == "attached"

    @property
    def attached(self) -> bool:
        """Whether a device is attached on the host for this connection."""
        return bool(self._record.device)

    @classmethod
    async def get_by_id(cls, connection_id: str) -> Connection:
        """The connection with this id.

        :raises ConnectionNotFound: there is none.
        """
        store = runtime.store("Connection.get_by_id()")
        records = await store.get_connections(connection_id=connection_id)
        if not records:
            raise ConnectionNotFound(f"no connection has id {connection_id!r}")
        return cls(records[0])

    async def _fetch(self, store: PersistenceStore) -> ConnectionRecord:
        records = await store.get_connections(connection_id=self.id)
        if not records:
            raise ConnectionNotFound(f"connection {self.id} no longer exists", resource=self)
        return records[0]

    async def _write(
        self, store: PersistenceStore, record: ConnectionRecord
    ) -> ConnectionRecord:
        return await store.set_connection(record)

    async def volume(self) -> Volume:
        """The connected volume (lazy; the very object this connection was reached from).

        :raises VolumeNotFound: the volume is gone.
        """
        self._store("volume")
        return await self._volume.get()

    async def _load_volume(self) -> Volume:
        from .volume import Volume

        return await Volume.get_by_id(self._record.volume_id)

    def _reset_caches(self) -> None:
        self._volume.reset()

    async def _connect(self, backend: Backend, driver: VolumeDriver, volume: Volume) -> None:
        """Store as ``attaching``, export and map, store the result (an operation body)."""
        store = runtime.bookkeeping_store()
        connector = self._record.connector_info
        self._record = await store.set_connection(self._record)
        volume._cache_add(volume._connections, self)
        exported = False
        try:
            await backend._call(driver.validate_connector, connector)
            export = await backend._call(driver.create_export, volume.record, connector)
            exported = True
            conn_info = await backend._call(driver.initialize_connection, volume.record,
                                            connector)
            volume_changes = model_update(export, VOLUME_UPDATABLE, f"volume {volume.id}")
        except Exception as exc:
            await self._undo_connect(store, backend, driver, volume, exported)
            raise DriverError(
                f"connecting volume {volume.id} failed: {exc}", resource=volume
            ) from exc
        conn_info = copy.deepcopy(dict(conn_info))
        data = conn_info.setdefault("data", {})
        # read-only when either the caller or the driver says so; both fields agree
        mode = "ro" if "ro" in (self._record.attach_mode, data.get("access_mode")) else "rw"
        data["access_mode"] = mode
        self._record = self._record.replace(attach_mode=mode)
        await self._persist(status="attached", conn_info=conn_info)
        await volume._persist(status="in-use", **volume_changes)

    async def _undo_connect(self, store: PersistenceStore, backend: Backend,
                            driver: VolumeDriver, volume: Volume, exported: bool) -> None:
        """Remove the export a failed connect left, then the record, or mark it failed."""
        if exported and not await self._others(store):
            try:
                await backend._call(driver.remove_export, volume.record)
            except Exception:
                await self._persist(status="error_attaching")
                return
        await store.delete_connection(self.id)
        self._record = self._record.replace(status="error_attaching")
        volume._cache_remove(volume._connections, self)

    async def _others(self, store: PersistenceStore) -> list[ConnectionRecord]:
        records = await store.get_connections(volume_id=self._record.volume_id)
        return [r for r in records if r.id != self.id]

    async def disconnect(self, force: bool = False) -> None:
        """Unmap the volume from the host and, with no connection left, remove its export.

        The record is deleted; the volume returns to ``available`` when this
        was its last connection.

        :param force: passed to the driver's ``terminate_connection``.
        :raises InvalidConnection: an operation on the connection is in flight.
        :raises DriverError: the driver failed; status ``error_detaching``.
        """
        store = self._store("disconnect")
        backend = self.backend
        driver = backend._ready("disconnect")
        self._require_status(DISCONNECTABLE, "disconnect")
        volume = await self.volume()
        await backend._operation(self._disconnect(store, backend, driver, volume, force))

    async def _disconnect(self, store: PersistenceStore, backend: Backend,
                          driver: VolumeDriver, volume: Volume, force: bool) -> None:
        await self._persist(DISCONNECTABLE, status="detaching")
        try:
            await backend._call(driver.terminate_connection, volume.record,
                                self._record.connector_info, force)
            others = await self._others(store)
            if not others:
                await backend._call(driver.remove_export, volume.record)
        except Exception as exc:
            await self._persist(status="error_detaching")
            raise DriverError(
                f"disconnecting volume {volume.id} failed: {exc}", resource=self
            ) from exc
        await store.delete_connection(self.id)
        self._record = self._record.replace(status="detached")
        volume._cache_remove(volume._connections, self)
        if runtime.local_attachments.get(volume.id) is self:
            del runtime.local_attachments[volume.id]
        if not others and volume.record.status == "in-use":
            await volume._persist(status="available")
