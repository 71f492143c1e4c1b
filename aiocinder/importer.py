"""Import what cinderlib left behind into an aiocinder store.

cinderlib users hold their data in one of two forms, and both are read here
without cinderlib, Cinder or SQLAlchemy:

* a cinderlib ``db`` persistence database: Cinder's schema in a SQLite file
  (read with :mod:`sqlite3` in a worker thread, read-only) or in PostgreSQL
  (read with asyncpg, in one read-only transaction);
* cinderlib's JSON serialization: ``cinderlib.dumps()``, ``backend.dumps``,
  ``vol.jsons``, ``vol.dumps`` and the like, as text, as parsed data, or in a
  file.

Everything live comes over: volumes (with their volume type's name, extra
specs and QoS specs, metadata, admin metadata and provider fields),
snapshots, connections (connector info, connection info, the saved device,
attach mode) and the key-value store. Ids are kept, and so are backend names,
which cinderlib keeps only inside a volume's ``host``
(``host@backend#pool``). Deleted resources (soft-deleted rows, ``deleted``
entries) are left out. No driver is loaded: the backends' drivers need not be
importable here.

The whole source is read and checked before anything is written: malformed
input raises :class:`~aiocinder.exceptions.InvalidArgument` and the store is
left as it was. Records whose id is already in the store are left alone
(counted as already present), or replaced with ``replace=True``, so running
an import twice creates nothing twice.

The data carries secrets (CHAP credentials in ``provider_auth`` and in the
connection info). They are imported as data, since connecting needs them, but
no message of this module ever shows a field's value.
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Final, TypeVar

import anyio.to_thread

from .exceptions import AlreadyExists, InvalidArgument, PersistenceError
from .persistence.base import PersistenceStore
from .records import (
    CONNECTION_STATUSES,
    SNAPSHOT_STATUSES,
    VOLUME_STATUSES,
    ConnectionRecord,
    KeyValue,
    SnapshotRecord,
    VolumeRecord,
)
from .resources._base import _ID_RE
from .resources._runtime import runtime

__all__ = ["ImportCounts", "ImportTally", "import_cinderlib"]

#: The table where cinderlib keeps its key-value store.
KEY_VALUE_TABLE: Final = "cinderlib_persistence_key_value"
#: Cinder's tables the import reads; the first three must exist.
TABLES: Final = (
    "volumes",
    "snapshots",
    "volume_attachment",
    "volume_types",
    "volume_type_extra_specs",
    "quality_of_service_specs",
    "volume_metadata",
    "volume_admin_metadata",
    "snapshot_metadata",
    KEY_VALUE_TABLE,
)
_REQUIRED_TABLES: Final = TABLES[:3]
#: Refuse JSON larger than this (bytes).
MAX_JSON: Final = 256 << 20
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_INVALID: Final = object()
_BATCH: Final = 500

#: Cinder's attachment ``attach_status`` -> aiocinder's connection status.
#: cinderlib leaves it NULL on live connections (see :func:`_connection_status`).
_ATTACH_STATUS: Final[Mapping[str, str]] = {
    "attached": "attached",
    "attaching": "attaching",
    "reserved": "attaching",
    "detaching": "detaching",
    "detached": "detached",
    "error_attaching": "error_attaching",
    "error_detaching": "error_detaching",
}
assert set(_ATTACH_STATUS.values()) <= CONNECTION_STATUSES


@dataclass(frozen=True, slots=True)
class ImportTally:
    """What an import did with one kind of record."""

    #: Records that were not in the store and were written.
    created: int = 0
    #: Records whose id was already in the store, left as they were.
    already_present: int = 0
    #: Records whose id was already in the store, overwritten (``replace=True``).
    replaced: int = 0

    @property
    def total(self) -> int:
        """Every live record of this kind the source held."""
        return self.created + self.already_present + self.replaced


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportCounts:
    """The result of :func:`import_cinderlib`."""

    #: The source, as shown to people (a DSN without its password).
    source: str
    #: The backend names the imported volumes belong to, sorted.
    backends: tuple[str, ...]
    #: Live volumes.
    volumes: ImportTally
    #: Live snapshots of live volumes.
    snapshots: ImportTally
    #: Live connections of live volumes.
    connections: ImportTally
    #: Entries of cinderlib's key-value store (databases only: JSON has none).
    key_values: ImportTally
    #: Deleted resources found in the source and left out (soft-deleted rows,
    #: ``deleted`` status, deleted entries in JSON).
    deleted: int = 0
    #: Live snapshots and connections of volumes that are not live, left out.
    orphaned: int = 0

    @property
    def created(self) -> int:
        """Records written that were not in the store before, of every kind."""
        return sum(t.created for t in self._tallies())

    @property
    def already_present(self) -> int:
        """Records left alone because their id was in the store already."""
        return sum(t.already_present for t in self._tallies())

    def _tallies(self) -> tuple[ImportTally, ...]:
        return (self.volumes, self.snapshots, self.connections, self.key_values)


# -- what a source yields -------------------------------------------------------


@dataclass
class _Found:
    """The records read from a source, checked, not yet written."""

    source: str
    volumes: dict[str, VolumeRecord] = field(default_factory=dict)
    snapshots: dict[str, SnapshotRecord] = field(default_factory=dict)
    connections: dict[str, ConnectionRecord] = field(default_factory=dict)
    key_values: dict[str, str | None] = field(default_factory=dict)
    deleted: int = 0
    orphaned: int = 0
    #: JSON only: snapshots and connections whose volume is not in the data;
    #: it must be in the store. (record, where)
    pending: list[tuple[SnapshotRecord | ConnectionRecord, str]] = field(default_factory=list)

    def error(self, where: str, problem: str) -> InvalidArgument:
        return InvalidArgument(f"{self.source}: {where}: {problem}")


R = TypeVar("R", VolumeRecord, SnapshotRecord, ConnectionRecord)
T = TypeVar("T")


def _add(found: _Found, table: dict[str, R], record: R, where: str) -> None:
    stored = table.get(record.id)
    if stored is not None and stored != record:
        raise found.error(where, f"id {record.id!r} appears twice, with different contents")
    table[record.id] = record


# -- field checks (messages name fields, never their values) ----------------------


def _text(found: _Found, fields: Mapping[str, Any], name: str, where: str) -> str | None:
    value = fields.get(name)
    if value is None or isinstance(value, str):
        return value
    raise found.error(where, f"{name} must be a string, not {type(value).__name__}")


def _id(found: _Found, fields: Mapping[str, Any], name: str, where: str) -> str:
    """A resource id, held to aiocinder's rule: storage names are made from ids."""
    value = _text(found, fields, name, where)
    if not value:
        raise found.error(where, f"{name} is missing")
    if not _ID_RE.fullmatch(value):
        raise found.error(where, f"{name} {value!r} is not an id aiocinder accepts (1 to 255 "
                                 "letters, digits, '.', '_' or '-', starting with a letter "
                                 "or digit)")
    return value


