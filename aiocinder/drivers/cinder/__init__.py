"""Cinder's storage drivers through aiocinder (the optional extra ``aiocinder[cinder]``).

``Backend(volume_driver="cinder.volume.drivers.<...>")``, or a class that
subclasses Cinder's ``VolumeDriver``, runs that Cinder driver behind
:class:`~aiocinder.drivers.cinder.adapter.CinderDriverAdapter`, which speaks
aiocinder's synchronous driver protocol (records in, model updates out).

This module stays light: importing it (and so importing :mod:`aiocinder`)
never imports Cinder. Cinder is imported, in a worker thread, when the first
Cinder backend starts; :func:`list_supported_drivers` imports it in a
subprocess only.

How the adapter works, what it changes in the process while Cinder backends
run, and why, is in ``docs/cinder.rst``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from ...exceptions import AiocinderError, InvalidArgument

if TYPE_CHECKING:
    from ...persistence.base import PersistenceStore
    from .adapter import CinderDriverAdapter

__all__ = [
    "adapter_class",
    "import_adapter",
    "import_in_daemon_thread",
    "is_cinder_driver",
    "list_supported_drivers",
]

#: How long :func:`list_supported_drivers` lets its subprocess run (it imports
#: every driver module Cinder ships, which takes seconds).
LISTING_TIMEOUT = 300.0


def is_cinder_driver(volume_driver: object) -> bool:
    """Whether ``volume_driver`` names a Cinder driver.

    True for an import path under ``cinder.`` and for a class that subclasses
    Cinder's ``cinder.volume.driver.BaseVD`` (checked only when Cinder is
    already imported: such a class cannot exist otherwise).
    """
    if isinstance(volume_driver, str):
        return volume_driver.startswith("cinder.")
    base = getattr(sys.modules.get("cinder.volume.driver"), "BaseVD", None)
    return (isinstance(volume_driver, type) and isinstance(base, type)
            and issubclass(volume_driver, base))


def adapter_class(
    volume_driver: str | type[Any],
    *,
    store: PersistenceStore,
    host: str,
    project_id: str | None,
    user_id: str | None,
    root_helper: str,
    cinder_options: Mapping[str, Any],
) -> type[CinderDriverAdapter]:
    """The adapter class for one Cinder driver, bound to the runtime's settings.

    Imports Cinder (seconds): call it in a worker thread. The class is built
    as aiocinder builds every driver, ``cls(backend_name=..., **options)``.

    :param volume_driver: the Cinder driver's import path, or its class.
    :param store: the metadata store the driver's database calls are answered from.
    :param host: this host's name; the driver's host is ``<host>@<backend name>``.
    :param project_id: written into records the driver causes to be made.
    :param user_id: likewise.
    :param root_helper: the command that runs privileged commands when not root.
    :param cinder_options: options for Cinder's ``[DEFAULT]`` (from ``setup()``).
    :raises InvalidArgument: Cinder is not installed (the extra ``aiocinder[cinder]``).
    """
    try:
        adapter = import_adapter()
    except ImportError as exc:
        raise InvalidArgument(
            f"volume_driver {_driver_name(volume_driver)!r} is a Cinder driver, and Cinder "
            f"cannot be imported ({exc}); install the extra: pip install 'aiocinder[cinder]'"
        ) from exc
    bound = adapter.CinderDriverAdapter.bind(
        volume_driver,
        store=store,
        host=host,
        project_id=project_id,
        user_id=user_id,
        root_helper=root_helper,
        cinder_options=cinder_options,
    )
    return cast("type[CinderDriverAdapter]", bound)


def import_adapter() -> ModuleType:
    """Import :mod:`aiocinder.drivers.cinder.adapter`, and so Cinder (seconds).

    Importing Cinder makes oslo.log add a handler to the root logger when it
    has none (``oslo_log.log.register_options``); it is removed again, so
    logging stays as the application configured it. The import runs in a
    daemon thread (see :func:`import_in_daemon_thread`).

    :raises ImportError: Cinder is not installed.
    """
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        return import_in_daemon_thread(f"{__name__}.adapter")
    finally:
        for handler in list(root.handlers):
            if handler not in before and type(handler) is logging.StreamHandler:
                root.removeHandler(handler)


def import_in_daemon_thread(name: str) -> ModuleType:
    """Import module ``name`` in a daemon thread of its own and return it.

    The first import of eventlet (which Cinder and os-brick import) in a
    thread re-imports a private copy of ``threading``
    (``eventlet.patcher.original``), and that replaces the importing
    thread's end-of-thread lock: the thread can then never be joined, and
    when it is not a daemon the interpreter hangs at exit waiting for it (an
    anyio worker thread, say). A daemon thread, waited for with an event
    rather than a join, takes that harm instead.

    :raises ImportError: as :func:`importlib.import_module` does.
    """
    if name in sys.modules:
        return importlib.import_module(name)  # waits if another thread is importing it
    outcome: list[ModuleType | BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(importlib.import_module(name))
        except BaseException as exc:
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"aiocinder: import {name}", daemon=True).start()
    done.wait()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _driver_name(volume_driver: str | type[Any]) -> str:
    if isinstance(volume_driver, str):
        return volume_driver
    return f"{volume_driver.__module__}.{volume_driver.__qualname__}"


async def list_supported_drivers(output_version: int = 1) -> dict[str, dict[str, Any]]:
    """Every volume driver Cinder ships, keyed by class name, as cinderlib listed them.

    A class name that two drivers share is keyed by each one's full import
    path instead (cinderlib kept only one of them).

    Computed in a subprocess, so the hundred-odd driver modules never load
    into this process. Each entry has ``class_name``, ``class_fqn``,
    ``version``, ``ci_wiki_name``, ``supported``, ``desc`` and
    ``driver_options`` (the driver's oslo.config options).

    * ``output_version=1``: for people; every value of an option is a ``str``
      (``"None"``, ``"False"``...).
    * ``output_version=2``: for programs; option values keep their JSON types
      and ``type`` is a dict describing the option's type, whose
      ``type_class`` is the oslo.config type's class name (``"String"``,
      ``"Integer"``...).

    .. versionadded:: 0.1

    :raises InvalidArgument: ``output_version`` is not 1 or 2.
    :raises AiocinderError: Cinder is not installed, or listing failed.
    """
    if type(output_version) is not int or output_version not in (1, 2):
        raise InvalidArgument(f"output_version must be 1 or 2, got {output_version!r}")
    env = dict(os.environ)
    # The child only reads metadata: warnings from a hundred driver modules are
    # noise there, and under PYTHONWARNINGS=error they would drop drivers.
    env["PYTHONWARNINGS"] = "ignore"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiocinder.drivers.cinder._listing", str(output_version),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(LISTING_TIMEOUT):
            out, err = await process.communicate()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines() or ["no output"]
        raise AiocinderError(
            f"listing Cinder's drivers failed: {lines[-1]} (is the extra aiocinder[cinder] "
            "installed?)"
        )
    result: dict[str, dict[str, Any]] = json.loads(out)
    return result
