"""What volumes, snapshots and connections share: argument checks, identity,
record bookkeeping with compare-and-swap, and the plain dict views."""

from __future__ import annotations

import inspect
import json
import logging
import re
import uuid
from collections.abc import Coroutine, Iterable, Mapping, Set
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar, overload

from ..exceptions import (
    BackendNotInitialised,
    ConflictError,
    InvalidArgument,
    InvalidState,
    NotFound,
)
from ..persistence.base import PersistenceStore
from ..records import ConnectionRecord, SnapshotRecord, VolumeRecord
from ._runtime import runtime

if TYPE_CHECKING:
    from .backend import Backend

__all__ = ["Editable", "Field", "Resource"]

R = TypeVar("R", VolumeRecord, SnapshotRecord, ConnectionRecord)
T = TypeVar("T")

#: Statuses during which another operation must not start.
TRANSITIONAL = frozenset({"creating", "deleting", "extending", "attaching", "detaching"})

_MAX_TEXT = 255
_MAX_DESCRIPTION = 65535
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_CONFLICT_RETRIES = 20


# -- argument checks (each raises InvalidArgument before anything is persisted) --


def check_size(value: object, what: str = "size") -> int:
    """A size in whole GiB: an ``int`` >= 1 (``bool`` refused)."""
    if type(value) is not int:
        raise InvalidArgument(f"{what} must be a whole number of GiB (an int), got {value!r}")
    if value < 1:
        raise InvalidArgument(f"{what} must be at least 1 GiB, got {value}")
    return value


def check_text(value: object, what: str, *, limit: int = _MAX_TEXT) -> str | None:
    """Optional user text: None, or a str of at most ``limit`` characters that
    every store can hold (no NUL, encodable as UTF-8)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str or None, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidArgument(f"{what} is longer than {limit} characters")
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{what} is not valid Unicode text: {exc.reason}") from None
    return value


def check_id(value: object, what: str = "id") -> str:
    """A caller-supplied id (or a new UUID4 when None): letters, digits, ``._-``."""
    if value is None:
        return str(uuid.uuid4())
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidArgument(
            f"{what} must be 1 to 255 letters, digits, '.', '_' or '-' (starting with a "
            f"letter or digit), got {value!r}"
        )
    return value


def check_specs(value: object, what: str) -> dict[str, str]:
    """A mapping of str to str (extra specs, QoS specs, metadata)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{what} must be a mapping of str to str, got {value!r}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"{what} keys must be non-empty str, got {key!r}")
        check_text(key, f"{what} key {key!r}")
        if not isinstance(item, str):
            raise InvalidArgument(f"{what}[{key!r}] must be a str, got {type(item).__name__}")
        check_text(item, f"{what}[{key!r}]")
        out[key] = item
    return out


def check_json_mapping(value: object, what: str) -> dict[str, Any]:
    """A mapping with str keys whose contents JSON can hold (connector info...)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidArgument(f"{what} must be a mapping with str keys, got {value!r}")
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} must hold only JSON values: {exc}") from None
    check_text(text, what, limit=1 << 20)
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def readonly(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only view (records are shared; change them through the API).

    No copy is needed: a record's mappings are never changed in place (a
    change makes a new record), so the view shows what was loaded."""
    return MappingProxyType(mapping)


def volume_lock_key(volume_id: str) -> str:
    """The :meth:`PersistenceStore.lock` key of a volume's operations."""
    return f"volume:{volume_id}"


# -- the base classes ----------------------------------------------------------


