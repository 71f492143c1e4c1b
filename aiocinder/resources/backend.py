"""Backends: a storage driver, its configuration and its volumes."""

from __future__ import annotations

import asyncio
import copy
import enum
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Generator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, TypeVar, TypeVarTuple

from ..drivers import cinder as cinder_drivers
from ..drivers.base import VolumeDriver
from ..drivers.runner import DriverRunner
from ..exceptions import (
    BackendConfigConflict,
    DriverError,
    InvalidArgument,
    UsageError,
)
from ..lazy import Lazy
from ..persistence.base import PersistenceStore
from ..records import VolumeRecord
from ._base import Serializable, check_id, check_size, check_specs, check_text
from ._batch import build_all
from ._prefetch import PREFETCHABLE, check_prefetch, prefetch_lists
from ._runtime import runtime
from .volume import Volume

__all__ = ["Backend", "BackendStatistics"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_SECRET_WORDS = ("password", "secret", "passwd", "token", "private_key", "auth_key",
                 "access_key", "jwt", "one_time_pass", "replication_device")


def is_secret(option: str) -> bool:
    """Whether a configuration option holds a secret (masked in reprs and errors)."""
    lowered = option.lower()
    return any(word in lowered for word in _SECRET_WORDS)


class BackendState(enum.Enum):
    """Where a backend is in its life."""

    NEW = "new"
    READY = "ready"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class BackendStatistics:
    """Introspection of a backend's driver-call limiter, right now.

    :ivar name: the backend's ``volume_backend_name``.
    :ivar max_concurrent_driver_calls: the limit.
    :ivar running_driver_calls: driver calls running in worker threads.
    :ivar waiting_driver_calls: calls waiting for a free slot.
    :ivar operations: operations in flight (from their first to their last step).
    """

    name: str
    max_concurrent_driver_calls: int
    running_driver_calls: int
    waiting_driver_calls: int
    operations: int


def _normalise_stats(stats: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Cinder's stats dict, always with a ``pools`` list (legacy reports get one pool)."""
    out = copy.deepcopy(dict(stats))
    out.setdefault("volume_backend_name", name)
    if not out.get("pools"):
        pool = {k: v for k, v in out.items() if k not in ("pools", "volume_backend_name")}
        pool["pool_name"] = name
        out["pools"] = [pool]
    return out


def _jsonable(value: Any) -> Any:
    """A driver option as JSON can hold it (classes as their import path)."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): ("***" if is_secret(str(k)) else _jsonable(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return repr(value)


def _cinder_adapter(volume_driver: str | type[Any]) -> type[Any]:
    """The adapter class that runs a Cinder driver (see aiocinder.drivers.cinder)."""
    options = runtime.options
    return cinder_drivers.adapter_class(
        volume_driver, store=runtime.bookkeeping_store(), host=options.host,
        project_id=options.project_id, user_id=options.user_id,
        root_helper=options.root_helper, cinder_options=options.cinder_options,
    )


def _load_driver_class(volume_driver: str | type[Any]) -> type[Any]:
    if cinder_drivers.is_cinder_driver(volume_driver):
        return _cinder_adapter(volume_driver)
    if isinstance(volume_driver, type):
        return volume_driver
    module_name, _, class_name = volume_driver.rpartition(".")
    if not module_name:
        raise InvalidArgument(f"volume_driver must be 'package.module.Class': {volume_driver!r}")
    try:
        # in a daemon thread: see import_in_daemon_thread (eventlet's first import)
        cls = getattr(cinder_drivers.import_in_daemon_thread(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise InvalidArgument(f"cannot import volume_driver {volume_driver!r}: {exc}") from exc
    if not isinstance(cls, type):
        raise InvalidArgument(f"volume_driver {volume_driver!r} is not a class")
    if cinder_drivers.is_cinder_driver(cls):  # a Cinder driver outside Cinder's tree
        return _cinder_adapter(cls)
    return cls


class Backend(Serializable):
    """One storage backend: a driver instance and the volumes it holds.

    Build it with keyword options and ``await`` it (or use ``async with``)::

        backend = await aiocinder.Backend(
            volume_backend_name="files",
            volume_driver="aiocinder.drivers.file.FileDriver",
            volumes_dir="/var/lib/aiocinder/volumes",
        )

    Awaiting imports and constructs the driver, runs its ``do_setup`` and
    ``check_for_setup_error`` and reads its stats, all in a worker thread, then
    registers the backend in :attr:`backends`. Awaiting a backend whose name
    is registered returns the registered object when every option compares
    equal; with other options it raises :class:`BackendConfigConflict`.

    :param volume_backend_name: the backend's name, unique in the process.
    :param volume_driver: the driver class, or its import path.
    :param max_concurrent_driver_calls: how many driver calls may run at once
        in worker threads (8 by default).
    :param driver_options: passed to the driver class as keyword arguments.
    :raises InvalidArgument: bad options (before anything starts).
    """

    #: Initialised backends by ``volume_backend_name``.
    backends: ClassVar[dict[str, Backend]] = runtime.backends
    #: The active metadata store (set by :func:`aiocinder.setup`, None after shutdown).
    persistence: ClassVar[PersistenceStore | None] = None

    def __init__(
        self,
        volume_backend_name: str,
        *,
        volume_driver: str | type[Any],
        max_concurrent_driver_calls: int = 8,
        **driver_options: Any,
    ) -> None:
        name = check_text(volume_backend_name, "volume_backend_name")
        if not name or any(c in name for c in "@#/"):
            raise InvalidArgument(
                f"volume_backend_name must be a non-empty str without '@', '#' or '/': "
                f"{volume_backend_name!r}"
            )
        if not isinstance(volume_driver, str | type):
            raise InvalidArgument(f"volume_driver must be a class or an import path: "
                                  f"{volume_driver!r}")
        check_size(max_concurrent_driver_calls, "max_concurrent_driver_calls")
        self._name = name
        self._config: dict[str, Any] = {
            "volume_driver": volume_driver,
            "max_concurrent_driver_calls": max_concurrent_driver_calls,
            **driver_options,
        }
        self._driver_options = driver_options
        self._runner = DriverRunner(max_concurrent_driver_calls)
        self._driver: VolumeDriver | None = None
        self._stats: dict[str, Any] = {}
        self._state = BackendState.NEW
        self._generation = runtime.generation
        self._operations: set[asyncio.Task[Any]] = set()
        self._volumes: Lazy[list[Volume]] = Lazy(Backend._load_volumes)
        self._entered: Backend = self

    # -- lifecycle ---------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Backend]:
        return self._initialise().__await__()

    async def __aenter__(self) -> Backend:
        backend = await self
        self._entered = backend
        return backend

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._entered.close()

    async def _initialise(self) -> Backend:
        runtime.store("Backend()")
        registered = runtime.backends.get(self._name)
        if registered is None:
            starting = runtime.starting.get(self._name)
            if starting is None:
                starting = asyncio.get_running_loop().create_task(self._start())
                runtime.starting[self._name] = starting
                starting.add_done_callback(self._started)
            registered = await asyncio.shield(starting)
        return registered._same_as(self)

    def _started(self, task: asyncio.Task[Backend]) -> None:
        if runtime.starting.get(self._name) is task:
            del runtime.starting[self._name]
        if not task.cancelled():
            task.exception()

    def _same_as(self, other: Backend) -> Backend:
        if other is not self and other._config != self._config:
            raise BackendConfigConflict(
                f"backend {self._name!r} is already initialised with another configuration "
                f"({self._describe()}); shut it down first or use another name"
            )
        return self

    async def _start(self) -> Backend:
        if self._state is not BackendState.NEW:
            raise UsageError(f"backend {self._name!r} was closed; build a new Backend")
        self._generation = runtime.generation
        driver = await self._runner.run(self._build_driver)
        self._driver = driver
        try:
            self._stats = await self._fetch_stats()
        except BaseException:
            await self._runner.run(driver.stop)
            raise
        self._state = BackendState.READY
        runtime.backends[self._name] = self
        return self

    def _build_driver(self) -> VolumeDriver:
        """Import, construct and set up the driver (runs in a worker thread)."""
        cls = _load_driver_class(self._config["volume_driver"])
        try:
            driver = cls(backend_name=self._name, **self._driver_options)
        except TypeError as exc:
            raise InvalidArgument(
                f"invalid options for {cls.__name__} on backend {self._name!r}: {exc}"
            ) from exc
        try:
            driver.do_setup()
            driver.check_for_setup_error()
        except Exception as exc:
            raise DriverError(
                f"driver {cls.__name__} of backend {self._name!r} failed to set up: {exc}",
                resource=self,
            ) from exc
        if not isinstance(driver, VolumeDriver):
            raise InvalidArgument(
                f"{cls.__name__} lacks driver methods; subclass "
                "aiocinder.drivers.base.BaseDriver"
            )
        return driver

    async def close(self) -> None:
        """Wait for this backend's operations, stop its driver and unregister it.

        Idempotent. Volumes of a closed backend can be loaded but not operated on.
        """
        if self._state is BackendState.CLOSED:
            return
        self._state = BackendState.CLOSED
        while self._operations:
            await asyncio.wait(set(self._operations))
        if runtime.backends.get(self._name) is self:
            del runtime.backends[self._name]
        if self._driver is not None:
            await self._runner.run(self._driver.stop)

    # -- introspection -----------------------------------------------------

    @property
    def name(self) -> str:
        """The ``volume_backend_name``."""
        return self._name

    volume_backend_name = name

    @property
    def config(self) -> dict[str, Any]:
        """The options the backend was built with (a copy; secrets included)."""
        return dict(self._config)

    @property
    def driver(self) -> VolumeDriver:
        """The driver instance.

        :raises UsageError: the backend was not awaited yet.
        """
        if self._driver is None:
            raise UsageError(f"backend {self._name!r} is not initialised: await it first")
        return self._driver

    @property
    def pool_names(self) -> tuple[str, ...]:
        """Names of the pools in the last stats read."""
        return tuple(str(p["pool_name"]) for p in self._stats.get("pools", ()))

    def statistics(self) -> BackendStatistics:
        """The driver-call limiter's state, for bulk scans and benchmarks."""
        stats = self._runner.statistics()
        return BackendStatistics(
            name=self._name,
            max_concurrent_driver_calls=stats.max_concurrent_driver_calls,
            running_driver_calls=stats.running,
            waiting_driver_calls=stats.waiting,
            operations=len(self._operations),
        )

    def _describe(self) -> str:
        shown = {k: ("***" if is_secret(k) else v) for k, v in self._config.items()}
        return ", ".join(f"{k}={v!r}" for k, v in shown.items())

    def __repr__(self) -> str:
        return f"<Backend {self._name!r} {self._state.value}>"

    # -- serialization -----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The backend as JSON-ready data: its name and, when loaded, its volumes.

        With ``setup(output_all_backend_info=True)`` the driver options come
        too, secrets masked as ``"***"`` (they are never serialized).
        """
        data: dict[str, Any] = {"class": "Backend", "volume_backend_name": self._name}
        if runtime.options.output_all_backend_info:
            data["config"] = {k: ("***" if is_secret(k) else _jsonable(v))
                              for k, v in self._config.items()}
        cached = self._volumes.peek()
        if isinstance(cached, list):
            data["volumes"] = [vol.to_dict() for vol in cached]
        return data

    async def dump(self) -> dict[str, Any]:
        """Load the volumes with their snapshots and connections, then :meth:`to_dict`.

        Three queries whatever the number of volumes (see ``prefetch``).
        """
        await self.volumes(prefetch=PREFETCHABLE)
        return self.to_dict()

    # -- calls the resources make -------------------------------------------

    def _ready(self, method: str) -> VolumeDriver:
        """The driver, if the backend may run operations now."""
        runtime.check(f"Backend.{method}()", self._generation)
        if self._state is not BackendState.READY or self._driver is None:
            raise UsageError(f"{method}() on backend {self._name!r}, which is "
                             f"{self._state.value}")
        return self._driver

    async def _call(self, func: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run a driver method in a worker thread under this backend's limiter."""
        return await self._runner.run(func, *args)

    async def _operation(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run an operation shielded, tracked by this backend and the runtime."""
        return await runtime.run_operation(coro, self._operations)

    async def _fetch_stats(self) -> dict[str, Any]:
        driver = self.driver
        return _normalise_stats(await self._call(driver.get_volume_stats, True), self._name)

    def _volume_added(self, volume: Volume) -> None:
        cached = self._volumes.peek()
        if isinstance(cached, list) and volume not in cached:
            cached.append(volume)

    def _volume_removed(self, volume: Volume) -> None:
        cached = self._volumes.peek()
        if isinstance(cached, list) and volume in cached:
            cached.remove(volume)

    # -- the public operations ----------------------------------------------

    async def stats(self, refresh: bool = False) -> dict[str, Any]:
        """The driver's stats (Cinder's dict, always with a ``pools`` list).

        :param refresh: ask the driver again instead of returning the last read.
        :raises DriverError: the driver failed to report.
        """
        self._ready("stats")
        if refresh:
            try:
                self._stats = await self._fetch_stats()
            except Exception as exc:
                raise DriverError(f"backend {self._name!r} failed to report stats: {exc}",
                                  resource=self) from exc
        return copy.deepcopy(self._stats)

    async def volumes(self, *, prefetch: Collection[str] = ()) -> list[Volume]:
        """This backend's volumes (lazy: loaded once, then cached until :meth:`refresh`).

        :param prefetch: lazy lists to load at the same time for every volume,
            ``("snapshots", "connections")`` or a part of it: one query per kind
            whatever the number of volumes, instead of one per volume later.
        :raises InvalidArgument: an unknown name in ``prefetch``.
        """
        runtime.check("Backend.volumes()", self._generation)
        wanted = check_prefetch(prefetch)
        volumes = await self._volumes.get(self)
        if wanted:
            await prefetch_lists(volumes, wanted)
        return list(volumes)

    async def iter_volumes(
        self,
        *,
        status: str | None = None,
        name: str | None = None,
        batch_size: int = 500,
        prefetch: Collection[str] = (),
    ) -> AsyncIterator[Volume]:
        """Stream this backend's volumes, ``batch_size`` at a time.

        Memory stays bounded by the batch size, not by the number of volumes:
        nothing is cached on the backend. Filters run in the database.

        :param status: only volumes with this status.
        :param name: only volumes with this name.
        :param prefetch: as for :meth:`volumes`, one query per kind and batch.
        :raises InvalidArgument: bad ``batch_size`` or ``prefetch``.
        """
        runtime.check("Backend.iter_volumes()", self._generation)
        store = runtime.store("Backend.iter_volumes()")
        wanted = check_prefetch(prefetch)
        check_size(batch_size, "batch_size")
        batch: list[Volume] = []
        records = store.iter_volumes(self._name, status=status, volume_name=name,
                                     batch_size=batch_size)
        async for record in records:
            batch.append(Volume(record))
            if len(batch) == batch_size:
                if wanted:
                    await prefetch_lists(batch, wanted)
                for vol in batch:
                    yield vol
                batch = []
        if wanted and batch:
            await prefetch_lists(batch, wanted)
        for vol in batch:
            yield vol

    async def _load_volumes(self) -> list[Volume]:
        store = runtime.store("Backend.volumes()")
        return await build_all(Volume, await store.get_volumes(backend_name=self._name))

    async def refresh(self) -> None:
        """Drop cached lazy properties (:meth:`volumes`); the next await queries again."""
        runtime.check("Backend.refresh()", self._generation)
        self._volumes.reset()

    async def create_volume(
        self,
        size: int,
        name: str | None = None,
        description: str | None = None,
        *,
        id: str | None = None,
        pool_name: str | None = None,
        extra_specs: Mapping[str, str] | None = None,
        qos_specs: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        availability_zone: str | None = None,
        volume_type_name: str | None = None,
    ) -> Volume:
        """Create a volume of ``size`` GiB.

        The record is stored as ``creating`` before the driver runs, then
        ``available`` (or ``error``, and :class:`DriverError` is raised).

        :param id: a caller-chosen id; if a resource with it already exists,
            :class:`AlreadyExists` is raised and nothing is created or changed.
        :param pool_name: one of :attr:`pool_names` (the first by default).
        :raises InvalidArgument: bad arguments; nothing was stored.
        :raises AlreadyExists: the id is taken.
        :raises DriverError: the driver failed; ``error.resource`` is the volume,
            stored with status ``error``.
        """
        driver = self._ready("create_volume")
        record = VolumeRecord(
            id=check_id(id),
            backend_name=self._name,
            size=check_size(size),
            name=check_text(name, "name"),
            description=check_text(description, "description", limit=65535),
            host=self._host(pool_name),
            availability_zone=check_text(availability_zone, "availability_zone"),
            volume_type_name=check_text(volume_type_name, "volume_type_name"),
            extra_specs=check_specs(extra_specs, "extra_specs"),
            qos_specs=check_specs(qos_specs, "qos_specs"),
            metadata=check_specs(metadata, "metadata"),
            project_id=runtime.options.project_id,
            user_id=runtime.options.user_id,
        )
        volume = Volume(record)
        await self._operation(
            volume._locked(volume._create(driver.create_volume), None, "create", reload=False)
        )
        return volume

    def _host(self, pool_name: str | None) -> str:
        pools = self.pool_names
        if pool_name is None:
            pool_name = pools[0] if pools else self._name
        elif pool_name not in pools:
            raise InvalidArgument(
                f"pool {pool_name!r} is not a pool of backend {self._name!r} "
                f"(pools: {', '.join(pools)})"
            )
        return f"{runtime.options.host}@{self._name}#{pool_name}"
