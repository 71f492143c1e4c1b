"""The Cinder database calls of drivers, answered from aiocinder's store.

Cinder drivers and Cinder's own objects (``Volume.get_by_id``, ``save()``,
lazy loads such as ``snapshot.volume`` or ``volume.volume_attachment``) call
the functions of the ``cinder.db.api`` module. While Cinder backends run,
:class:`DatabasePatch` replaces those functions in that module with the
methods of a :class:`DatabaseShim`, and puts the originals back when the last
Cinder backend stops. Functions the shim does not answer are replaced too,
by stubs that raise :class:`NotImplementedError` naming the call, so nothing
ever reaches Cinder's SQL database code.

Every answer comes from the aiocinder store, on the event loop: the shim
runs in the driver's thread and hands each call to the loop with
``anyio.from_thread.run(..., token=...)``, the token captured when the first
Cinder backend started (so threads the driver starts itself reach the loop
too). It calls the store directly, never through a backend's limiter: a
driver call that holds the only slot of a backend limited to one call can
still read and write metadata.
"""

from __future__ import annotations

import inspect
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
from cinder import exception

from ...exceptions import ConflictError
from ...persistence.base import PersistenceStore
from ...records import ConnectionRecord, SnapshotRecord, VolumeRecord, utcnow
from ._objects import (
    SNAPSHOT_FIELDS,
    VOLUME_FIELDS,
    Row,
    TypeRegistry,
    attachment_row,
    record_changes,
    snapshot_row,
    volume_row,
)

__all__ = ["DatabasePatch", "DatabaseShim", "LoopBridge"]

T = TypeVar("T")

_log = logging.getLogger("aiocinder.drivers.cinder")
_RETRIES = 20


