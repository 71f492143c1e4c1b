"""The os-brick glue: this host's connector properties, and attaching here.

Everything os-brick does blocks (it runs commands, scans buses, sleeps
between retries), so every call into it runs in a worker thread through
:func:`anyio.to_thread.run_sync`; nothing here touches the event loop thread
while os-brick works.

os-brick is imported lazily, in a worker thread, the first time it is needed:
``import aiocinder`` never imports it (it takes most of a second). Importing
it changes the whole process, and aiocinder leaves those changes as they are:

* it imports eventlet (through oslo.privsep) without monkeypatching anything;
  eventlet then registers an at-fork hook that warns (``DeprecationWarning``)
  whenever the process forks with a ``preexec_fn``, which oslo.concurrency
  does for every command os-brick runs;
* ``os_brick.utils`` replaces :func:`time.sleep` with a wrapper of its own
  (so that tenacity's retries can be stubbed in os-brick's tests); it still
  sleeps.

The deprecation warnings that eventlet and the oslo libraries raise on
import, and eventlet's at-fork warning, are filtered out by message (and only
those): a program running with ``-W error`` could not attach at all
otherwise. The filters are put back before each os-brick call, because test
harnesses (pytest among them) reset the warning filters for every test.

Privileged commands: os-brick runs them through oslo.privsep. The first time
aiocinder uses os-brick in a process it sets privsep up from
``setup(root_helper=...)``:

* when the process runs as root, or ``root_helper`` is ``""``, no helper is
  needed, and privsep runs in-process: commands run directly, as this
  process's user (as root, or, without root, with what this user may do,
  which is enough for the FileDriver's files);
* otherwise os-brick starts its privsep daemon through the helper, as
  ``<root_helper> privsep-helper ...`` (``sudo privsep-helper ...`` by default).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import shlex
import socket
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread

from .resources._runtime import runtime

__all__ = [
    "DEFAULT_DEVICE_SCAN_ATTEMPTS",
    "DeviceUnavailable",
    "HostConnector",
    "get_connector_properties",
    "local_ip",
]

_log = logging.getLogger("aiocinder")

T = TypeVar("T")

#: How many times os-brick looks for a device before giving up (Cinder's
#: ``num_volume_device_scan_tries`` default).
DEFAULT_DEVICE_SCAN_ATTEMPTS: Final = 3
#: The protocol whose "device" is a path that exists already (a file, a block device).
LOCAL: Final = "local"

#: How many os-brick calls may run at once in worker threads, per event loop
#: (set it before the first attach). os-brick runs commands with
#: oslo.concurrency, whose ``preexec_fn`` makes every command a full
#: ``fork()`` that holds the GIL while the process is copied: many at once
#: starve the event loop thread. os-brick serialises iSCSI, FC and NVMe-oF
#: attachments per host with a lock of its own anyway.
max_concurrent_host_calls: int = 4
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)

#: Warnings importing and running os-brick raises that are not about aiocinder's use of it.
_QUIET: Final = (
    (r"\s*Eventlet is deprecated", Warning),
    (r"Using fork\(\) is a bad idea", DeprecationWarning),
    (r"eventletutils module is deprecated", DeprecationWarning),
    (r"The 'oslo_service\.eventlet_backdoor' module usage is deprecated", DeprecationWarning),
)

_load_lock = threading.Lock()
_import_thread: threading.Thread | None = None
_import_done = threading.Event()
_import_error: BaseException | None = None
_lock_path: Any = None
#: The privsep mode set last: None (not yet), "in-process" or the helper command.
_privsep_mode: str | None = None


class DeviceUnavailable(Exception):
    """os-brick attached the volume, but the device it gave cannot be read."""


async def _in_thread(func: Callable[[], T]) -> T:
    """Run ``func`` in a worker thread, under the os-brick limiter of this loop."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(max_concurrent_host_calls)
    return await anyio.to_thread.run_sync(func, limiter=limiter)


# -- loading os-brick (always in a worker thread) --------------------------------


def _quiet_warnings() -> None:
    """Put back the filters for os-brick's import-time and at-fork warnings."""
    present = {
        (f[0], getattr(f[1], "pattern", None), f[2]) for f in warnings.filters
    }
    for message, category in _QUIET:
        if ("ignore", message, category) not in present:
            warnings.filterwarnings("ignore", message=message, category=category)


def _configure_privsep(root_helper: str) -> None:
    """Make os-brick's privileged commands run in-process, or through ``root_helper``."""
    global _privsep_mode
    import os_brick.privileged
    from oslo_privsep import priv_context

    in_process = os.geteuid() == 0 or not root_helper.strip()
    mode = "in-process" if in_process else root_helper
    if mode == _privsep_mode:
        return
    contexts = (os_brick.privileged.default, os_brick.privileged.brick_privsep_hide_output)
    if in_process:
        for context in contexts:
            context.set_client_mode(False)
    else:
        priv_context.init(root_helper=shlex.split(root_helper))
        for context in contexts:
            context.set_client_mode(True)
    _privsep_mode = mode
    _log.debug("os-brick privsep: %s", mode)


