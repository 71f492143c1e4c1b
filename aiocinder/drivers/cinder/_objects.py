"""Cinder's view of aiocinder's records: database rows and versioned objects.

Cinder builds its objects (``cinder.objects.Volume``...) from database rows
with each class's ``_from_db_object``. Here the rows are made from aiocinder
records instead, so the adapter's objects (given to the driver) and the DB
shim's answers (``cinder.db.api.volume_get``...) come from one translation,
and Cinder's own code turns them into objects.

aiocinder keeps a volume's type inline (``volume_type_name``, ``extra_specs``,
``qos_specs``); Cinder wants a volume type with an id, and QoS specs with
another. Both ids are derived from the type's contents (UUID 5), so equal
types share an id, and the :class:`TypeRegistry` answers the driver's
lookups by id.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...records import ConnectionRecord, SnapshotRecord, VolumeRecord

__all__ = [
    "SNAPSHOT_FIELDS",
    "VOLUME_FIELDS",
    "Row",
    "TypeRegistry",
    "VolumeType",
    "attachment_row",
    "snapshot_row",
    "volume_row",
]

_log = logging.getLogger("aiocinder.drivers.cinder")

#: Namespace of the UUID 5 ids of volume types and QoS specs.
TYPE_NAMESPACE = uuid.UUID("1c0e9f57-4d1e-5f2a-9b39-6a6b2c1d0c11")
#: Cinder's name for the type of volumes created without one.
DEFAULT_TYPE_NAME = "__DEFAULT__"
#: The QoS consumer aiocinder's specs get unless they say ``consumer``.
DEFAULT_QOS_CONSUMER = "back-end"

#: Cinder volume fields a driver may change, and the record field each maps to.
VOLUME_FIELDS: Mapping[str, str] = {
    "provider_location": "provider_location",
    "provider_auth": "provider_auth",
    "provider_id": "provider_id",
    "metadata": "metadata",
    "admin_metadata": "admin_metadata",
    "bootable": "bootable",
    "multiattach": "multiattach",
}
#: Cinder snapshot fields a driver may change, and the record field each maps to.
SNAPSHOT_FIELDS: Mapping[str, str] = {
    "provider_location": "provider_location",
    "provider_auth": "provider_auth",
    "provider_id": "provider_id",
    "metadata": "metadata",
}

#: A connection's status, as the attach status of Cinder's attachment.
_ATTACH_STATUS = {
    "attaching": "attaching",
    "attached": "attached",
    "detaching": "attached",  # Cinder's attachment stays attached until it is gone
    "detached": "detached",
    "error_attaching": "error_attaching",
    "error_detaching": "error_detaching",
}


class Row(dict[str, Any]):
    """A database row as Cinder reads one: by key (``row["id"]``) or attribute."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _kv(mapping: Mapping[str, str]) -> list[Row]:
    """A metadata mapping as the key/value rows Cinder's models hold."""
    return [Row(key=k, value=v, deleted=False) for k, v in mapping.items()]


def _persistent(record: VolumeRecord | SnapshotRecord | ConnectionRecord) -> dict[str, Any]:
    return {"created_at": record.created_at, "updated_at": record.updated_at,
            "deleted_at": None, "deleted": False}


@dataclass(frozen=True)
class VolumeType:
    """A volume type as Cinder sees it, derived from a volume record."""

    id: str
    name: str
    extra_specs: Mapping[str, str]
    qos_specs: Mapping[str, str]
    qos_id: str | None = None
    qos_consumer: str = DEFAULT_QOS_CONSUMER
    projects: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, record: VolumeRecord) -> VolumeType:
        """The type of ``record`` (Cinder's default type when it has none)."""
        extra, qos = dict(record.extra_specs), dict(record.qos_specs)
        digest = json.dumps([record.volume_type_name, sorted(extra.items()),
                             sorted(qos.items())])
        type_id = str(uuid.uuid5(TYPE_NAMESPACE, "type:" + digest))
        name = record.volume_type_name
        if name is None:
            name = DEFAULT_TYPE_NAME if not (extra or qos) else f"aiocinder-{type_id[:8]}"
        qos_id = None
        consumer = DEFAULT_QOS_CONSUMER
        if qos:
            consumer = qos.pop("consumer", DEFAULT_QOS_CONSUMER)
            qos_id = str(uuid.uuid5(TYPE_NAMESPACE, "qos:" + digest))
        return cls(type_id, name, extra, qos, qos_id, consumer)

    def row(self, *, with_qos: bool = False) -> Row:
        """The row ``cinder.db.api.volume_type_get`` returns."""
        row = Row(
            id=self.id, name=self.name, description=None, is_public=True,
            projects=list(self.projects), extra_specs=dict(self.extra_specs),
            qos_specs_id=self.qos_id, created_at=None, updated_at=None, deleted_at=None,
            deleted=False,
        )
        if with_qos:
            row["qos_specs"] = self.qos_row()
        return row

    def qos_row(self) -> Row | None:
        """The row ``cinder.db.api.qos_specs_get`` returns (None: no QoS specs)."""
        if self.qos_id is None:
            return None
        return Row(id=self.qos_id, name=f"{self.name}-qos", consumer=self.qos_consumer,
                   specs=dict(self.qos_specs), created_at=None, updated_at=None,
                   deleted_at=None, deleted=False)