class Serializable:
    """``json``, ``jsons`` and ``dumps`` from a class's ``to_dict`` and ``dump``."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    async def dump(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def json(self) -> dict[str, Any]:
        """Same as :meth:`to_dict`."""
        return self.to_dict()

    @property
    def jsons(self) -> str:
        """:attr:`json` as a JSON string."""
        return dumps_json(self.to_dict())

    async def dumps(self) -> str:
        """:meth:`dump` as a JSON string."""
        return dumps_json(await self.dump())


def dumps_json(data: Any) -> str:
    """Compact JSON, non-ASCII kept as is."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class Resource(Serializable, Generic[R]):
    """A live volume, snapshot or connection wrapping its stored record.

    Resources compare equal by type and id. Field changes the caller may make
    (``name``, ``description``, ``metadata``) are kept aside until
    :meth:`save`; the library's own bookkeeping never writes them.
    """

    __slots__ = ("__weakref__", "_dirty", "_generation", "_record")

    _kind: ClassVar[str]
    _not_found: ClassVar[type[NotFound]]
    _invalid: ClassVar[type[InvalidState]]
    _editable: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, record: R) -> None:
        self._record: R = record
        self._generation = runtime.generation
        self._dirty: dict[str, Any] = {}

    # -- identity and plain views --

    @property
    def id(self) -> str:
        """The resource's id."""
        return self._record.id

    @property
    def record(self) -> R:
        """The record as last stored or loaded (unsaved edits not included)."""
        return self._record

    @property
    def backend_name(self) -> str:
        """The ``volume_backend_name`` of the backend the resource lives on."""
        return self._record.backend_name

    @property
    def backend(self) -> Backend:
        """The backend the resource lives on, as initialised in this process.

        :raises BackendNotInitialised: it is not initialised here.
        """
        backend = runtime.backends.get(self._record.backend_name)
        if backend is None:
            raise BackendNotInitialised(
                f"{self._kind} {self.id} belongs to backend {self._record.backend_name!r}, "
                "which is not initialised in this process",
                resource=self,
            )
        return backend

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.id == other.id

    def __hash__(self) -> int:
        return hash((type(self), self.id))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} status={self._record.status!r}>"

    def _get(self, name: str) -> Any:
        return self._dirty[name] if name in self._dirty else getattr(self._record, name)

    def _set(self, name: str, value: Any) -> None:
        self._dirty[name] = value

    # -- persistence --

    def _store(self, method: str) -> PersistenceStore:
        caller = f"{type(self).__name__}.{method}()"
        runtime.check(caller, self._generation)
        return runtime.store(caller)

    async def _fetch(self, store: PersistenceStore) -> R:
        """The stored record for this id. :raises NotFound: the row is gone."""
        raise NotImplementedError

    async def _write(self, store: PersistenceStore, record: R) -> R:
        raise NotImplementedError

    async def _persist(self, allowed: Set[str] | None = None, **changes: Any) -> None:
        """Write ``changes`` onto the stored record (compare-and-swap).

        On a version conflict the record is reloaded and the changes applied
        again; with ``allowed``, the reloaded status must still be one of
        those or :attr:`_invalid` is raised.
        """
        store = runtime.bookkeeping_store()
        for _ in range(_CONFLICT_RETRIES):
            try:
                self._record = await self._write(store, self._record.replace(**changes))
                return
            except ConflictError:
                self._record = await self._fetch(store)
                if allowed is not None and self._record.status not in allowed:
                    raise self._invalid(
                        f"{self._kind} {self.id} is {self._record.status!r} now",
                        resource=self,
                    ) from None
        raise ConflictError(
            f"{self._kind} {self.id} kept changing; gave up after {_CONFLICT_RETRIES} tries",
            resource=self,
        )

    @property
    def _lock_key(self) -> str:
        """The store lock every operation on this resource's volume holds."""
        record = self._record
        return volume_lock_key(record.id if isinstance(record, VolumeRecord) else record.volume_id)

    async def _locked(
        self,
        body: Coroutine[Any, Any, T],
        allowed: Set[str] | None,
        action: str,
        *,
        also: Iterable[Resource[Any]] = (),
        reload: bool = True,
    ) -> T:
        """Run the operation ``body`` holding the lock of this resource's volume.

        Every operation that changes a volume, its snapshots or its connections
        runs so: ``store.lock("volume:<id>")`` excludes the others, in this
        process and in every process sharing the store. Another process may
        have changed the records while we waited, so this resource (and
        ``also``) are reloaded once the lock is held and, with ``allowed``,
        this resource's status is checked again: a refused operation changes
        nothing. ``reload=False`` is for a resource not stored yet.

        :raises InvalidState: the status is no longer one of ``allowed``.
        :raises NotFound: the resource is gone.
        """
        store = runtime.bookkeeping_store()
        try:
            async with store.lock(self._lock_key):
                if reload:
                    self._record = await self._fetch(store)
                    if allowed is not None:
                        self._require_status(allowed, action)
                for other in also:
                    other._record = await other._fetch(store)
                return await body
        finally:
            if inspect.getcoroutinestate(body) == inspect.CORO_CREATED:
                body.close()  # refused before it started: no "never awaited" warning

    def _require_status(self, allowed: Set[str], action: str) -> None:
        status = self._record.status
        if status not in allowed:
            raise self._invalid(
                f"cannot {action} {self._kind} {self.id}: its status is {status!r} "
                f"(needs one of {', '.join(sorted(allowed))})",
                resource=self,
            )

    async def save(self) -> None:
        """Persist the caller's edits (``name``, ``description``, ``metadata``).

        :raises ConflictError: the record changed since it was loaded; call
            :meth:`refresh` and edit again.
        :raises UsageError: used after :func:`aiocinder.shutdown`.
        """
        store = self._store("save")
        if not self._dirty:
            return
        self._record = await self._write(store, self._record.replace(**self._dirty))
        self._dirty.clear()

    async def refresh(self) -> None:
        """Reload this object's fields and drop every cached lazy property.

        Unsaved edits are dropped too.

        :raises NotFound: the resource no longer exists.
        """
        store = self._store("refresh")
        self._record = await self._fetch(store)
        self._dirty.clear()
        self._reset_caches()

    def _reset_caches(self) -> None:
        """Drop cached lazy properties (subclasses override)."""

    # -- serialization --

    #: Lazy list properties serialized with the resource (when loaded).
    _serialized_lists: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The resource as JSON-ready data: ``"class"``, the record's fields (with
        unsaved edits) and, for a volume, its snapshots and connections if loaded."""
        record = self._record.replace(**self._dirty) if self._dirty else self._record
        data = {"class": type(self).__name__, **record.to_dict()}
        for name in self._serialized_lists:
            cached = getattr(self, f"_{name}").peek()
            if isinstance(cached, list):
                data[name] = [item.to_dict() for item in cached]
        return data

    async def dump(self) -> dict[str, Any]:
        """Load the lazy properties that are serialized, then :meth:`to_dict`."""
        for name in self._serialized_lists:
            for item in await getattr(self, name)():
                await item.dump()
        return self.to_dict()



class Field(Generic[T]):
    """A read-only field of the resource's record, typed (mappings come back read-only)."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: Resource[Any], owner: type | None = None) -> T: ...
    def __get__(self, obj: Resource[Any] | None, owner: type | None = None) -> T | Self:
        if obj is None:
            return self
        value = obj._get(self.name)
        return readonly(value) if isinstance(value, Mapping) else value  # type: ignore[return-value]