class LoopBridge:
    """Runs coroutine functions on one event loop, from any other thread.

    :param token: the loop's anyio token.
    :param loop_thread: the ident of the loop's thread.
    """

    def __init__(self, token: anyio.lowlevel.EventLoopToken, loop_thread: int) -> None:
        self.token = token
        self.loop_thread = loop_thread

    @classmethod
    def capture(cls) -> LoopBridge:
        """The bridge to the loop of the calling anyio worker thread."""
        token, ident = anyio.from_thread.run_sync(_token_and_thread)
        return cls(token, ident)

    def run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await func(*args)`` on the loop; block this thread until it is done.

        :raises RuntimeError: called on the loop's own thread (it would deadlock).
        """
        if threading.get_ident() == self.loop_thread:
            raise RuntimeError(
                "a Cinder database call was made on the event loop thread; Cinder "
                "driver code must run in worker threads"
            )

        async def call() -> T:
            return await func(*args)

        return anyio.from_thread.run(call, token=self.token)


def _token_and_thread() -> tuple[anyio.lowlevel.EventLoopToken, int]:
    return anyio.lowlevel.current_token(), threading.get_ident()


def _backend_of(host: str) -> str:
    """The backend name in a Cinder host string (``host@backend#pool``)."""
    return host.partition("@")[2].partition("#")[0]


def _on_host(record_host: str | None, host: str) -> bool:
    """Cinder's host match: ``host`` itself, or one of its pools when it names none."""
    if not record_host:
        return False
    return record_host == host or ("#" not in host and record_host.startswith(host + "#"))


def _filtered(rows: Iterable[Row], filters: Mapping[str, Any] | None) -> list[Row]:
    if not filters:
        return list(rows)
    out = []
    for row in rows:
        for key, wanted in filters.items():
            value = row.get(key)
            if isinstance(wanted, list | tuple | set | frozenset):
                if value not in wanted:
                    break
            elif value != wanted:
                break
        else:
            out.append(row)
    return out


def merge_metadata(current: Mapping[str, str], metadata: Mapping[str, Any], delete: bool,
                   add: bool = True, update: bool = True) -> dict[str, str]:
    """Cinder's metadata update: ``delete`` drops keys absent from ``metadata``;
    ``add`` and ``update`` allow new and changed keys."""
    merged = {k: v for k, v in current.items() if not delete or k in metadata}
    for key, value in metadata.items():
        if (key in current and update) or (key not in current and add):
            merged[str(key)] = str(value)
    return merged


class DatabaseShim:
    """The ``cinder.db.api`` functions drivers use, answered from an aiocinder store.

    Methods have the names and signatures of the ``cinder.db.api`` functions
    they stand for, and return rows shaped like Cinder's.

    :param store: the aiocinder metadata store.
    :param bridge: the way back to the store's event loop.
    :param types: the volume types the drivers have been shown.
    :param project_id: written into records the driver has made.
    :param user_id: likewise.
    """

    def __init__(self, store: PersistenceStore, bridge: LoopBridge, types: TypeRegistry, *,
                 project_id: str | None = None, user_id: str | None = None) -> None:
        self.store = store
        self.bridge = bridge
        self.types = types
        self.project_id = project_id
        self.user_id = user_id

    # -- plumbing ----------------------------------------------------------------

    def _run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.bridge.run(func, *args)

    async def _volume(self, volume_id: str) -> VolumeRecord:
        records = await self.store.get_volumes(volume_id=volume_id)
        if not records:
            raise exception.VolumeNotFound(volume_id=volume_id)
        return records[0]

    async def _snapshot(self, snapshot_id: str) -> SnapshotRecord:
        records = await self.store.get_snapshots(snapshot_id=snapshot_id)
        if not records:
            raise exception.SnapshotNotFound(snapshot_id=snapshot_id)
        return records[0]

    async def _volume_rows(self, records: list[VolumeRecord]) -> list[Row]:
        connections = await self.store.get_connections_by_volume_ids([r.id for r in records])
        by_volume: dict[str, list[ConnectionRecord]] = {r.id: [] for r in records}
        for connection in connections:
            by_volume.setdefault(connection.volume_id, []).append(connection)
        return [volume_row(r, self.types, by_volume[r.id]) for r in records]

    async def _snapshot_rows(self, records: list[SnapshotRecord]) -> list[Row]:
        volumes = {v.id: v for v in await self.store.get_volumes_by_ids(
            {r.volume_id for r in records})}
        return [snapshot_row(r, volumes.get(r.volume_id), self.types) for r in records]

    async def _change_volume(
        self, volume_id: str, change: Callable[[VolumeRecord], dict[str, Any]]
    ) -> VolumeRecord:
        """Apply ``change(record)`` to the stored volume (compare-and-swap, retried)."""
        for _ in range(_RETRIES):
            record = await self._volume(volume_id)
            changes = change(record)
            if not changes:
                return record
            try:
                return await self.store.set_volume(record.replace(**changes))
            except ConflictError:
                continue
        raise ConflictError(f"volume {volume_id} kept changing under a Cinder driver's update")

    async def _change_snapshot(
        self, snapshot_id: str, change: Callable[[SnapshotRecord], dict[str, Any]]
    ) -> SnapshotRecord:
        for _ in range(_RETRIES):
            record = await self._snapshot(snapshot_id)
            changes = change(record)
            if not changes:
                return record
            try:
                return await self.store.set_snapshot(record.replace(**changes))
            except ConflictError:
                continue
        raise ConflictError(f"snapshot {snapshot_id} kept changing under a Cinder driver's update")

    # -- generic -------------------------------------------------------------------

    def get_by_id(self, context: Any, model: Any, id: str, *args: Any, **kwargs: Any) -> Row:
        """What Cinder's ``Object.get_by_id`` reads, by model."""
        getter = {
            "Volume": self.volume_get,
            "Snapshot": self.snapshot_get,
            "VolumeType": self.volume_type_get,
            "QualityOfServiceSpecs": self.qos_specs_get,
            "VolumeAttachment": self.volume_attachment_get,
        }.get(getattr(model, "__name__", ""))
        if getter is None:
            raise NotImplementedError(
                f"aiocinder does not keep Cinder {getattr(model, '__name__', model)} objects"
            )
        return getter(context, id)

    def resource_exists(self, context: Any, model: Any, resource_id: str) -> bool:
        try:
            self.get_by_id(context, model, resource_id)
        except exception.NotFound:
            return False
        return True

    def is_backend_frozen(self, context: Any, host: str, cluster_name: str | None) -> bool:
        return False

    # -- volumes ---------------------------------------------------------------------

    def volume_get(self, context: Any, volume_id: str) -> Row:
        async def get() -> Row:
            return (await self._volume_rows([await self._volume(volume_id)]))[0]

        return self._run(get)

    def volume_get_all_by_host(self, context: Any, host: str,
                               filters: Mapping[str, Any] | None = None) -> list[Row]:
        if not host:
            return []

        async def get() -> list[Row]:
            records = await self.store.get_volumes(backend_name=_backend_of(host))
            return await self._volume_rows([r for r in records if _on_host(r.host, host)])

        return _filtered(self._run(get), filters)

    def volume_create(self, context: Any, values: Mapping[str, Any]) -> Row:
        """A volume the driver makes for itself (a temporary one): stored as a
        record of its backend, so it is never without one."""
        host = values.get("host") or ""
        volume_type = self.types.get(values.get("volume_type_id") or "")
        record = VolumeRecord(
            id=values.get("id") or str(uuid.uuid4()),
            backend_name=_backend_of(host),
            size=int(values.get("size") or 1),
            status=values.get("status") or "creating",
            name=values.get("display_name"),
            description=values.get("display_description"),
            host=host or None,
            availability_zone=values.get("availability_zone"),
            volume_type_name=None if volume_type is None else volume_type.name,
            extra_specs={} if volume_type is None else dict(volume_type.extra_specs),
            qos_specs={} if volume_type is None else dict(volume_type.qos_specs),
            metadata=dict(values.get("metadata") or {}),
            admin_metadata=dict(values.get("admin_metadata") or {}),
            provider_location=values.get("provider_location"),
            provider_auth=values.get("provider_auth"),
            provider_id=values.get("provider_id"),
            source_volid=values.get("source_volid"),
            snapshot_id=values.get("snapshot_id"),
            project_id=values.get("project_id") or self.project_id,
            user_id=values.get("user_id") or self.user_id,
            bootable=bool(values.get("bootable")),
            multiattach=bool(values.get("multiattach")),
        )

        async def create() -> Row:
            return (await self._volume_rows([await self.store.set_volume(record)]))[0]

        return self._run(create)

    def volume_destroy(self, context: Any, volume_id: str) -> dict[str, Any]:
        self._run(self.store.delete_volume, volume_id)
        return {"status": "deleted", "deleted": True, "deleted_at": utcnow(),
                "migration_status": None}

    def volume_update(self, context: Any, volume_id: str, values: Mapping[str, Any]) -> Row:
        changes = record_changes(values, VOLUME_FIELDS, f"volume {volume_id}")
        record = self._run(self._change_volume, volume_id, lambda _: changes)
        return volume_row(record, self.types)

    def volume_metadata_get(self, context: Any, volume_id: str) -> dict[str, str]:
        return dict(self._run(self._volume, volume_id).metadata)

    def volume_metadata_update(self, context: Any, volume_id: str, metadata: Mapping[str, Any],
                               delete: bool, meta_type: Any = None) -> dict[str, str]:
        record = self._run(self._change_volume, volume_id, lambda r: {
            "metadata": merge_metadata(r.metadata, metadata, delete)})
        return dict(record.metadata)

    def volume_metadata_delete(self, context: Any, volume_id: str, key: str,
                               meta_type: Any = None) -> None:
        self._run(self._change_volume, volume_id, lambda r: {
            "metadata": {k: v for k, v in r.metadata.items() if k != key}}
            if key in r.metadata else {})

    def volume_admin_metadata_get(self, context: Any, volume_id: str) -> dict[str, str]:
        return dict(self._run(self._volume, volume_id).admin_metadata)

    def volume_admin_metadata_update(self, context: Any, volume_id: str,
                                     metadata: Mapping[str, Any], delete: bool,
                                     add: bool = True, update: bool = True) -> dict[str, str]:
        record = self._run(self._change_volume, volume_id, lambda r: {
            "admin_metadata": merge_metadata(r.admin_metadata, metadata, delete, add, update)})
        return dict(record.admin_metadata)

    def volume_admin_metadata_delete(self, context: Any, volume_id: str, key: str) -> None:
        self._run(self._change_volume, volume_id, lambda r: {
            "admin_metadata": {k: v for k, v in r.admin_metadata.items() if k != key}}
            if key in r.admin_metadata else {})

    def volume_glance_metadata_get(self, context: Any, volume_id: str) -> list[Row]:
        raise exception.GlanceMetadataNotFound(id=volume_id)

    def volume_encryption_metadata_get(self, context: Any, volume_id: str) -> dict[str, Any]:
        self._run(self._volume, volume_id)
        return {"encryption_key_id": None}

    def volume_type_encryption_get(self, context: Any, volume_type_id: str,
                                   *args: Any, **kwargs: Any) -> None:
        return None

    def image_volume_cache_get_by_volume_id(self, context: Any, volume_id: str) -> None:
        return None

    # -- attachments (aiocinder's connections) ------------------------------------------

    def volume_attachment_get(self, context: Any, attachment_id: str) -> Row:
        async def get() -> list[ConnectionRecord]:
            return await self.store.get_connections(connection_id=attachment_id)

        records = self._run(get)
        if not records:
            raise exception.VolumeAttachmentNotFound(filter=f"attachment_id = {attachment_id}")
        return attachment_row(records[0])

    def volume_attachment_get_all_by_volume_id(self, context: Any, volume_id: str) -> list[Row]:
        async def get() -> list[ConnectionRecord]:
            return await self.store.get_connections(volume_id=volume_id)

        return [attachment_row(r) for r in self._run(get)]

    def attachment_specs_get(self, context: Any, attachment_id: str) -> dict[str, str]:
        return {}  # aiocinder keeps the connector on the connection itself

    def attachment_specs_delete(self, context: Any, attachment_id: str, key: str) -> None:
        return None

    # -- snapshots -------------------------------------------------------------------------

    def snapshot_get(self, context: Any, snapshot_id: str) -> Row:
        async def get() -> Row:
            return (await self._snapshot_rows([await self._snapshot(snapshot_id)]))[0]

        return self._run(get)

    def snapshot_get_all_for_volume(self, context: Any, volume_id: str) -> list[Row]:
        async def get() -> list[Row]:
            return await self._snapshot_rows(await self.store.get_snapshots(volume_id=volume_id))

        return self._run(get)

    def snapshot_get_latest_for_volume(self, context: Any, volume_id: str) -> Row:
        rows = self.snapshot_get_all_for_volume(context, volume_id)
        if not rows:
            raise exception.VolumeSnapshotNotFound(volume_id=volume_id)
        return max(rows, key=lambda row: (row["created_at"], row["id"]))

    def snapshot_get_all_by_host(self, context: Any, host: str,
                                 filters: Mapping[str, Any] | None = None) -> list[Row]:
        if not host:
            return []

        async def get() -> list[Row]:
            snapshots = await self.store.get_snapshots(backend_name=_backend_of(host))
            volumes = {v.id: v for v in await self.store.get_volumes_by_ids(
                {s.volume_id for s in snapshots})}
            return [snapshot_row(s, volumes[s.volume_id], self.types) for s in snapshots
                    if s.volume_id in volumes and _on_host(volumes[s.volume_id].host, host)]

        return _filtered(self._run(get), filters)

    def snapshot_create(self, context: Any, values: Mapping[str, Any]) -> Row:
        """A snapshot the driver makes for itself (the NFS driver's temporary
        snapshot when cloning): stored as a record, so it is never without one."""
        volume_id = values["volume_id"]

        async def create() -> Row:
            volume = await self._volume(volume_id)
            record = SnapshotRecord(
                id=values.get("id") or str(uuid.uuid4()),
                volume_id=volume_id,
                backend_name=volume.backend_name,
                volume_size=int(values.get("volume_size") or volume.size),
                status=values.get("status") or "creating",
                name=values.get("display_name"),
                description=values.get("display_description"),
                metadata=dict(values.get("metadata") or {}),
                provider_location=values.get("provider_location"),
                provider_auth=values.get("provider_auth"),
                provider_id=values.get("provider_id"),
                project_id=values.get("project_id") or self.project_id,
                user_id=values.get("user_id") or self.user_id,
            )
            return snapshot_row(await self.store.set_snapshot(record), volume, self.types)

        return self._run(create)

    def snapshot_destroy(self, context: Any, snapshot_id: str) -> dict[str, Any]:
        self._run(self.store.delete_snapshot, snapshot_id)
        return {"status": "deleted", "deleted": True, "deleted_at": utcnow()}

    def snapshot_update(self, context: Any, snapshot_id: str, values: Mapping[str, Any]) -> Row:
        changes = record_changes(values, SNAPSHOT_FIELDS, f"snapshot {snapshot_id}")
        record = self._run(self._change_snapshot, snapshot_id, lambda _: changes)
        return snapshot_row(record, None, self.types)

    def snapshot_metadata_get(self, context: Any, snapshot_id: str) -> dict[str, str]:
        return dict(self._run(self._snapshot, snapshot_id).metadata)

    def snapshot_metadata_update(self, context: Any, snapshot_id: str,
                                 metadata: Mapping[str, Any], delete: bool) -> dict[str, str]:
        record = self._run(self._change_snapshot, snapshot_id, lambda r: {
            "metadata": merge_metadata(r.metadata, metadata, delete)})
        return dict(record.metadata)

    def snapshot_metadata_delete(self, context: Any, snapshot_id: str, key: str) -> None:
        self._run(self._change_snapshot, snapshot_id, lambda r: {
            "metadata": {k: v for k, v in r.metadata.items() if k != key}}
            if key in r.metadata else {})

    # -- volume types and QoS specs (derived from volumes; see _objects) ---------------------

    def volume_type_get(self, context: Any, id: str, inactive: bool = False,
                        expected_fields: Iterable[str] | None = None) -> Row:
        volume_type = self.types.get(id)
        if volume_type is None:
            raise exception.VolumeTypeNotFound(volume_type_id=id)
        return volume_type.row(with_qos="qos_specs" in (expected_fields or ()))

    def volume_type_get_by_name(self, context: Any, name: str) -> Row:
        volume_type = self.types.by_name(name)
        if volume_type is None:
            raise exception.VolumeTypeNotFoundByName(volume_type_name=name)
        return volume_type.row()

    def volume_type_extra_specs_get(self, context: Any, volume_type_id: str) -> dict[str, str]:
        return dict(self.volume_type_get(context, volume_type_id)["extra_specs"])

    def volume_type_qos_specs_get(self, context: Any, type_id: str) -> dict[str, Any]:
        volume_type = self.types.get(type_id)
        if volume_type is None:
            raise exception.VolumeTypeNotFound(volume_type_id=type_id)
        return {"qos_specs": volume_type.qos_row()}

    def qos_specs_get(self, context: Any, qos_specs_id: str, inactive: bool = False) -> Row:
        volume_type = self.types.by_qos(qos_specs_id)
        row = volume_type.qos_row() if volume_type is not None else None
        if row is None:
            raise exception.QoSSpecsNotFound(specs_id=qos_specs_id)
        return row

    def project_default_volume_type_get(self, context: Any, project_id: str | None = None
                                        ) -> None:
        return None


def _takes_context(func: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "context"


def _unanswered(name: str) -> Callable[..., Any]:
    def stub(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"cinder.db.api.{name}() is not answered by aiocinder: it keeps volumes, "
            "snapshots, connections and their types, not the rest of Cinder's database"
        )

    stub.__name__ = stub.__qualname__ = name
    return stub


class DatabasePatch:
    """Puts a :class:`DatabaseShim` in place of ``cinder.db.api``'s functions, and back.

    Every public function of ``cinder.db.api`` whose first parameter is
    ``context`` is replaced: by the shim's method of the same name, or by a
    stub raising :class:`NotImplementedError`.
    """

    def __init__(self) -> None:
        self._originals: dict[str, Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self._originals)

    def install(self, shim: DatabaseShim) -> None:
        from cinder.db import api

        if self._originals:
            raise RuntimeError("the Cinder database shim is already installed")
        originals = {
            name: func for name, func in vars(api).items()
            if not name.startswith("_") and inspect.isfunction(func)
            and func.__module__ == api.__name__ and _takes_context(func)
        }
        for name in originals:
            setattr(api, name, getattr(shim, name, None) or _unanswered(name))
        self._originals = originals
        _log.debug("answering %d cinder.db.api functions from aiocinder's store",
                   len(originals))

    def remove(self) -> None:
        from cinder.db import api

        originals, self._originals = self._originals, {}
        for name, func in originals.items():
            setattr(api, name, func)
