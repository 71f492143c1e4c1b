"""``setup()`` and ``shutdown()``: the library's lifecycle in a process."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from .exceptions import UsageError
from .persistence.base import PersistenceStore, create_store
from .resources._runtime import Options, State, runtime
from .resources.backend import Backend

__all__ = ["setup", "shutdown"]


async def setup(
    persistence_config: Mapping[str, Any] | None = None,
    *,
    fail_on_missing_backend: bool = True,
    host: str | None = None,
    project_id: str = "aiocinder",
    user_id: str = "aiocinder",
    output_all_backend_info: bool = False,
    root_helper: str = "sudo",
    **cinder_options: Any,
) -> PersistenceStore:
    """Set aiocinder up in this process: open the metadata store.

    :param persistence_config: ``{"storage": "memory"}`` (the default),
        ``{"storage": "sqlite", "connection": "sqlite:///aiocinder.sqlite"}``,
        ``{"storage": "postgresql", "connection": "postgresql://..."}``, an entry
        point name of group ``aiocinder.persistence``, a store class or instance;
        the other keys go to the store.
    :param fail_on_missing_backend: when True, loading a volume whose backend
        is not initialised in this process raises
        :class:`~aiocinder.BackendNotInitialised`; when False it loads, and only
        operations on it raise.
    :param host: the host name written into volumes' ``host`` (this machine's
        by default).
    :param project_id: written into new records.
    :param user_id: written into new records.
    :param output_all_backend_info: serialize backends with their whole config.
    :param root_helper: the command os-brick uses to run privileged commands.
    :param cinder_options: options for Cinder's ``[DEFAULT]`` section, used by
        Cinder drivers.
    :returns: the opened store (also :attr:`Backend.persistence`).
    :raises UsageError: aiocinder is already set up in this process.
    :raises InvalidArgument: unknown storage or bad store options.
    :raises PersistenceError: the store could not be opened.
    """
    if runtime.state is not State.IDLE:
        raise UsageError("aiocinder.setup() called twice; call aiocinder.shutdown() first")
    store = create_store(persistence_config)
    options = Options(
        fail_on_missing_backend=fail_on_missing_backend,
        host=host or socket.gethostname(),
        project_id=project_id,
        user_id=user_id,
        output_all_backend_info=output_all_backend_info,
        root_helper=root_helper,
        cinder_options=dict(cinder_options),
    )
    await store.open()
    runtime.start(store, options)
    Backend.persistence = store
    return store


async def shutdown() -> None:
    """Wait for operations in flight, close every backend and the store.

    Clears :attr:`Backend.backends`; :func:`setup` may run again afterwards.
    Idempotent.
    """
    store = await runtime.stop()
    if store is None:
        return
    try:
        for backend in list(runtime.backends.values()):
            await backend.close()
        runtime.backends.clear()
        runtime.local_attachments.clear()
    finally:
        Backend.persistence = None
        try:
            await store.close()
        finally:
            runtime.stopped()