class Editable(Field[T]):
    """A field the caller may change in memory and persist with ``save()``."""

    __slots__ = ()

    def __set__(self, obj: Resource[Any], value: T) -> None:
        if self.name == "metadata":
            checked: Any = check_specs(value, "metadata")
        else:
            limit = _MAX_DESCRIPTION if self.name == "description" else _MAX_TEXT
            checked = check_text(value, self.name, limit=limit)
        obj._set(self.name, checked)


_log = logging.getLogger("aiocinder")

#: Record fields a driver's model update may set.
VOLUME_UPDATABLE = frozenset(
    {"provider_location", "provider_auth", "provider_id", "admin_metadata", "metadata",
     "bootable", "multiattach"}
)
SNAPSHOT_UPDATABLE = frozenset({"provider_location", "provider_auth", "provider_id", "metadata"})


def model_update(update: Mapping[str, Any] | None, allowed: Set[str], what: str) -> dict[str, Any]:
    """The part of a driver's model update that may change the record."""
    if not update:
        return {}
    if not isinstance(update, Mapping):
        raise TypeError(f"the driver returned {update!r} for {what}, not a dict or None")
    ignored = update.keys() - allowed
    if ignored:
        _log.debug("ignoring model update fields %s for %s", sorted(ignored), what)
    return {k: (dict(v) if isinstance(v, Mapping) else v)
            for k, v in update.items() if k in allowed}