class TypeRegistry:
    """The volume types (and QoS specs) the driver has been shown, by id and name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, VolumeType] = {}
        self._by_name: dict[str, VolumeType] = {}
        self._by_qos: dict[str, VolumeType] = {}

    def add(self, volume_type: VolumeType) -> VolumeType:
        with self._lock:
            self._by_id[volume_type.id] = volume_type
            self._by_name[volume_type.name] = volume_type
            if volume_type.qos_id is not None:
                self._by_qos[volume_type.qos_id] = volume_type
        return volume_type

    def of(self, record: VolumeRecord) -> VolumeType:
        """The type of ``record``, registered."""
        return self.add(VolumeType.of(record))

    def get(self, type_id: str) -> VolumeType | None:
        with self._lock:
            return self._by_id.get(type_id)

    def by_name(self, name: str) -> VolumeType | None:
        with self._lock:
            return self._by_name.get(name)

    def by_qos(self, qos_id: str) -> VolumeType | None:
        with self._lock:
            return self._by_qos.get(qos_id)

    def all(self) -> list[VolumeType]:
        with self._lock:
            return list(self._by_id.values())


def volume_row(
    record: VolumeRecord,
    types: TypeRegistry,
    attachments: Iterable[ConnectionRecord] | None = None,
) -> Row:
    """The row of ``cinder.db.api.volume_get`` for ``record`` (with its type and,
    when given, its attachments)."""
    volume_type = types.of(record)
    connected = any(c.status in ("attached", "detaching") for c in attachments or ())
    attached = connected or record.status == "in-use"
    row = Row(
        id=record.id, _name_id=None, ec2_id=None,
        user_id=record.user_id, project_id=record.project_id, use_quota=True,
        snapshot_id=record.snapshot_id, cluster_name=None, host=record.host,
        size=record.size, availability_zone=record.availability_zone,
        status=record.status, attach_status="attached" if attached else "detached",
        migration_status=None, scheduled_at=None, launched_at=None, terminated_at=None,
        display_name=record.name, display_description=record.description,
        provider_id=record.provider_id, provider_location=record.provider_location,
        provider_auth=record.provider_auth, provider_geometry=None,
        volume_type_id=volume_type.id, source_volid=record.source_volid,
        encryption_key_id=None, consistencygroup_id=None, group_id=None,
        bootable=record.bootable, multiattach=record.multiattach,
        replication_status=None, replication_extended_status=None,
        replication_driver_data=None, previous_status=None, service_uuid=None,
        shared_targets=True,
        volume_metadata=_kv(record.metadata),
        volume_admin_metadata=_kv(record.admin_metadata),
        volume_glance_metadata=[],
        volume_type=volume_type.row(),
        **_persistent(record),
    )
    if attachments is not None:
        row["volume_attachment"] = [attachment_row(c) for c in attachments]
    return row


def snapshot_row(record: SnapshotRecord, volume: VolumeRecord | None,
                 types: TypeRegistry) -> Row:
    """The row of ``cinder.db.api.snapshot_get`` for ``record``."""
    type_id = types.of(volume).id if volume is not None else None
    return Row(
        id=record.id, user_id=record.user_id, project_id=record.project_id, use_quota=True,
        volume_id=record.volume_id, cgsnapshot_id=None, group_snapshot_id=None,
        status=record.status, progress="100%" if record.status == "available" else "0%",
        volume_size=record.volume_size, display_name=record.name,
        display_description=record.description, encryption_key_id=None,
        volume_type_id=type_id, provider_location=record.provider_location,
        provider_id=record.provider_id, provider_auth=record.provider_auth,
        snapshot_metadata=_kv(record.metadata),
        **_persistent(record),
    )


def attachment_row(record: ConnectionRecord) -> Row:
    """The row of a volume attachment for a connection record."""
    connector = dict(record.connector_info)
    return Row(
        id=record.id, volume_id=record.volume_id, instance_uuid=record.instance_uuid,
        attached_host=connector.get("host"), mountpoint=connector.get("mountpoint"),
        attach_time=record.created_at, detach_time=None,
        attach_status=_ATTACH_STATUS.get(record.status, "attaching"),
        attach_mode=record.attach_mode,
        # Cinder stores both as JSON text
        connection_info=json.dumps(dict(record.conn_info)) if record.conn_info else None,
        connector=json.dumps(connector) if connector else None,
        **_persistent(record),
    )


def record_changes(cinder_values: Mapping[str, Any], fields: Mapping[str, str],
                   what: str) -> dict[str, Any]:
    """Cinder field values as record field changes; other fields are left out (logged)."""
    changes: dict[str, Any] = {}
    ignored = []
    for key, value in cinder_values.items():
        name = fields.get(key)
        if name is None:
            ignored.append(key)
            continue
        if isinstance(value, Mapping):
            value = {str(k): str(v) for k, v in value.items() if v is not None}
        changes[name] = value
    if ignored:
        _log.debug("not keeping Cinder fields %s of %s", sorted(ignored), what)
    return changes
