"""Serialization: ``dump``/``dumps`` of everything, and ``load`` back.

The format is plain JSON: a resource is its record's fields plus ``"class"``
(``"Volume"``, ``"Snapshot"``, ``"Connection"`` or ``"Backend"``); a volume
carries its ``"snapshots"`` and ``"connections"`` when they were loaded, a
backend its ``"volumes"``. Datetimes are ISO 8601 strings with microseconds
and a UTC offset, so round trips are exact.

:func:`load` trusts nothing: the whole input is checked before any object is
built or anything is saved, and anything malformed raises
:class:`~aiocinder.exceptions.InvalidArgument`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .exceptions import BackendNotInitialised, InvalidArgument
from .records import ConnectionRecord, SnapshotRecord, VolumeRecord
from .resources._base import dumps_json
from .resources._runtime import runtime
from .resources.backend import Backend
from .resources.connection import Connection
from .resources.snapshot import Snapshot
from .resources.volume import Volume

__all__ = ["dump", "dumps", "load"]

#: Refuse JSON texts larger than this (bytes) in :func:`load`.
MAX_TEXT = 256 << 20


async def dump() -> list[dict[str, Any]]:
    """Every initialised backend with its volumes, snapshots and connections."""
    runtime.store("aiocinder.dump()")
    return [await backend.dump() for backend in list(runtime.backends.values())]


async def dumps() -> str:
    """:func:`dump` as a JSON string."""
    return dumps_json(await dump())


def _fields(data: Mapping[str, Any], *nested: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "class" and k not in nested}


def _check_backend(name: str) -> None:
    if runtime.options.fail_on_missing_backend and name not in runtime.backends:
        raise BackendNotInitialised(
            f"backend {name!r} is not initialised in this process "
            "(setup(fail_on_missing_backend=False) loads its resources anyway)"
        )


class _Builder:
    """Checks the whole input and builds live objects; collects the records to save."""

    def __init__(self) -> None:
        self.volumes: list[Volume] = []
        self.snapshots: list[Snapshot] = []
        self.connections: list[Connection] = []

    def build(self, data: Any, where: str) -> Any:
        if isinstance(data, list):
            return [self.build(item, f"{where}[{i}]") for i, item in enumerate(data)]
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"{where}: expected an object, got {type(data).__name__}")
        kind = data.get("class")
        try:
            if kind == "Volume":
                return self.volume(data, where)
            if kind == "Snapshot":
                return self.snapshot(data, where, None)
            if kind == "Connection":
                return self.connection(data, where, None)
            if kind == "Backend":
                return self.backend(data, where)
        except ValueError as exc:
            if isinstance(exc, InvalidArgument):
                raise
            raise InvalidArgument(f"{where}: {exc}") from None
        raise InvalidArgument(f"{where}: unknown class {kind!r}")

    def _list(self, data: Mapping[str, Any], key: str, where: str) -> list[Any]:
        value = data.get(key, [])
        if not isinstance(value, list):
            raise InvalidArgument(f"{where}.{key}: expected a list")
        return value

    def volume(self, data: Mapping[str, Any], where: str) -> Volume:
        record = VolumeRecord.parse(_fields(data, "snapshots", "connections"))
        _check_backend(record.backend_name)
        vol = Volume(record)
        self.volumes.append(vol)
        for key, build, lazy in (
            ("snapshots", self.snapshot, vol._snapshots),
            ("connections", self.connection, vol._connections),
        ):
            if key in data:
                items = [build(item, f"{where}.{key}[{i}]", vol)
                         for i, item in enumerate(self._list(data, key, where))]
                lazy.set(items)  # type: ignore[arg-type]
        return vol

    def _child(self, data: Any, where: str, kind: str) -> Mapping[str, Any]:
        if not isinstance(data, Mapping) or data.get("class") != kind:
            raise InvalidArgument(f"{where}: expected a {kind} object")
        return data

    def snapshot(self, data: Any, where: str, volume: Volume | None) -> Snapshot:
        record = SnapshotRecord.parse(_fields(self._child(data, where, "Snapshot")))
        if volume is not None and record.volume_id != volume.id:
            raise InvalidArgument(f"{where}: snapshot of volume {record.volume_id}, "
                                  f"listed under volume {volume.id}")
        _check_backend(record.backend_name)
        snapshot = Snapshot(record, volume=volume)
        self.snapshots.append(snapshot)
        return snapshot

    def connection(self, data: Any, where: str, volume: Volume | None) -> Connection:
        record = ConnectionRecord.parse(_fields(self._child(data, where, "Connection")))
        if volume is not None and record.volume_id != volume.id:
            raise InvalidArgument(f"{where}: connection of volume {record.volume_id}, "
                                  f"listed under volume {volume.id}")
        _check_backend(record.backend_name)
        connection = Connection(record, volume=volume)
        self.connections.append(connection)
        return connection

    def backend(self, data: Mapping[str, Any], where: str) -> Backend | list[Volume]:
        name = data.get("volume_backend_name")
        if not isinstance(name, str):
            raise InvalidArgument(f"{where}.volume_backend_name: expected a string")
        volumes = [self.volume(self._child(item, f"{where}.volumes[{i}]", "Volume"),
                               f"{where}.volumes[{i}]")
                   for i, item in enumerate(self._list(data, "volumes", where))]
        for i, vol in enumerate(volumes):
            if vol.backend_name != name:
                raise InvalidArgument(f"{where}.volumes[{i}]: belongs to backend "
                                      f"{vol.backend_name!r}, listed under {name!r}")
        backend = runtime.backends.get(name)
        if backend is None:
            _check_backend(name)
            return volumes
        return backend

    def check_unique(self) -> None:
        for kind, objects in (("volume", self.volumes), ("snapshot", self.snapshots),
                              ("connection", self.connections)):
            ids = [o.id for o in objects]
            if len(ids) != len(set(ids)):
                raise InvalidArgument(f"the data holds the same {kind} id twice")


async def load(data: str | bytes | Mapping[str, Any] | Sequence[Any], save: bool = False
               ) -> Any:
    """Build live objects from :func:`dump` / ``dumps`` / ``obj.json`` output.

    A ``Volume`` entry gives a :class:`Volume` whose snapshots and connections,
    when present, are its loaded lazy properties (with the identity the
    tracking loop expects). A ``Backend`` entry gives the initialised backend
    of that name; when it is not initialised here and
    ``setup(fail_on_missing_backend=False)``, the list of its volumes. A list
    gives a list.

    :param save: also write every record to the store, replacing stored
        records with the same ids.
    :raises InvalidArgument: malformed input (bad JSON, unknown classes or
        fields, wrong types); nothing is built or saved.
    :raises BackendNotInitialised: a resource's backend is not initialised
        and ``fail_on_missing_backend`` is True; nothing is saved.
    """
    store = runtime.store("aiocinder.load()")
    if isinstance(data, str | bytes):
        if len(data) > MAX_TEXT:
            raise InvalidArgument(f"refusing to load more than {MAX_TEXT} bytes of JSON")
        try:
            data = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument(f"not valid JSON: {exc}") from None
    builder = _Builder()
    try:
        result = builder.build(data, "data")
    except RecursionError:
        raise InvalidArgument("the data is nested too deeply") from None
    builder.check_unique()
    if save:
        for vol in builder.volumes:
            vol._record = await store.put_volume(vol.record)
        for snap in builder.snapshots:
            snap._record = await store.put_snapshot(snap.record)
        for conn in builder.connections:
            conn._record = await store.put_connection(conn.record)
    return result
