"""Plain typed records: the data model every layer shares.

Records are frozen dataclasses. The persistence layer stores and returns them,
drivers receive them, and the live resources (:mod:`aiocinder.resources`) wrap
them. A change is a new record made with :func:`dataclasses.replace`.

``version`` is the compare-and-swap counter: ``0`` means "never stored"; the
store sets it to 1 on insert and adds one on every update.

This module imports nothing else of aiocinder.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Self, TypeVar

__all__ = [
    "CONNECTION_STATUSES",
    "SNAPSHOT_STATUSES",
    "VOLUME_STATUSES",
    "ConnectionRecord",
    "KeyValue",
    "SnapshotRecord",
    "VolumeRecord",
    "utcnow",
]

#: Statuses a volume can have (Cinder's vocabulary).
VOLUME_STATUSES: Final = frozenset(
    {
        "creating",
        "available",
        "in-use",
        "attaching",
        "detaching",
        "extending",
        "deleting",
        "deleted",
        "error",
        "error_deleting",
        "error_extending",
    }
)
#: Statuses a snapshot can have.
SNAPSHOT_STATUSES: Final = frozenset(
    {"creating", "available", "deleting", "deleted", "error", "error_deleting"}
)
#: Statuses a connection can have. ``attached`` means exported and mapped to the host.
CONNECTION_STATUSES: Final = frozenset(
    {"attaching", "attached", "detaching", "detached", "error_attaching", "error_detaching"}
)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _dt_out(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt_in(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_DATETIME_FIELDS: Final = frozenset({"created_at", "updated_at"})

_R = TypeVar("_R", bound="_Record")


def _compile_builder(cls: type[_R]) -> Callable[[Mapping[str, Any]], _R]:
    """A function that builds a ``cls`` from a dict that has every field, setting
    the slots through their descriptors (``__init__`` is not run). Keys that are
    not fields are ignored; a missing field raises :class:`KeyError`.

    For ``VolumeRecord`` the source reads::

        def build(data):
            record = new(cls)
            set_id(record, data["id"])
            ...
            set_created_at(record, dt_in(data["created_at"]))
            ...
            return record

    A class whose fields are not all slots, or that has a ``__post_init__``,
    gets its ``from_dict`` instead.
    """
    if hasattr(cls, "__post_init__"):
        return cls.from_dict
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls, "dt_in": _dt_in}
    lines = ["def build(data):", "    record = new(cls)"]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        slot = getattr(cls, f.name, None)
        if not isinstance(slot, types.MemberDescriptorType):
            return cls.from_dict
        namespace[f"set_{f.name}"] = slot.__set__
        value = f"data[{f.name!r}]"
        if f.name in _DATETIME_FIELDS:
            value = f"dt_in({value})"
        lines.append(f"    set_{f.name}(record, {value})")
    lines.append("    return record")
    exec("\n".join(lines), namespace)  # the source is made of field names only
    build: Callable[[Mapping[str, Any]], _R] = namespace["build"]
    return build


def _check_json(where: str, value: Any, depth: int = 0) -> None:
    """Strings without NUL, finite numbers, str keys, bounded nesting."""
    if depth > 32:
        raise ValueError(f"{where} is nested too deeply")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where} holds a NUL character")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a key that is not a string: {key!r}")
            _check_json(where, key, depth + 1)
            _check_json(where, item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(where, item, depth + 1)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where} holds a non-finite number")
    elif value is not None and not isinstance(value, bool | int):
        raise ValueError(f"{where} holds a {type(value).__name__}, not JSON data")


def _parse_value(where: str, kind: str, value: Any) -> Any:
    """Check ``value`` against a field's annotation (as written in this module)."""
    if kind.endswith(" | None"):
        if value is None:
            return None
        kind = kind[: -len(" | None")]
    if kind == "datetime":
        if not isinstance(value, str):
            raise ValueError(f"{where} must be an ISO 8601 string")
        try:
            return _dt_in(value)
        except ValueError:
            raise ValueError(f"{where} is not an ISO 8601 date: {value!r}") from None
    expected: type | tuple[type, ...] = {
        "str": str, "int": int, "bool": bool,
        "Mapping[str, str]": Mapping, "Mapping[str, Any]": Mapping,
    }[kind]
    if not isinstance(value, expected) or (kind == "int" and isinstance(value, bool)):
        raise ValueError(f"{where} must be {kind}, got {type(value).__name__}")
    _check_json(where, value)
    if isinstance(value, Mapping):
        if kind == "Mapping[str, str]" and not all(isinstance(v, str) for v in value.values()):
            raise ValueError(f"{where} values must be strings")
        return dict(value)
    return value