def _import_os_brick() -> None:
    """Import os-brick (the body of its own daemon thread)."""
    global _import_error
    try:
        _quiet_warnings()
        import os_brick.initiator.connector
        import os_brick.privileged  # noqa: F401
    except BaseException as exc:
        _import_error = exc
    finally:
        _import_done.set()


def _load(root_helper: str) -> None:
    """Import os-brick once, then set privsep and os-brick's lock path up.

    The import runs in a daemon thread of its own, and the calling worker
    thread waits for it. Importing eventlet (which os-brick does) leaves the
    thread that imported it impossible to join: its thread state is never
    released, so ``threading._shutdown`` would wait for that thread forever
    when the program ends. A daemon thread is not waited for.
    """
    global _import_thread, _lock_path
    with _load_lock:
        if _import_thread is None:
            _import_thread = threading.Thread(
                target=_import_os_brick, name="aiocinder: import os-brick", daemon=True
            )
            _import_thread.start()
    _import_done.wait()
    if _import_error is not None:
        raise ImportError(f"os-brick cannot be imported: {_import_error}") from _import_error
    with _load_lock:
        _quiet_warnings()
        lock_path = runtime.options.cinder_options.get("lock_path")
        if lock_path and lock_path != _lock_path:
            from oslo_config import cfg

            cfg.CONF.set_override("lock_path", str(lock_path), group="os_brick")
            _lock_path = lock_path
        _configure_privsep(root_helper)


def _json_safe(value: Mapping[str, Any]) -> dict[str, Any]:
    """os-brick's device dict as plain JSON data (unknown objects become strings)."""
    loaded: dict[str, Any] = json.loads(json.dumps(dict(value), default=str))
    return loaded


# -- connector properties ----------------------------------------------------


def local_ip() -> str:
    """This host's primary IPv4 address, found without sending anything.

    Connecting a UDP socket only picks the route (no packet leaves); the
    source address the kernel chose is the host's primary one. Without a
    route, ``127.0.0.1``.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.254.254.254", 9))
            address = probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    return str(address) if address and address != "0.0.0.0" else "127.0.0.1"


def _connector_properties(
    root_helper: str, my_ip: str | None, multipath: bool, enforce_multipath: bool, host: str
) -> dict[str, Any]:
    _load(root_helper)
    from os_brick.initiator import connector

    ip = my_ip or local_ip()
    props = connector.get_connector_properties(
        root_helper, ip, multipath, enforce_multipath, host=host
    )
    return _json_safe(props)


async def get_connector_properties(
    root_helper: str | None = None,
    my_ip: str | None = None,
    multipath: bool = False,
    enforce_multipath: bool = False,
) -> dict[str, Any]:
    """This host's os-brick connector properties (what :meth:`Volume.connect` takes).

    Runs os-brick's ``get_connector_properties`` in a worker thread (it reads
    initiator names and may run commands). The result has ``host`` (the
    ``host`` given to :func:`aiocinder.setup`, this machine's name by
    default), ``ip``, ``multipath``, ``platform``, ``os_type``, and what each
    transport adds (``initiator`` for iSCSI, ``nqn`` for NVMe-oF...) when it
    is installed on the host.

    Works before :func:`aiocinder.setup` too, with its defaults.

    :param root_helper: the command that runs privileged commands; by default
        ``setup(root_helper=...)`` (``"sudo"``), ``""`` for none.
    :param my_ip: this host's address for the storage; by default the
        ``my_ip`` option given to ``setup()``, else the host's primary IPv4
        address, found without network traffic (``127.0.0.1`` without a route).
    :param multipath: ask for multipath attachments.
    :param enforce_multipath: fail when multipath is asked for but
        ``multipathd`` is not running.
    :raises AttachError: os-brick failed (for example with
        ``enforce_multipath`` and no ``multipathd``).
    """
    from .exceptions import AttachError

    options = runtime.options
    helper = options.root_helper if root_helper is None else root_helper
    ip = my_ip if my_ip is not None else options.cinder_options.get("my_ip")
    key = (helper, None if ip is None else str(ip), bool(multipath), bool(enforce_multipath),
           options.host)
    loop = asyncio.get_running_loop()
    # Concurrent callers with the same arguments share one gathering: it
    # runs several commands, and every fork with a preexec_fn (as
    # oslo.concurrency does) holds the GIL while the process is copied.
    task = _gathering.get((loop, key))
    if task is None:
        task = loop.create_task(_in_thread(partial(_connector_properties, *key)))
        _gathering[(loop, key)] = task
        task.add_done_callback(partial(_gathered, (loop, key)))
    try:
        props = await asyncio.shield(task)
    except Exception as exc:
        raise AttachError(f"gathering this host's connector properties failed: {exc}") from exc
    return copy.deepcopy(props)


_gathering: dict[tuple[Any, ...], asyncio.Task[dict[str, Any]]] = {}


def _gathered(key: tuple[Any, ...], task: asyncio.Task[dict[str, Any]]) -> None:
    if _gathering.get(key) is task:
        del _gathering[key]
    if not task.cancelled():
        task.exception()  # retrieved: its awaiters may all have been cancelled


# -- one connection's connector -----------------------------------------------


def _size_of(path: str) -> int:
    """The size in bytes of a file or block device, read by seeking to its end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


