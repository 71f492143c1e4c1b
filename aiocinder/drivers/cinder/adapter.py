"""The Cinder driver adapter: aiocinder's driver protocol around a Cinder driver.

Importing this module imports Cinder (seconds); aiocinder does it in a worker
thread when the first Cinder backend starts. Import it through
:func:`aiocinder.drivers.cinder.adapter_class`, which keeps the root logger
as it was (importing Cinder makes oslo.log add a handler to it).

While at least one Cinder backend runs, the process is set up for Cinder
(:class:`CinderProcess`); when the last one stops, every change is undone:

* Cinder's ``[DEFAULT]`` options from ``setup(**cinder_options)`` (plus
  ``host``, and ``state_path`` defaulting to ``~/.local/state/aiocinder/cinder``
  or ``$XDG_STATE_HOME/aiocinder/cinder``), and ``[oslo_concurrency]
  lock_path`` defaulting to ``$state_path/lock``;
* ``cinder.db.api``'s functions answered from aiocinder's store
  (:mod:`aiocinder.drivers.cinder._db`);
* Cinder's coordinator started (its file locks live in ``state_path``);
* as root, Cinder's and os-brick's privsep contexts run in this process
  instead of starting a privsep daemon through sudo; otherwise
  ``cinder.utils.get_root_helper`` returns ``setup(root_helper=...)`` and
  oslo.privsep starts its daemon with that helper.

Eventlet is never monkeypatched, and Cinder's logging goes to the standard
``logging`` module under Cinder's logger names, configured by the application.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import json
import logging
import os
import shlex
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cinder import context as cinder_context
from cinder import coordination, exception, objects
from cinder.volume import driver as cinder_driver
from oslo_config import cfg
from oslo_utils import importutils

from ...exceptions import InvalidArgument
from ...persistence.base import PersistenceStore
from ...records import SnapshotRecord, VolumeRecord
from ..base import ModelUpdate
from ._config import BackendConfig, Overrides, apply_nested, apply_options, warn_unknown
from ._db import DatabasePatch, DatabaseShim, LoopBridge
from ._objects import (
    SNAPSHOT_FIELDS,
    VOLUME_FIELDS,
    TypeRegistry,
    record_changes,
    snapshot_row,
    volume_row,
)

__all__ = ["CinderDriverAdapter", "CinderProcess", "Settings"]

_log = logging.getLogger("aiocinder.drivers.cinder")

objects.register_all()
# Cinder's volume manager needs the objects registered before it is imported;
# it registers the backend options (volume_backend_opts) every backend has.
cinder_manager = importlib.import_module("cinder.volume.manager")

#: The objects' fields the adapter fills from the record (the rest load lazily).
_VOLUME_ATTRS = ("metadata", "admin_metadata", "volume_type", "volume_type.extra_specs")

#: Option lists ``cinder.volume.driver.VolumeDriver`` adds to every backend.
_COMMON_OPTS = [
    *cinder_manager.volume_backend_opts,
    *cinder_driver.volume_opts,
    *cinder_driver.iser_opts,
    *cinder_driver.nvmet_opts,
    *cinder_driver.nvmeof_opts,
    *cinder_driver.scst_opts,
    *cinder_driver.backup_opts,
    *cinder_driver.image_opts,
    *cinder_driver.fqdn_opts,
]


@dataclass(frozen=True)
class Settings:
    """What the adapter takes from ``aiocinder.setup()``."""

    store: PersistenceStore
    host: str
    project_id: str | None
    user_id: str | None
    root_helper: str
    cinder_options: Mapping[str, Any] = field(default_factory=dict)


def default_state_path() -> str:
    """Where Cinder keeps its state (locks, mount points) unless told otherwise."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return os.path.join(base, "aiocinder", "cinder")