def _key(found: _Found, fields: Mapping[str, Any], where: str) -> str:
    value = _text(found, fields, "key", where)
    if not value:
        raise found.error(where, "key is missing")
    return value


def _int(found: _Found, value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise found.error(where, f"{name} must be a whole number of GiB >= 1")
    return value


def _flag(found: _Found, value: Any, name: str, where: str) -> bool:
    """Cinder's booleans: True/False, or 0/1 in SQLite; NULL reads as false."""
    if value is None:
        return False
    if isinstance(value, bool | int) and value in (0, 1):
        return bool(value)
    raise found.error(where, f"{name} must be a boolean (0 or 1)")


def _deleted(found: _Found, fields: Mapping[str, Any], where: str) -> bool:
    value = fields.get("deleted", False)
    if isinstance(value, bool | int) and value in (0, 1):
        return bool(value)
    raise found.error(where, "deleted must be a boolean (0 or 1)")


def _stamp(found: _Found, value: Any, name: str, where: str, *, required: bool) -> str | None:
    """A Cinder timestamp (naive UTC, text in SQLite and JSON) as ISO 8601 with offset."""
    if value is None or value == "":
        if required:
            raise found.error(where, f"{name} is missing")
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = _INVALID  # raised below, not chained to an error quoting the text
    if value is _INVALID:
        raise found.error(where, f"{name} is not a date and time")
    if not isinstance(value, datetime):
        raise found.error(where, f"{name} must be a date and time")
    stamp: datetime = value
    stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    return stamp.isoformat()


def _object(found: _Found, value: Any, name: str, where: str) -> Mapping[str, Any] | None:
    """A JSON object held as text (a database column) or already parsed (JSON)."""
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            # Raised below: a JSONDecodeError holds the whole text, secrets and all.
            value = _INVALID
    if value is _INVALID:
        raise found.error(where, f"{name} is not valid JSON")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise found.error(where, f"{name} must be a JSON object")
    return value


def _strings(found: _Found, value: Any, name: str, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise found.error(where, f"{name} must be an object of strings")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise found.error(where, f"{name} must map strings to strings")
    return dict(value)


def _backend_from_host(host: str | None) -> str | None:
    """The backend name in Cinder's ``host@backend#pool``, as cinderlib reads it."""
    if not host:
        return None
    return host.split("@")[-1].split("#")[0] or None


def _volume_of(found: _Found, fields: Mapping[str, Any]) -> VolumeRecord | None:
    """The volume found so far that ``fields["volume_id"]`` names."""
    volume_id = fields.get("volume_id")
    return found.volumes.get(volume_id) if isinstance(volume_id, str) else None


def _parse(found: _Found, cls: type[R], data: dict[str, Any], where: str) -> R:
    try:
        return cls.parse(data)
    except ValueError as exc:
        problem = str(exc)
    raise found.error(where, problem)


# -- Cinder's fields -> records ---------------------------------------------------
#
# A database row and an OVO primitive's data carry the same Cinder field names,
# so one function per resource serves both sources.


def _volume(
    found: _Found,
    fields: Mapping[str, Any],
    where: str,
    *,
    backend_name: str | None,
    volume_type: tuple[str | None, Any, Any],
    metadata: Any,
    admin_metadata: Any,
) -> VolumeRecord | None:
    """A volume record, or None when the volume is deleted."""
    vid = _id(found, fields, "id", where)
    if _gone(found, fields, where, "status"):
        return None
    host = _text(found, fields, "host", where)
    backend_name = backend_name or _backend_from_host(host)
    if not backend_name:
        raise found.error(where, "no backend name: host is not 'host@backend#pool'")
    if "/" in backend_name:
        raise found.error(where, f"backend name {backend_name!r} has a '/', which aiocinder "
                                 "refuses")
    if fields.get("_name_id"):
        raise found.error(where, "_name_id is set (a migrated volume): its storage name is "
                                 "not derived from its id, which aiocinder cannot represent")
    status = _text(found, fields, "status", where)
    if status not in VOLUME_STATUSES:
        raise found.error(where, f"unknown volume status {status!r}")
    type_name, extra_specs, qos_specs = volume_type
    data = {
        "id": vid,
        "backend_name": backend_name,
        "size": _int(found, fields.get("size"), "size", where),
        "status": status,
        "name": _text(found, fields, "display_name", where),
        "description": _text(found, fields, "display_description", where),
        "host": host,
        "availability_zone": _text(found, fields, "availability_zone", where),
        "volume_type_name": type_name,
        "extra_specs": _strings(found, extra_specs, "extra_specs", where),
        "qos_specs": _strings(found, qos_specs, "qos_specs", where),
        "metadata": _strings(found, metadata, "metadata", where),
        "admin_metadata": _strings(found, admin_metadata, "admin_metadata", where),
        "provider_location": _text(found, fields, "provider_location", where),
        "provider_auth": _text(found, fields, "provider_auth", where),
        "provider_id": _text(found, fields, "provider_id", where),
        "source_volid": _text(found, fields, "source_volid", where),
        "snapshot_id": _text(found, fields, "snapshot_id", where),
        "project_id": _text(found, fields, "project_id", where),
        "user_id": _text(found, fields, "user_id", where),
        "bootable": _flag(found, fields.get("bootable"), "bootable", where),
        "multiattach": _flag(found, fields.get("multiattach"), "multiattach", where),
        "created_at": _stamp(found, fields.get("created_at"), "created_at", where,
                             required=True),
        "updated_at": _stamp(found, fields.get("updated_at"), "updated_at", where,
                             required=False),
    }
    return _parse(found, VolumeRecord, data, where)


def _snapshot(
    found: _Found,
    fields: Mapping[str, Any],
    where: str,
    *,
    backend_name: str,
    volume_size: int | None,
    metadata: Any,
) -> SnapshotRecord | None:
    """A snapshot record, or None when the snapshot is deleted.

    cinderlib keeps the snapshot's backend name in ``progress``; the caller
    passes its volume's backend name instead, which is the same for any
    snapshot cinderlib made and the only one aiocinder can work with.
    """
    sid = _id(found, fields, "id", where)
    if _gone(found, fields, where, "status"):
        return None
    status = _text(found, fields, "status", where)
    if status not in SNAPSHOT_STATUSES:
        raise found.error(where, f"unknown snapshot status {status!r}")
    size = fields.get("volume_size")
    if size is None and volume_size is not None:
        size = volume_size  # older rows: the volume's size
    data = {
        "id": sid,
        "volume_id": _id(found, fields, "volume_id", where),
        "backend_name": backend_name,
        "volume_size": _int(found, size, "volume_size", where),
        "status": status,
        "name": _text(found, fields, "display_name", where),
        "description": _text(found, fields, "display_description", where),
        "metadata": _strings(found, metadata, "metadata", where),
        "provider_location": _text(found, fields, "provider_location", where),
        "provider_auth": _text(found, fields, "provider_auth", where),
        "provider_id": _text(found, fields, "provider_id", where),
        "project_id": _text(found, fields, "project_id", where),
        "user_id": _text(found, fields, "user_id", where),
        "created_at": _stamp(found, fields.get("created_at"), "created_at", where,
                             required=True),
        "updated_at": _stamp(found, fields.get("updated_at"), "updated_at", where,
                             required=False),
    }
    return _parse(found, SnapshotRecord, data, where)


def _connection_status(found: _Found, attach_status: Any, connected: bool, where: str) -> str:
    """aiocinder's status for a Cinder attachment.

    cinderlib never writes ``attach_status`` (it stays NULL) and kept its
    connections' status in memory only; a connection row exists once the
    driver's ``initialize_connection`` answered, so a row with connection info
    is ``attached``, and one without is an attempt that did not finish
    (``error_attaching``: aiocinder can still disconnect it to clean up).
    """
    if attach_status is None or attach_status == "attached":
        return "attached" if connected else "error_attaching"
    if isinstance(attach_status, str) and attach_status in _ATTACH_STATUS:
        return _ATTACH_STATUS[attach_status]
    raise found.error(where, f"unknown attach_status {attach_status!r}")


def _connection(
    found: _Found,
    fields: Mapping[str, Any],
    where: str,
    *,
    backend_name: str,
    project_id: str | None,
    user_id: str | None,
) -> ConnectionRecord | None:
    """A connection record from a ``volume_attachment`` row (or a
    VolumeAttachment OVO), or None when it is deleted.

    cinderlib keeps its whole state in ``connection_info``:
    ``{"conn": <connection info>, "connector": <connector dict>, "device":
    <os-brick device>}``; the ``connector`` column is a second copy of the
    connector, used only when ``connection_info`` has none.
    """
    cid = _id(found, fields, "id", where)
    if _gone(found, fields, where, "attach_status"):
        return None
    attach_status = fields.get("attach_status")
    info = _object(found, fields.get("connection_info"), "connection_info", where) or {}
    conn_info = _object(found, info.get("conn"), "connection_info.conn", where) or {}
    connector = (_object(found, info.get("connector"), "connection_info.connector", where)
                 or _object(found, fields.get("connector"), "connector", where) or {})
    device = _object(found, info.get("device"), "connection_info.device", where)
    data_info = conn_info.get("data")
    mode = _text(found, fields, "attach_mode", where)
    if mode is None and isinstance(data_info, Mapping):
        mode = data_info.get("access_mode")
    mode = mode or "rw"
    if mode not in ("rw", "ro"):
        raise found.error(where, "attach_mode must be 'rw' or 'ro'")
    data = {
        "id": cid,
        "volume_id": _id(found, fields, "volume_id", where),
        "backend_name": backend_name,
        "status": _connection_status(found, attach_status, bool(conn_info), where),
        "connector_info": dict(connector),
        "conn_info": dict(conn_info),
        "device": None if device is None else dict(device),
        "attach_mode": mode,
        "instance_uuid": _text(found, fields, "instance_uuid", where),
        "project_id": project_id,
        "user_id": user_id,
        "created_at": _stamp(found, fields.get("created_at"), "created_at", where,
                             required=True),
        "updated_at": _stamp(found, fields.get("updated_at"), "updated_at", where,
                             required=False),
    }
    return _parse(found, ConnectionRecord, data, where)


def _key_value(found: _Found, fields: Mapping[str, Any], where: str) -> None:
    key = _key(found, fields, where)
    found.key_values[key] = _text(found, fields, "value", where)


# -- Cinder's schema -------------------------------------------------------------

Rows = dict[str, list[dict[str, Any]]]


def _check_tables(present: Collection[str], shown: str) -> None:
    missing = [t for t in _REQUIRED_TABLES if t not in present]
    if missing:
        raise InvalidArgument(
            f"{shown} is not a cinderlib database: it has no {', '.join(missing)} "
            "table (Cinder's schema is expected)"
        )


def _row_where(table: str, row: Mapping[str, Any], index: int) -> str:
    key = row.get("id", row.get("key"))
    return f"{table} row {key!r}" if isinstance(key, str | int) else f"{table} row #{index}"


def _live(found: _Found, rows: Rows, table: str) -> Iterable[tuple[str, dict[str, Any]]]:
    """The rows of a child table (metadata, specs) that are not deleted."""
    for i, row in enumerate(rows.get(table, ())):
        where = _row_where(table, row, i)
        if not _deleted(found, row, where):
            yield where, row


def _pairs(
    found: _Found, rows: Rows, table: str, owner: str
) -> dict[Any, list[tuple[str, dict[str, Any]]]]:
    """The live ``key``/``value`` rows of ``table``, grouped by the ``owner`` column.

    They are checked when a live owner uses them, so a broken row of a
    deleted volume does not stop an import.
    """
    grouped: dict[Any, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for where, row in _live(found, rows, table):
        grouped[row.get(owner)].append((where, row))
    return grouped


def _mapping(found: _Found, pairs: Iterable[tuple[str, dict[str, Any]]],
             skip: Collection[str] = ()) -> dict[str, str]:
    out: dict[str, str] = {}
    for where, row in pairs:
        key, value = row.get("key"), row.get("value")
        if not isinstance(key, str) or not isinstance(value, str):
            raise found.error(where, "key and value must be strings")
        if key not in skip:
            out[key] = value
    return out


def _gone(found: _Found, row: Mapping[str, Any], where: str, status: str) -> bool:
    """Whether a row is deleted (soft-deleted, or its status says so); counts it."""
    if _deleted(found, row, where) or row.get(status) == "deleted":
        found.deleted += 1
        return True
    return False


def _from_rows(rows: Rows, shown: str) -> _Found:
    """Records from the rows of Cinder's tables (``deleted`` rows left out).

    A volume's type, extra specs and QoS specs are read the way Cinder reads
    them: ``volumes.volume_type_id`` -> ``volume_types`` -> its
    ``volume_type_extra_specs``, and ``volume_types.qos_specs_id`` -> the
    ``quality_of_service_specs`` rows under that id (without the ``consumer``
    row). Type rows cinderlib left unlinked are not looked at.
    """
    found = _Found(shown)
    types = {row.get("id"): row for _, row in _live(found, rows, "volume_types")}
    extra_specs = _pairs(found, rows, "volume_type_extra_specs", "volume_type_id")
    qos_rows = _pairs(found, rows, "quality_of_service_specs", "specs_id")
    qos_names = {row.get("id") for _, row in qos_rows.get(None, ())}
    metadata = _pairs(found, rows, "volume_metadata", "volume_id")
    admin_metadata = _pairs(found, rows, "volume_admin_metadata", "volume_id")
    snapshot_metadata = _pairs(found, rows, "snapshot_metadata", "snapshot_id")

    for i, row in enumerate(rows["volumes"]):
        where = _row_where("volumes", row, i)
        if _gone(found, row, where, "status"):
            continue
        type_row = types.get(row.get("volume_type_id"))
        volume_type: tuple[str | None, Any, Any] = (None, {}, {})
        if type_row is not None:
            qos_id = type_row.get("qos_specs_id")
            qos = (_mapping(found, qos_rows.get(qos_id, ()), skip=("consumer",))
                   if qos_id is not None and qos_id in qos_names else {})
            volume_type = (_text(found, type_row, "name", where),
                           _mapping(found, extra_specs.get(type_row.get("id"), ())), qos)
        vid = row.get("id")
        record = _volume(
            found, row, where, backend_name=None, volume_type=volume_type,
            metadata=_mapping(found, metadata.get(vid, ())),
            admin_metadata=_mapping(found, admin_metadata.get(vid, ())),
        )
        assert record is not None
        _add(found, found.volumes, record, where)

    for i, row in enumerate(rows["snapshots"]):
        where = _row_where("snapshots", row, i)
        if _gone(found, row, where, "status"):
            continue
        volume = _volume_of(found, row)
        if volume is None:
            found.orphaned += 1
            continue
        snapshot = _snapshot(
            found, row, where, backend_name=volume.backend_name, volume_size=volume.size,
            metadata=_mapping(found, snapshot_metadata.get(row.get("id"), ())),
        )
        assert snapshot is not None
        _add(found, found.snapshots, snapshot, where)

    for i, row in enumerate(rows["volume_attachment"]):
        where = _row_where("volume_attachment", row, i)
        if _gone(found, row, where, "attach_status"):
            continue
        volume = _volume_of(found, row)
        if volume is None:
            found.orphaned += 1
            continue
        connection = _connection(
            found, row, where, backend_name=volume.backend_name,
            project_id=volume.project_id, user_id=volume.user_id,
        )
        assert connection is not None
        _add(found, found.connections, connection, where)

    for i, row in enumerate(rows.get(KEY_VALUE_TABLE, ())):
        _key_value(found, row, _row_where(KEY_VALUE_TABLE, row, i))
    return found


def _read_sqlite(path: str) -> Rows:
    """Every row of the tables the import reads, in one read transaction.

    Runs in a worker thread. The file is opened read-only: it is never changed.
    """
    shown = str(path)
    uri = f"{Path(path).absolute().as_uri()}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise PersistenceError(f"cannot open the cinderlib database {shown}: {exc}") from None
    try:
        db.row_factory = sqlite3.Row
        db.execute("BEGIN")  # one consistent snapshot of every table
        present = {name for (name,) in
                   db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        _check_tables(present, shown)
        # Table names come from TABLES, never from the input.
        return {table: [dict(row) for row in db.execute(f'SELECT * FROM "{table}"')]
                for table in TABLES if table in present}
    except sqlite3.OperationalError as exc:  # locked, I/O error...
        raise PersistenceError(f"cannot read the cinderlib database {shown}: {exc}") from None
    except sqlite3.DatabaseError as exc:  # not a database, corrupt
        raise InvalidArgument(f"{shown} is not a readable SQLite database: {exc}") from None
    finally:
        db.close()


async def _postgresql() -> ModuleType:
    """The PostgreSQL store's module (and asyncpg), imported off the event loop."""
    return await anyio.to_thread.run_sync(
        importlib.import_module, "aiocinder.persistence.postgresql")


def _postgresql_dsn(pg: ModuleType, source: str) -> tuple[str, str]:
    """The DSN for asyncpg and the form shown to people (without the password).

    SQLAlchemy's driver suffixes (``postgresql+psycopg2://``...) are dropped.
    """
    _, _, rest = source.partition("://")
    dsn: tuple[str, str] = pg._parse_dsn(f"postgresql://{rest}")
    return dsn


async def _read_postgresql(pg: ModuleType, dsn: str, shown: str) -> Rows:
    """Every row of the tables the import reads, in one read-only transaction."""
    with pg.map_postgres_exceptions(shown):
        db = await pg.asyncpg.connect(dsn)
    try:
        with pg.map_postgres_exceptions(shown):
            async with db.transaction(isolation="repeatable_read", readonly=True):
                present = {r[0] for r in await db.fetch(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = ANY (current_schemas(false))"
                )}
                _check_tables(present, shown)
                rows: Rows = {}
                for table in TABLES:  # names from TABLES, never from the input
                    if table in present:
                        rows[table] = [dict(r) for r in await db.fetch(f'SELECT * FROM "{table}"')]
                return rows
    finally:
        await db.close()


# -- cinderlib's JSON -------------------------------------------------------------


def _ovo(found: _Found, value: Any, name: str, where: str) -> Mapping[str, Any]:
    """The data of an oslo.versionedobjects primitive of class ``name``."""
    if (not isinstance(value, Mapping) or value.get("versioned_object.name") != name
            or not isinstance(value.get("versioned_object.data"), Mapping)):
        raise found.error(where, f"expected a {name} versioned object")
    data: Mapping[str, Any] = value["versioned_object.data"]
    return data


def _ovo_list(found: _Found, value: Any, name: str, where: str) -> list[Any]:
    if value is None:
        return []
    objects = _ovo(found, value, f"{name}List", where).get("objects")
    if not isinstance(objects, list):
        raise found.error(where, f"expected a list of {name} objects")
    return objects


def _backend_name(found: _Found, value: Any, where: str) -> str | None:
    """cinderlib writes a backend as its config dict, or as its name."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        name = value.get("volume_backend_name")
        if name is None or isinstance(name, str):
            return name or None
    raise found.error(where, "backend must be a name or an object with volume_backend_name")


def _json_volume(found: _Found, data: Mapping[str, Any], where: str,
                 backend_name: str | None) -> VolumeRecord | None:
    type_ovo = data.get("volume_type")
    volume_type: tuple[str | None, Any, Any] = (None, {}, {})
    if type_ovo is not None:
        vtype = _ovo(found, type_ovo, "VolumeType", f"{where}.volume_type")
        qos_ovo = vtype.get("qos_specs")
        qos = ({} if qos_ovo is None else _ovo(
            found, qos_ovo, "QualityOfServiceSpecs", f"{where}.volume_type.qos_specs"
        ).get("specs"))
        volume_type = (_text(found, vtype, "name", f"{where}.volume_type"),
                       vtype.get("extra_specs"), qos)
    volume = _volume(found, data, where, backend_name=backend_name, volume_type=volume_type,
                     metadata=data.get("metadata"), admin_metadata=data.get("admin_metadata"))
    if volume is None:
        # Its snapshots and connections go with it.
        found.deleted += len(_ovo_list(found, data.get("snapshots"), "Snapshot", where))
        found.deleted += len(_ovo_list(found, data.get("volume_attachment"),
                                       "VolumeAttachment", where))
        return None
    _add(found, found.volumes, volume, where)
    for i, item in enumerate(_ovo_list(found, data.get("snapshots"), "Snapshot",
                                       f"{where}.snapshots")):
        _json_snapshot(found, _ovo(found, item, "Snapshot", f"{where}.snapshots[{i}]"),
                       f"{where}.snapshots[{i}]", volume.backend_name, volume)
    for i, item in enumerate(_ovo_list(found, data.get("volume_attachment"),
                                       "VolumeAttachment", f"{where}.volume_attachment")):
        _json_connection(
            found, _ovo(found, item, "VolumeAttachment", f"{where}.volume_attachment[{i}]"),
            f"{where}.volume_attachment[{i}]", volume.backend_name, volume)
    return volume


def _parent(found: _Found, data: Mapping[str, Any], where: str, backend_name: str | None,
            volume: VolumeRecord | None) -> tuple[VolumeRecord | None, str | None]:
    """The volume a standalone snapshot or connection belongs to, if the data has it.

    cinderlib may nest the volume in the object (``volume``); it is imported too.
    """
    if volume is None and data.get("volume") is not None:
        nested = _ovo(found, data["volume"], "Volume", f"{where}.volume")
        volume = _json_volume(found, nested, f"{where}.volume", backend_name)
    if volume is None:
        volume = _volume_of(found, data)
    if volume is not None:
        if backend_name and backend_name != volume.backend_name:
            raise found.error(where, f"backend {backend_name!r} is not its volume's "
                                     f"({volume.backend_name!r})")
        if data.get("volume_id") not in (None, volume.id):
            raise found.error(where, "volume_id is not the id of the volume it is under")
        backend_name = volume.backend_name
    return volume, backend_name


def _json_snapshot(found: _Found, data: Mapping[str, Any], where: str,
                   backend_name: str | None, volume: VolumeRecord | None) -> None:
    volume, backend_name = _parent(found, data, where, backend_name, volume)
    if backend_name is None:
        raise found.error(where, "no backend name")
    snapshot = _snapshot(found, data, where, backend_name=backend_name,
                         volume_size=volume.size if volume else None,
                         metadata=data.get("metadata"))
    if snapshot is not None:
        _add(found, found.snapshots, snapshot, where)
        if volume is None:
            found.pending.append((snapshot, where))


def _json_connection(found: _Found, data: Mapping[str, Any], where: str,
                     backend_name: str | None, volume: VolumeRecord | None) -> None:
    volume, backend_name = _parent(found, data, where, backend_name, volume)
    if backend_name is None:
        raise found.error(where, "no backend name")
    # Its project and user are its volume's, set once every volume is known
    # (so that the same connection listed twice compares equal).
    connection = _connection(found, data, where, backend_name=backend_name,
                             project_id=None, user_id=None)
    if connection is not None:
        _add(found, found.connections, connection, where)
        if volume is None:
            found.pending.append((connection, where))


def _json_entry(found: _Found, item: Any, where: str, backend_name: str | None = None) -> None:
    if isinstance(item, list):
        for i, element in enumerate(item):
            _json_entry(found, element, f"{where}[{i}]", backend_name)
        return
    if not isinstance(item, Mapping):
        raise found.error(where, "expected a cinderlib object (with a 'class')")
    kind = item.get("class")
    own = _backend_name(found, item.get("backend"), f"{where}.backend") or backend_name
    if kind == "Backend":
        if own is None:
            raise found.error(where, "no backend name")
        volumes = item.get("volumes", [])
        if not isinstance(volumes, list):
            raise found.error(f"{where}.volumes", "expected a list")
        for i, element in enumerate(volumes):
            if not isinstance(element, Mapping) or element.get("class") != "Volume":
                raise found.error(f"{where}.volumes[{i}]", "expected a Volume")
            _json_entry(found, element, f"{where}.volumes[{i}]", own)
    elif kind == "Volume":
        _json_volume(found, _ovo(found, item.get("ovo"), "Volume", f"{where}.ovo"),
                     where, own)
    elif kind == "Snapshot":
        _json_snapshot(found, _ovo(found, item.get("ovo"), "Snapshot", f"{where}.ovo"),
                       where, own, None)
    elif kind == "Connection":
        _json_connection(
            found, _ovo(found, item.get("ovo"), "VolumeAttachment", f"{where}.ovo"),
            where, own, None)
    else:
        raise found.error(where, f"unknown cinderlib class {kind!r}")


def _from_json(data: Any, shown: str) -> _Found:
    found = _Found(shown)
    try:
        _json_entry(found, data, "data")
    except RecursionError:
        raise found.error("data", "nested too deeply") from None
    # A snapshot or connection listed on its own before its volume.
    waiting = []
    for record, where in found.pending:
        volume = found.volumes.get(record.volume_id)
        if volume is None:
            waiting.append((record, where))
        else:
            _adopt(found, record, volume, where)
    found.pending = waiting
    for connection in list(found.connections.values()):
        volume = found.volumes.get(connection.volume_id)
        if volume is not None:
            found.connections[connection.id] = connection.replace(
                project_id=volume.project_id, user_id=volume.user_id)
    return found


def _parse_json(text: str | bytes, shown: str) -> Any:
    if len(text) > MAX_JSON:
        raise InvalidArgument(f"{shown}: refusing more than {MAX_JSON} bytes of JSON")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        # The message says where (line, column), never what the text holds;
        # raised below, not chained to the JSONDecodeError that holds it all.
        problem = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        if isinstance(exc, json.JSONDecodeError):
            problem += f" (line {exc.lineno}, column {exc.colno})"
    raise InvalidArgument(f"{shown}: not valid JSON: {problem}")


def _adopt(found: _Found, record: SnapshotRecord | ConnectionRecord, volume: VolumeRecord,
           where: str) -> None:
    """Check a standalone snapshot or connection against its volume, found later."""
    if volume.backend_name != record.backend_name:
        raise found.error(where, f"backend {record.backend_name!r} is not its volume's "
                                 f"({volume.backend_name!r})")
    if isinstance(record, ConnectionRecord):
        found.connections[record.id] = record.replace(
            project_id=volume.project_id, user_id=volume.user_id)


# -- sources ----------------------------------------------------------------------


def _read_file(path: str) -> _Found:
    """A cinderlib SQLite database or a JSON file; runs in a worker thread."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
            is_sqlite = head == _SQLITE_MAGIC
            text = b"" if is_sqlite else head + handle.read(MAX_JSON + 1 - len(head))
    except IsADirectoryError:
        raise InvalidArgument(f"{path} is a directory, not a cinderlib database or JSON file"
                              ) from None
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    if is_sqlite:
        return _from_rows(_read_sqlite(path), path)
    return _from_json(_parse_json(text, path), path)


def _sqlite_path(url: str) -> str:
    """The file a SQLAlchemy SQLite URL names (``sqlite:///relative``, ``sqlite:////abs``)."""
    rest = url.partition("://")[2].partition("?")[0]
    path = rest[1:]
    if not rest.startswith("/") or not path or path == ":memory:":
        raise InvalidArgument(
            f"SQLite URL {url!r} names no file: use sqlite:///relative.db or "
            "sqlite:////absolute/path.db"
        )
    return path


async def _read(source: Any) -> _Found:
    if isinstance(source, Mapping | list | tuple):
        return await anyio.to_thread.run_sync(_from_json, source, "data")
    if isinstance(source, bytes):
        return await anyio.to_thread.run_sync(
            lambda: _from_json(_parse_json(source, "JSON text"), "JSON text"))
    if isinstance(source, os.PathLike):
        return await anyio.to_thread.run_sync(_read_file, os.fspath(source))
    if not isinstance(source, str):
        raise InvalidArgument(
            "the source must be a path, a sqlite:// URL, a postgresql:// DSN, cinderlib's "
            f"JSON text or parsed JSON, not {type(source).__name__}"
        )
    text = source.strip()
    if text[:1] in ("{", "["):
        return await anyio.to_thread.run_sync(
            lambda: _from_json(_parse_json(text, "JSON text"), "JSON text"))
    scheme, sep, _ = text.partition("://")
    base = scheme.lower().partition("+")[0]
    if sep and base in ("postgresql", "postgres"):
        pg = await _postgresql()
        dsn, shown = _postgresql_dsn(pg, text)
        rows = await _read_postgresql(pg, dsn, shown)
        return await anyio.to_thread.run_sync(_from_rows, rows, shown)
    if sep and base == "sqlite":
        return await anyio.to_thread.run_sync(_read_file, _sqlite_path(text))
    if sep:
        raise InvalidArgument(
            f"cannot read a {scheme!r} database: use a SQLite file (path or sqlite:// URL), "
            "a postgresql:// DSN or a JSON file"
        )
    if not text:
        raise InvalidArgument("the source is empty")
    return await anyio.to_thread.run_sync(_read_file, text)


# -- writing ------------------------------------------------------------------------


def _chunks(items: Sequence[T], size: int = _BATCH) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


async def _resolve_pending(store: PersistenceStore, found: _Found) -> None:
    """Standalone snapshots and connections whose volume must already be stored."""
    if not found.pending:
        return
    wanted = sorted({record.volume_id for record, _ in found.pending})
    stored = {v.id: v for chunk in _chunks(wanted)
              for v in await store.get_volumes_by_ids(chunk)}
    for record, where in found.pending:
        volume = stored.get(record.volume_id)
        if volume is None:
            raise found.error(where, f"its volume {record.volume_id!r} is neither in the data "
                                     "nor in the store")
        _adopt(found, record, volume, where)
    found.pending = []


async def _write(
    records: Sequence[R],
    existing: Callable[[Sequence[R]], Any],
    insert: Callable[[R], Any],
    put: Callable[[R], Any],
    replace: bool,
) -> ImportTally:
    created = present = replaced = 0
    for chunk in _chunks(records):
        stored: set[str] = await existing(chunk)
        for record in chunk:
            if record.id not in stored:
                try:
                    await insert(record)
                except AlreadyExists:  # stored meanwhile, or under another volume
                    pass
                else:
                    created += 1
                    continue
            if replace:
                await put(record)
                replaced += 1
            else:
                present += 1
    return ImportTally(created, present, replaced)


async def _save(store: PersistenceStore, found: _Found, replace: bool) -> ImportCounts:
    async def volume_ids(chunk: Sequence[VolumeRecord]) -> set[str]:
        return {v.id for v in await store.get_volumes_by_ids([r.id for r in chunk])}

    async def snapshot_ids(chunk: Sequence[SnapshotRecord]) -> set[str]:
        found_ = await store.get_snapshots_by_volume_ids({r.volume_id for r in chunk})
        return {s.id for s in found_}

    async def connection_ids(chunk: Sequence[ConnectionRecord]) -> set[str]:
        found_ = await store.get_connections_by_volume_ids({r.volume_id for r in chunk})
        return {c.id for c in found_}

    volumes = await _write(list(found.volumes.values()), volume_ids, store.set_volume,
                           store.put_volume, replace)
    snapshots = await _write(list(found.snapshots.values()), snapshot_ids,
                             store.set_snapshot, store.put_snapshot, replace)
    connections = await _write(list(found.connections.values()), connection_ids,
                               store.set_connection, store.put_connection, replace)
    stored_keys = {kv.key for kv in await store.get_key_values()}
    kv_created = kv_present = kv_replaced = 0
    for key, value in found.key_values.items():
        if key in stored_keys and not replace:
            kv_present += 1
            continue
        await store.set_key_value(KeyValue(key, value))
        if key in stored_keys:
            kv_replaced += 1
        else:
            kv_created += 1
    backends = {v.backend_name for v in found.volumes.values()}
    backends.update(r.backend_name for r in found.snapshots.values())
    backends.update(r.backend_name for r in found.connections.values())
    return ImportCounts(
        source=found.source,
        backends=tuple(sorted(backends)),
        volumes=volumes,
        snapshots=snapshots,
        connections=connections,
        key_values=ImportTally(kv_created, kv_present, kv_replaced),
        deleted=found.deleted,
        orphaned=found.orphaned,
    )


async def import_cinderlib(
    source: str | os.PathLike[str] | bytes | Mapping[str, Any] | Sequence[Any],
    *,
    store: PersistenceStore | None = None,
    replace: bool = False,
) -> ImportCounts:
    """Import cinderlib's data: volumes, snapshots, connections and key values.

    :param source: where the data is:

        * a cinderlib ``db`` persistence database: a SQLite file (a path, or a
          URL such as ``sqlite:///cinderlib.sqlite``) or a PostgreSQL DSN
          (``postgresql://user:password@host/db``; SQLAlchemy's
          ``postgresql+psycopg2://`` form works too). It is only read.
        * cinderlib's JSON serialization: a file holding it (any path that is
          not a SQLite database), the text itself (``cinderlib.dumps()``,
          ``backend.dumps``, ``vol.jsons``, ``vol.dumps``...: a string that
          starts with ``{`` or ``[``), or the parsed data (``vol.json``,
          ``cinderlib.dump()``, ``json.loads(text)``).
    :param store: the store to import into; by default the active one
        (:attr:`aiocinder.Backend.persistence`, after :func:`aiocinder.setup`).
        A store given here must be open.
    :param replace: overwrite records whose id is already in the store
        (by default they are left as they are and counted as already present).
    :returns: what was created, what was already there, what was left out.
    :raises InvalidArgument: the source is malformed or unknown; nothing was
        written.
    :raises PersistenceError: the source database or the store could not be
        read or written. An import interrupted while writing can be run again:
        what it already wrote counts as already present.
    :raises UsageError: no store was given and aiocinder is not set up.
    """
    if store is None:
        store = runtime.store("aiocinder.import_cinderlib()")
    found = await _read(source)
    await _resolve_pending(store, found)
    return await _save(store, found, replace)