class HostConnector:
    """The os-brick connector for one connection's info, on this host.

    Every method runs os-brick in a worker thread. The os-brick object is
    built on first use (``InitiatorConnector.factory``) and kept.

    :param conn_info: the driver's connection info (``driver_volume_type``
        and ``data``).
    :param use_multipath: attach through multipath.
    :param device_scan_attempts: how often os-brick looks for the device.
    :param root_helper: the privileged command helper (``setup()``'s by default).
    """

    def __init__(
        self,
        conn_info: Mapping[str, Any],
        *,
        use_multipath: bool = False,
        device_scan_attempts: int = DEFAULT_DEVICE_SCAN_ATTEMPTS,
        root_helper: str | None = None,
    ) -> None:
        protocol = conn_info.get("driver_volume_type")
        if not isinstance(protocol, str) or not protocol:
            raise ValueError(f"the connection info has no driver_volume_type: {conn_info!r}")
        self.protocol = protocol.lower()
        self.conn_info = copy.deepcopy(dict(conn_info))
        self.use_multipath = use_multipath
        self.device_scan_attempts = device_scan_attempts
        self.root_helper = runtime.options.root_helper if root_helper is None else root_helper
        self._brick: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<HostConnector {self.protocol} multipath={self.use_multipath}>"

    @property
    def properties(self) -> dict[str, Any]:
        """A fresh copy of ``conn_info["data"]`` (os-brick may change what it is given)."""
        data = self.conn_info.get("data") or {}
        return copy.deepcopy(dict(data))

    def _connector(self) -> Any:
        """The os-brick connector (built in the calling worker thread)."""
        with self._lock:
            _load(self.root_helper)
            if self._brick is None:
                from os_brick.initiator import connector

                self._brick = connector.InitiatorConnector.factory(
                    self.protocol,
                    self.root_helper,
                    use_multipath=self.use_multipath,
                    device_scan_attempts=self.device_scan_attempts,
                    # remotefs connectors read their mount options from it
                    conn=copy.deepcopy(self.conn_info),
                    # RBD: map the image with the kernel client, giving a path
                    do_local_attach=True,
                )
            return self._brick

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await _in_thread(partial(func, *args))

    def build(self) -> None:
        """Import os-brick and build the connector now (in the calling thread)."""
        self._connector()

    async def connect_volume(self) -> dict[str, Any]:
        """Attach the volume on this host; os-brick's device dict (``path``...)."""

        def call() -> dict[str, Any]:
            device = self._connector().connect_volume(self.properties)
            if not isinstance(device, Mapping):
                raise TypeError(f"os-brick's connect_volume returned {device!r}")
            return _json_safe(device)

        result: dict[str, Any] = await self._run(call)
        return result

    async def check_device(self, device: Mapping[str, Any]) -> None:
        """Check the attached device can be read (os-brick's ``check_valid_device``).

        :raises DeviceUnavailable: it has no path, or the path cannot be read.
        """
        path = device.get("path")
        if not isinstance(path, str) or not path:
            raise DeviceUnavailable(f"os-brick gave no device path: {dict(device)!r}")

        def call() -> bool:
            return bool(self._connector().check_valid_device(path))

        if not await self._run(call):
            raise DeviceUnavailable(f"the device {path} cannot be read")

    async def disconnect_volume(
        self, device: Mapping[str, Any] | None, *, force: bool = False,
        ignore_errors: bool = False,
    ) -> None:
        """Detach the volume from this host."""
        info = dict(device) if device else {}

        def call() -> None:
            self._connector().disconnect_volume(
                self.properties, info, force=force, ignore_errors=ignore_errors
            )

        await self._run(call)

    async def extend_volume(self, device: Mapping[str, Any] | None) -> int | None:
        """Make this host see the volume's new size; the size in bytes, if known.

        For the LOCAL protocol there is nothing to rescan (the path is the
        file or device itself): the size is read from the path. os-brick's
        LocalConnector is not asked, as it can only read the size of a block
        device, with ``blockdev`` as root.
        """
        if self.protocol == LOCAL:
            path = (device or {}).get("path") or self.properties.get("device_path")
            if not isinstance(path, str):
                return None
            size: int = await self._run(_size_of, path)
            return size

        def call() -> int | None:
            new_size = self._connector().extend_volume(self.properties)
            return None if new_size is None else int(new_size)

        result: int | None = await self._run(call)
        return result