class CinderProcess:
    """What every Cinder backend of the process shares: set up by the first
    backend to start, undone when the last one stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._shim: DatabaseShim | None = None
        self._undo: list[Callable[[], None]] = []
        self._patch = DatabasePatch()

    @property
    def active(self) -> bool:
        """Whether Cinder backends run in this process now."""
        return self._users > 0

    def acquire(self, settings: Settings, bridge: LoopBridge) -> DatabaseShim:
        """Count one more Cinder backend; set the process up for the first.

        :raises InvalidArgument: a ``[DEFAULT]`` option is invalid.
        """
        with self._lock:
            if self._users:
                assert self._shim is not None
                if settings.store is not self._shim.store:
                    raise RuntimeError("Cinder backends of two aiocinder setups at once")
                self._users += 1
                return self._shim
            try:
                self._shim = self._start(settings, bridge)
            except BaseException:
                self._stop()
                raise
            self._users = 1
            return self._shim

    def release(self) -> None:
        """Count one Cinder backend fewer; undo everything after the last."""
        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                self._stop()

    def _start(self, settings: Settings, bridge: LoopBridge) -> DatabaseShim:
        overrides = Overrides()
        self._undo.append(overrides.clear)
        cinder_options = dict(settings.cinder_options)
        options = {"state_path": default_state_path(), "host": settings.host, **cinder_options}
        unknown = apply_options(overrides, options, None)
        warn_unknown(unknown, "Cinder's [DEFAULT] options")
        nested = cinder_options.get("oslo_concurrency")
        if not (isinstance(nested, Mapping) and "lock_path" in nested):
            apply_nested(overrides, "oslo_concurrency", {"lock_path": "$state_path/lock"})
        os.makedirs(cfg.CONF.state_path, mode=0o700, exist_ok=True)

        self._set_up_privileges(settings.root_helper)

        shim = DatabaseShim(settings.store, bridge, TypeRegistry(),
                            project_id=settings.project_id, user_id=settings.user_id)
        self._patch.install(shim)
        self._undo.append(self._patch.remove)

        coordination.COORDINATOR.start()
        self._undo.append(coordination.COORDINATOR.stop)
        return shim

    def _set_up_privileges(self, root_helper: str) -> None:
        import os_brick.privileged
        from cinder import privsep as cinder_privsep
        from cinder import utils as cinder_utils
        from oslo_privsep import priv_context

        if os.geteuid() == 0:
            contexts = [cinder_privsep.sys_admin_pctxt, os_brick.privileged.default]
            hide = getattr(os_brick.privileged, "brick_privsep_hide_output", None)
            if hide is not None:
                contexts.append(hide)
            for ctx in contexts:
                self._undo.append(functools.partial(ctx.set_client_mode, ctx.client_mode))
                ctx.set_client_mode(False)
            return
        original = cinder_utils.get_root_helper
        cinder_utils.get_root_helper = lambda: root_helper
        self._undo.append(lambda: setattr(cinder_utils, "get_root_helper", original))
        priv_context.init(root_helper=shlex.split(root_helper))

    def _stop(self) -> None:
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # undo everything else regardless
                _log.warning("undoing Cinder's process setup: %s failed: %s", undo, exc)
        self._shim = None


#: The process's one :class:`CinderProcess`.
PROCESS = CinderProcess()


def _driver_path(volume_driver: str | type[Any]) -> str:
    if isinstance(volume_driver, str):
        return volume_driver
    return f"{volume_driver.__module__}.{volume_driver.__qualname__}"


def load_driver_class(volume_driver: str | type[Any]) -> type[Any]:
    """The Cinder driver class ``volume_driver`` names.

    :raises InvalidArgument: it cannot be imported, or is not a Cinder volume driver.
    """
    if isinstance(volume_driver, str):
        path = cinder_manager.MAPPING.get(volume_driver, volume_driver)
        if path != volume_driver:
            _log.warning("Cinder driver path %s is deprecated; use %s", volume_driver, path)
        try:
            cls = importutils.import_class(path)
        except (ImportError, AttributeError, ValueError) as exc:
            raise InvalidArgument(f"cannot import Cinder driver {volume_driver!r}: {exc}"
                                  ) from exc
    else:
        cls = volume_driver
    if not (isinstance(cls, type) and issubclass(cls, cinder_driver.BaseVD)):
        raise InvalidArgument(f"{_driver_path(volume_driver)!r} is not a Cinder volume driver")
    return cls


class CinderDriverAdapter:
    """aiocinder's synchronous driver protocol around one Cinder volume driver.

    Built per backend, in a worker thread, as ``cls(backend_name=..., **options)``
    by a class :meth:`bind` made for the Cinder driver. Every method builds the
    Cinder objects the driver expects from aiocinder records, calls the
    driver, and returns the model update for aiocinder to persist.

    :param backend_name: the backend's name; also the name of its oslo.config group.
    :param options: the backend's Cinder options (validated here).
    :raises InvalidArgument: an option is invalid, or the driver cannot be loaded.
    """

    #: The Cinder driver (path or class); set by :meth:`bind`.
    cinder_driver: ClassVar[str | type[Any]]
    #: The runtime's settings; set by :meth:`bind`.
    settings: ClassVar[Settings]

    @classmethod
    def bind(cls, volume_driver: str | type[Any], **settings: Any) -> type[CinderDriverAdapter]:
        """A subclass for one Cinder driver, named after the driver's class."""
        path = _driver_path(volume_driver)
        name = path.rpartition(".")[2]
        attributes = {"cinder_driver": volume_driver, "settings": Settings(**settings),
                      "__module__": cls.__module__, "__qualname__": name, "__doc__": cls.__doc__}
        return type(name, (cls,), attributes)

    def __init__(self, *, backend_name: str, **options: Any) -> None:
        self.backend_name = backend_name
        self._driver: Any = None
        self._released = threading.Event()
        cls = load_driver_class(self.cinder_driver)
        self.driver_class = cls
        self._bridge = LoopBridge.capture()
        self._shim = PROCESS.acquire(self.settings, self._bridge)
        self._config = BackendConfig(backend_name, {
            "volume_backend_name": backend_name,
            "volume_driver": _driver_path(self.cinder_driver),
            **options,
        })
        try:
            configuration = self._config.build([*self._driver_options(cls), *_COMMON_OPTS])
            self._driver = cls(
                configuration=configuration,
                host=f"{self.settings.host}@{backend_name}",
                cluster_name=None,
                active_backend_id=None,
                is_vol_db_empty=self._no_volumes_yet(),
            )
            self._config.apply_pending(cls.__name__)
        except BaseException:
            self._release()
            raise

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for backend {self.backend_name!r}>"

    @property
    def driver(self) -> Any:
        """The Cinder driver instance."""
        return self._driver

    # -- lifecycle -----------------------------------------------------------------

    def do_setup(self) -> None:
        """Check the driver is supported (or allowed), then its ``do_setup``."""
        with self._released_on_error():
            if not self._driver.supported and not self._driver.configuration.safe_get(
                    "enable_unsupported_driver"):
                raise RuntimeError(
                    f"{self.driver_class.__name__} is marked unsupported by Cinder; set "
                    "enable_unsupported_driver=True to use it anyway"
                )
            self._driver.do_setup(self._context())

    def check_for_setup_error(self) -> None:
        """The driver's ``check_for_setup_error``, then what Cinder's volume
        manager does next: ``init_capabilities``, ``set_throttle``, ``set_initialized``."""
        with self._released_on_error():
            self._driver.check_for_setup_error()
            self._driver.init_capabilities()
            self._driver.set_throttle()
            self._driver.set_initialized()

    def stop(self) -> None:
        """Forget this backend's configuration; after the last Cinder backend,
        undo the process setup. Idempotent."""
        self._release()

    def _release(self) -> None:
        if self._released.is_set():
            return
        self._released.set()
        self._config.clear()
        PROCESS.release()

    @contextlib.contextmanager
    def _released_on_error(self) -> Any:
        # a backend whose setup fails is never stopped: release here
        try:
            yield
        except BaseException:
            self._release()
            raise

    @staticmethod
    def _driver_options(cls: type[Any]) -> list[Any]:
        try:
            return list(cls.get_driver_options())
        except Exception as exc:  # some drivers' lists need more of Cinder than we load
            _log.debug("%s.get_driver_options() failed: %s", cls.__name__, exc)
            return []

    def _no_volumes_yet(self) -> bool:
        store = self.settings.store

        async def empty() -> bool:
            volumes = store.iter_volumes(self.backend_name, batch_size=1)
            try:
                async for _ in volumes:
                    return False
                return True
            finally:
                aclose = getattr(volumes, "aclose", None)
                if aclose is not None:
                    await aclose()

        return self._bridge.run(empty)

    # -- building Cinder objects -------------------------------------------------------

    @staticmethod
    def _context() -> Any:
        return cinder_context.get_admin_context()

    def _volume(self, ctxt: Any, record: VolumeRecord) -> Any:
        row = volume_row(record, self._shim.types)
        volume = objects.Volume(ctxt)
        return objects.Volume._from_db_object(ctxt, volume, row, expected_attrs=_VOLUME_ATTRS)

    def _snapshot(self, ctxt: Any, record: SnapshotRecord) -> Any:
        volume_record = self._shim._run(self._shim._volume, record.volume_id)
        row = snapshot_row(record, volume_record, self._shim.types)
        snapshot = objects.Snapshot._from_db_object(ctxt, objects.Snapshot(ctxt), row,
                                                    expected_attrs=["metadata"])
        snapshot.volume = self._volume(ctxt, volume_record)
        snapshot.obj_reset_changes(["volume"])
        return snapshot

    def _fresh(self, record: VolumeRecord) -> VolumeRecord:
        """The volume as stored now (with what the driver saved since ``record``)."""
        try:
            return self._shim._run(self._shim._volume, record.id)
        except exception.VolumeNotFound:
            return record

    @staticmethod
    def _changes(obj: Any, returned: Any, fields: Mapping[str, str]) -> dict[str, Any]:
        """Record changes: fields the driver set on ``obj``, then its returned update
        (Cinder's manager applies the returned update to the object and saves it)."""
        values = {name: obj[name] for name in obj.obj_what_changed() if name in fields}
        if returned:
            if not isinstance(returned, Mapping):
                raise TypeError(f"the Cinder driver returned {returned!r}, not a dict or None")
            values.update(returned)
        return record_changes(values, fields, f"{obj.obj_name()} {obj.id}")

    def _save(self, obj: Any) -> None:
        """Persist what the driver changed on an object it was given but no
        model update carries back (as Cinder's manager would save it)."""
        fields = VOLUME_FIELDS if obj.obj_name() == "Volume" else SNAPSHOT_FIELDS
        if any(name in fields for name in obj.obj_what_changed()):
            with obj.obj_as_admin():
                obj.save()

    def _volume_update(self, volume: Any, returned: Any) -> ModelUpdate | None:
        return self._changes(volume, returned, VOLUME_FIELDS) or None

    # -- the driver protocol ----------------------------------------------------------

    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        """The driver's stats (a copy)."""
        return copy.deepcopy(dict(self._driver.get_volume_stats(refresh=refresh)))

    def create_volume(self, volume: VolumeRecord) -> ModelUpdate | None:
        """``create_volume``: the new volume's record is stored (``creating``) already."""
        vol = self._volume(self._context(), volume)
        return self._volume_update(vol, self._driver.create_volume(vol))

    def delete_volume(self, volume: VolumeRecord) -> None:
        vol = self._volume(self._context(), volume)
        self._driver.delete_volume(vol)

    def create_snapshot(self, snapshot: SnapshotRecord) -> ModelUpdate | None:
        snap = self._snapshot(self._context(), snapshot)
        returned = self._driver.create_snapshot(snap)
        self._save(snap.volume)
        return self._changes(snap, returned, SNAPSHOT_FIELDS) or None

    def delete_snapshot(self, snapshot: SnapshotRecord) -> None:
        snap = self._snapshot(self._context(), snapshot)
        self._driver.delete_snapshot(snap)
        self._save(snap.volume)

    def create_cloned_volume(self, volume: VolumeRecord, src_vref: VolumeRecord
                             ) -> ModelUpdate | None:
        ctxt = self._context()
        vol, source = self._volume(ctxt, volume), self._volume(ctxt, src_vref)
        returned = self._driver.create_cloned_volume(vol, source)
        self._save(source)
        return self._volume_update(vol, returned)

    def create_volume_from_snapshot(self, volume: VolumeRecord, snapshot: SnapshotRecord
                                    ) -> ModelUpdate | None:
        ctxt = self._context()
        vol, snap = self._volume(ctxt, volume), self._snapshot(ctxt, snapshot)
        returned = self._driver.create_volume_from_snapshot(vol, snap)
        self._save(snap.volume)
        return self._volume_update(vol, returned)

    def extend_volume(self, volume: VolumeRecord, new_size: int) -> None:
        vol = self._volume(self._context(), volume)
        self._driver.extend_volume(vol, new_size)
        self._save(vol)

    def create_export(self, volume: VolumeRecord, connector: Mapping[str, Any]
                      ) -> ModelUpdate | None:
        """``create_export``; its model update is stored at once, as Cinder's
        volume manager does, so ``initialize_connection`` sees it."""
        ctxt = self._context()
        vol = self._volume(ctxt, self._fresh(volume))
        changes = self._volume_update(vol, self._driver.create_export(
            ctxt, vol, copy.deepcopy(dict(connector))))
        if changes:
            self._shim._run(self._shim._change_volume, vol.id, lambda _: changes)
        return changes

    def remove_export(self, volume: VolumeRecord) -> None:
        ctxt = self._context()
        vol = self._volume(ctxt, self._fresh(volume))
        self._driver.remove_export(ctxt, vol)
        self._save(vol)

    def initialize_connection(self, volume: VolumeRecord, connector: Mapping[str, Any]
                              ) -> dict[str, Any]:
        """The driver's connection info, as JSON data."""
        vol = self._volume(self._context(), self._fresh(volume))
        info = self._driver.initialize_connection(vol, copy.deepcopy(dict(connector)))
        self._save(vol)
        loaded: dict[str, Any] = json.loads(json.dumps(info, default=str))
        return loaded

    def terminate_connection(self, volume: VolumeRecord, connector: Mapping[str, Any] | None,
                             force: bool = False) -> None:
        vol = self._volume(self._context(), self._fresh(volume))
        self._driver.terminate_connection(
            vol, None if connector is None else copy.deepcopy(dict(connector)), force=force)
        self._save(vol)

    def validate_connector(self, connector: Mapping[str, Any]) -> None:
        self._driver.validate_connector(copy.deepcopy(dict(connector)))
