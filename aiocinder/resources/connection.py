"""Connections: a volume exported and mapped to a host."""

from __future__ import annotations

import asyncio
import copy
import logging
import weakref
from collections.abc import Coroutine, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ..connectors import DEFAULT_DEVICE_SCAN_ATTEMPTS, HostConnector
from ..drivers.base import VolumeDriver
from ..exceptions import (
    AttachError,
    ConnectionNotFound,
    DriverError,
    InvalidArgument,
    InvalidConnection,
)
from ..persistence.base import PersistenceStore
from ..records import ConnectionRecord
from ._base import VOLUME_UPDATABLE, Field, check_json_mapping, model_update
from ._child import VolumeChild
from ._runtime import runtime

if TYPE_CHECKING:
    from .backend import Backend
    from .volume import Volume

__all__ = ["Connection"]

T = TypeVar("T")

_log = logging.getLogger("aiocinder")

#: Statuses from which a connection may be disconnected.
DISCONNECTABLE = frozenset({"attached", "error_attaching", "error_detaching"})
#: The status of a connection that is exported and mapped (and may be attached here).
CONNECTED = frozenset({"attached"})

_host_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def host_lock(volume_id: str) -> asyncio.Lock:
    """The lock that serialises this process's connects, attaches and detaches of a volume.

    Held by the operation's own task (not by its caller), for the whole operation.
    """
    lock = _host_locks.get(volume_id)
    if lock is None:
        lock = _host_locks[volume_id] = asyncio.Lock()
    return lock


def backend_option(backend_name: str, name: str, default: T) -> T:
    """A host-side option of a backend initialised here: its options first
    (``Backend(..., name=value)``), then its driver's ``configuration``
    (Cinder drivers), then an attribute of its driver; ``default`` otherwise."""
    backend = runtime.backends.get(backend_name)
    if backend is None:
        return default
    config = backend.config
    if name in config:
        return config[name]  # type: ignore[no-any-return]
    driver = backend._driver
    for holder in (getattr(driver, "configuration", None), driver):
        value = getattr(holder, name, None) if holder is not None else None
        if value is not None:
            return value  # type: ignore[no-any-return]
    return default