class _Record:
    """Shared dict conversion for the record dataclasses."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: datetimes become ISO 8601 strings, mappings plain dicts."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in _DATETIME_FIELDS:
                value = _dt_out(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build a record from :meth:`to_dict` output. Unknown keys are ignored."""
        names = cls._field_names()
        kwargs = {k: v for k, v in data.items() if k in names}
        for name in _DATETIME_FIELDS & kwargs.keys():
            kwargs[name] = _dt_in(kwargs[name])
        return cls(**kwargs)

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> Self:
        """Build a record from a :meth:`to_dict` dict that aiocinder wrote itself.

        The stores' fast path for their own rows. The record equals what
        :meth:`from_dict` builds from the same dict (unknown keys are ignored,
        datetimes are parsed, a missing field gets its default), but a function
        compiled once per class sets the slots directly, without ``__init__``'s
        keyword machinery: three to four times faster for a row that has every
        field. A row that lacks one (written before the field was added) goes
        through :meth:`from_dict`. Values are not checked, so use it only on
        data aiocinder wrote; :meth:`parse` is for data from elsewhere.

        :raises TypeError: a field without a default is missing (as :meth:`from_dict`).
        """
        build: Callable[[Mapping[str, Any]], Self] | None = cls.__dict__.get("_stored_builder")
        if build is None:
            build = _compile_builder(cls)
            type.__setattr__(cls, "_stored_builder", build)
        try:
            return build(data)
        except KeyError:  # a row from before a field was added: defaults are filled in
            return cls.from_dict(data)

    @classmethod
    def _field_names(cls) -> frozenset[str]:
        cached: frozenset[str] | None = cls.__dict__.get("_names_cache")
        if cached is None:
            cached = frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            type.__setattr__(cls, "_names_cache", cached)
        return cached

    @classmethod
    def parse(cls, data: object) -> Self:
        """Build a record from untrusted data (:meth:`to_dict` output), strictly.

        Every key must be a field, every field without a default must be
        there, and every value must have the field's type (datetimes as ISO
        8601 strings). Strings must not hold NUL characters.

        :raises ValueError: the data is not a valid record; nothing is built.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__} data must be an object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = data.keys() - fields.keys()
        if unknown:
            names = ", ".join(sorted(map(str, unknown)))
            raise ValueError(f"unknown {cls.__name__} fields: {names}")
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ValueError(f"{cls.__name__} field {name!r} is missing")
                continue
            kwargs[name] = _parse_value(f"{cls.__name__}.{name}", str(f.type), data[name])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumeRecord(_Record):
    """One volume, as stored."""

    id: str
    backend_name: str
    size: int
    status: str = "creating"
    name: str | None = None
    description: str | None = None
    host: str | None = None
    availability_zone: str | None = None
    volume_type_name: str | None = None
    extra_specs: Mapping[str, str] = field(default_factory=dict)
    qos_specs: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    admin_metadata: Mapping[str, str] = field(default_factory=dict)
    provider_location: str | None = None
    provider_auth: str | None = None
    provider_id: str | None = None
    source_volid: str | None = None
    snapshot_id: str | None = None
    project_id: str | None = None
    user_id: str | None = None
    bootable: bool = False
    multiattach: bool = False
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime | None = None
    version: int = 0

    @property
    def storage_name(self) -> str:
        """The name on the storage: derived from the id, never from the user's name."""
        return f"volume-{self.id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRecord(_Record):
    """One snapshot, as stored."""

    id: str
    volume_id: str
    backend_name: str
    volume_size: int
    status: str = "creating"
    name: str | None = None
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    provider_location: str | None = None
    provider_auth: str | None = None
    provider_id: str | None = None
    project_id: str | None = None
    user_id: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime | None = None
    version: int = 0

    @property
    def storage_name(self) -> str:
        """The name on the storage: derived from the id."""
        return f"snapshot-{self.id}"

    @property
    def volume_storage_name(self) -> str:
        """The storage name of the snapshot's source volume."""
        return f"volume-{self.volume_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionRecord(_Record):
    """One connection: a volume exported and mapped to a host (an attachment).

    ``connector_info`` is the host's os-brick connector properties,
    ``conn_info`` what the driver's ``initialize_connection`` answered, and
    ``device`` what os-brick's ``connect_volume`` returned on the host.
    """

    id: str
    volume_id: str
    backend_name: str
    status: str = "attaching"
    connector_info: Mapping[str, Any] = field(default_factory=dict)
    conn_info: Mapping[str, Any] = field(default_factory=dict)
    device: Mapping[str, Any] | None = None
    attach_mode: str = "rw"
    instance_uuid: str | None = None
    project_id: str | None = None
    user_id: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime | None = None
    version: int = 0

    @property
    def protocol(self) -> str | None:
        """The transport protocol (``driver_volume_type``): ``iscsi``, ``local``..."""
        value = self.conn_info.get("driver_volume_type")
        return None if value is None else str(value)

    @property
    def path(self) -> str | None:
        """The local path of the attached device, if attached on this host."""
        if not self.device:
            return None
        value = self.device.get("path")
        return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One entry of the key-value store (for example a node's connector properties)."""

    key: str
    value: str | None = None