class Connection(VolumeChild[ConnectionRecord]):
    """A volume mapped to one host, made with :meth:`Volume.connect`.

    ``connector_info`` is the host's os-brick connector properties,
    ``conn_info`` what the driver answered (``driver_volume_type`` and
    ``data``), ``device`` what os-brick gave when the volume was attached on
    the host. ``status`` is persisted: ``attaching``, ``attached``,
    ``detaching``, ``error_attaching`` or ``error_detaching``.
    """

    __slots__ = ()

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

    @property
    def use_multipath(self) -> bool:
        """Whether attaching goes through multipath: what the host's connector
        properties say (``connector_info["multipath"]``)."""
        return bool(self._record.connector_info.get("multipath", False))

    @property
    def scan_attempts(self) -> int:
        """How often os-brick looks for the device when attaching: the backend's
        ``num_volume_device_scan_tries`` when it is initialised here, else 3."""
        value = backend_option(
            self.backend_name, "num_volume_device_scan_tries", DEFAULT_DEVICE_SCAN_ATTEMPTS
        )
        return value if type(value) is int and value >= 1 else DEFAULT_DEVICE_SCAN_ATTEMPTS

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
            volume_changes = model_update(export, VOLUME_UPDATABLE, f"volume {volume.id}")
            # the driver maps what it just exported (provider_auth...), as in Cinder
            conn_info = await backend._call(driver.initialize_connection,
                                            volume.record.replace(**volume_changes), connector)
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
        was its last connection. If this process attached the connection
        locally, it is detached first (see :meth:`detach`), so no device is
        left behind pointing at storage that is gone.

        :param force: passed to the driver's ``terminate_connection`` (and to
            os-brick when detaching first; a failed detach then does not stop
            the disconnect).
        :raises InvalidConnection: an operation on the connection is in flight.
        :raises AttachError: detaching locally first failed; still connected.
        :raises DriverError: the driver failed; status ``error_detaching``.
        """
        store = self._store("disconnect")
        backend = self.backend
        driver = backend._ready("disconnect")
        self._require_status(DISCONNECTABLE, "disconnect")
        volume = await self.volume()
        await backend._operation(self._locked(
            self._disconnect_op(store, backend, driver, volume, force),
            DISCONNECTABLE, "disconnect", also=(volume,),
        ))

    async def _disconnect_op(self, store: PersistenceStore, backend: Backend,
                             driver: VolumeDriver, volume: Volume, force: bool) -> None:
        async with host_lock(self.volume_id):
            local = self._local()
            if local is not None:
                try:
                    await local._detach_local(force, False, local)
                except AttachError:
                    if not force:
                        raise
                    _log.warning("detaching connection %s failed; disconnecting anyway "
                                 "(force)", self.id, exc_info=True)
                if local is not self:
                    self._record = local._record
            await self._disconnect(store, backend, driver, volume, force)
            if local is not None and local is not self:
                local._record = self._record

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
        local = runtime.local_attachments.get(volume.id)
        if local is not None and local.id == self.id:
            del runtime.local_attachments[volume.id]
        if not others and volume.record.status == "in-use":
            await volume._persist(status="available")

    # -- on this host, through os-brick ---------------------------------------

    def _local(self) -> Connection | None:
        """The object this process attached this connection through, if it did."""
        local = runtime.local_attachments.get(self._record.volume_id)
        return local if local is not None and local.id == self.id else None

    def host_connector(self) -> HostConnector:
        """The os-brick connector for this connection's info on this host.

        :raises InvalidConnection: the connection has no connection info yet.
        """
        try:
            return HostConnector(
                self._record.conn_info,
                use_multipath=self.use_multipath,
                device_scan_attempts=self.scan_attempts,
            )
        except ValueError as exc:
            raise InvalidConnection(
                f"connection {self.id} has no usable connection info: {exc}", resource=self
            ) from None

    async def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run an operation shielded; tracked by the backend when it is initialised here
        (a node that only attaches has no backend)."""
        backend = runtime.backends.get(self._record.backend_name)
        if backend is not None:
            return await backend._operation(coro)
        return await runtime.run_operation(coro)

    async def attach(self) -> Connection:
        """Attach the connected volume on this host (os-brick), and nothing more.

        This is the local half of :meth:`Volume.attach`: the volume must be
        connected for this host already (:meth:`Volume.connect`, perhaps by
        another process, the remote flow). os-brick's ``connect_volume`` runs
        with the stored connection info, then its device check; the device
        is stored (``device``, :attr:`path`) and this connection becomes the
        volume's :attr:`Volume.local_attach` in this process. The status is
        ``attaching`` meanwhile, ``attached`` after.

        Attaching a connection this process has attached already does
        nothing. No backend is needed in this process.

        :returns: this connection.
        :raises InvalidConnection: it is not ``attached`` (connected), or the
            volume is attached here through another connection.
        :raises AttachError: os-brick failed; what it did is undone and the
            record is as it was.
        """
        self._store("attach")
        self._require_status(CONNECTED, "attach")
        self.host_connector()  # refuse a connection without info before anything
        await self._run(self._locked(self._attach_op(), CONNECTED, "attach"))
        return self

    async def _attach_op(self) -> None:
        async with host_lock(self.volume_id):
            current = runtime.local_attachments.get(self.volume_id)
            if current is not None:
                if current.id == self.id:
                    self._record = current._record
                    return
                raise InvalidConnection(
                    f"volume {self.volume_id} is attached on this host already, through "
                    f"connection {current.id}",
                    resource=self,
                )
            await self._attach_local(self)

    async def _attach_local(self, resource: Any) -> None:
        """os-brick connect, device check, records (the body of every local attach).

        On failure the os-brick side is undone (its errors ignored), the
        record is put back as it was, and :class:`AttachError` is raised with
        ``resource``.
        """
        connector = self.host_connector()
        previous = self._record.device
        await self._persist(CONNECTED, status="attaching")
        device: dict[str, Any] | None = None
        step = "os-brick connect_volume"
        try:
            device = await connector.connect_volume()
            # stored before the check: a crash now leaves what there is to detach
            await self._persist(device=device)
            step = "the device check"
            await connector.check_device(device)
        except Exception as exc:
            try:
                await connector.disconnect_volume(device, force=True, ignore_errors=True)
            except Exception:
                _log.warning("undoing the attach of connection %s: os-brick's "
                             "disconnect_volume failed", self.id, exc_info=True)
            await self._persist(status="attached", device=previous)
            raise AttachError(
                f"attaching volume {self.volume_id} on this host failed at {step} "
                f"({connector.protocol} protocol): {exc}",
                resource=resource,
            ) from exc
        await self._persist(status="attached")
        runtime.local_attachments[self.volume_id] = self

    async def detach(self, force: bool = False, ignore_errors: bool = False) -> None:
        """Detach the volume from this host (os-brick), and nothing more.

        This is the local half of :meth:`Volume.detach`: the connection stays
        (exported and mapped); its ``device`` is cleared and the volume's
        :attr:`Volume.local_attach` becomes None. A connection with no device
        recorded is left alone. A device recorded by a process that is gone
        is detached from this host too.

        :param force: passed to os-brick's ``disconnect_volume`` (it may lose
            data not yet written).
        :param ignore_errors: passed to os-brick; and when os-brick still
            fails, the device is forgotten anyway instead of raising.
        :raises InvalidConnection: it is not ``attached`` (connected), or an
            operation on it is in flight.
        :raises AttachError: os-brick failed; the device stays recorded.
        """
        self._store("detach")
        if self._local() is None and not self._record.device:
            return
        self._require_status(CONNECTED, "detach")
        self.host_connector()
        await self._run(self._locked(self._detach_op(force, ignore_errors), CONNECTED, "detach"))

    async def _detach_op(self, force: bool, ignore_errors: bool) -> None:
        async with host_lock(self.volume_id):
            local = self._local() or self
            if local is not self:
                self._record = local._record
            if self._local() is None and not self._record.device:
                return
            await local._detach_local(force, ignore_errors, self)
            self._record = local._record

    async def _detach_local(self, force: bool, ignore_errors: bool, resource: Any) -> None:
        """os-brick disconnect and records (the body of every local detach)."""
        connector = self.host_connector()
        await self._persist(CONNECTED, status="detaching")
        try:
            await connector.disconnect_volume(
                self._record.device, force=force, ignore_errors=ignore_errors
            )
        except Exception as exc:
            if not ignore_errors:
                await self._persist(status="attached")
                raise AttachError(
                    f"detaching volume {self.volume_id} from this host failed at os-brick "
                    f"disconnect_volume ({connector.protocol} protocol): {exc}",
                    resource=resource,
                ) from exc
            _log.warning("detaching connection %s: os-brick failed, ignored: %s",
                         self.id, exc)
        await self._persist(status="attached", device=None)
        if self._local() is not None:
            del runtime.local_attachments[self._record.volume_id]

    async def extend(self) -> int | None:
        """Make this host see the volume's new size after an extend (os-brick rescan).

        :meth:`Volume.extend` does it for a volume attached by this process;
        call this on the other hosts. For the LOCAL protocol nothing can be
        rescanned (the path is the file or device itself): the size is only
        read from the path.

        :returns: the size in bytes the host sees now, when os-brick tells.
        :raises InvalidConnection: no device is attached for this connection.
        :raises AttachError: os-brick failed.
        """
        self._store("extend")
        if not self._record.device:
            raise InvalidConnection(
                f"connection {self.id} has no device attached to rescan", resource=self
            )
        connector = self.host_connector()
        return await self._run(self._rescan(connector, self))

    async def _rescan(self, connector: HostConnector, resource: Any) -> int | None:
        try:
            return await connector.extend_volume(self._record.device)
        except Exception as exc:
            raise AttachError(
                f"rescanning volume {self.volume_id} on this host failed at os-brick "
                f"extend_volume ({connector.protocol} protocol): {exc}",
                resource=resource,
            ) from exc

    async def device_attached(self, device: Mapping[str, Any]) -> None:
        """Record a device attached for this connection by other means (another
        tool, another host): what os-brick's ``connect_volume`` returned there.

        :param device: os-brick's device dict, with ``path``.
        :raises InvalidArgument: ``device`` is not a JSON mapping.
        :raises InvalidConnection: the connection is not ``attached`` (connected).
        """
        self._store("device_attached")
        checked = check_json_mapping(device, "device")
        if not checked:
            raise InvalidArgument("device must not be empty (use detach() to clear it)")
        self._require_status(CONNECTED, "record a device on")
        await self._run(self._persist(CONNECTED, device=checked))
