"""A PostgreSQL server for the tests, and a fresh database per test.

Two sources, tried in this order:

1. ``AIOCINDER_TEST_PG_DSN``: an existing server (for example a CI service).
   Its role must be allowed to ``CREATE DATABASE``: every test gets a database
   of its own, named ``aiocinder_test_<pid>_<n>``, dropped afterwards.
2. A throwaway server: the PostgreSQL server binaries are looked up
   (``PG_BINDIR``, then ``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin``
   newest first, then ``initdb`` on ``PATH``), ``initdb`` makes a cluster in a
   temporary directory and ``pg_ctl`` starts it on a free TCP
   port of 127.0.0.1, with its unix socket in the same directory. The directory
   is in ``/dev/shm`` when that has 1 GiB free (much faster), else in ``/tmp``;
   ``AIOCINDER_TEST_PG_TMPDIR`` overrides. The server runs with ``fsync=off``
   and small buffers: it is fast and disposable. Stopping it removes the
   directory.

PostgreSQL refuses to run as root. When the tests run as root, the server runs
as an unprivileged user: ``postgres`` if it exists (Debian's packages create
it), otherwise a system user ``aiocinder-pg`` that this module creates with
``useradd --system --no-create-home`` (a one-off change to the machine, made
only when running as root). The binaries are started with ``runuser -u USER --``.

On a fresh Debian machine the server comes from ``apt-get install -y
postgresql``; nothing needs to be started beforehand.

Use::

    with PostgresServer.from_environment() as server:   # ServerUnavailable if none
        async with server.database() as dsn:            # a new, empty database
            ...

In tests, :func:`require_server` gives the one server of the test session,
started on first use and stopped when the process exits; when none can be had
it skips the test, or fails it when the environment variable ``CI`` is set (a
CI run must not pass by skipping the PostgreSQL tests).

A test that takes the server down (an outage) uses :func:`own_server`
instead: a throwaway server of its own, whatever ``AIOCINDER_TEST_PG_DSN``
says, that :meth:`PostgresServer.halt` stops and :meth:`PostgresServer.resume`
starts again on the same port, so DSNs stay valid.

This is a plain module, not a conftest: the pytest fixtures that wrap it live
in ``tests/persistence/conftest.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = [
    "DSN_ENV",
    "PostgresServer",
    "allow_asyncpg_connect",
    "ServerUnavailable",
    "find_bindir",
    "own_server",
    "require_server",
    "shared_server",
]

#: Environment variable naming an existing server to use instead of starting one.
DSN_ENV = "AIOCINDER_TEST_PG_DSN"
#: The user the throwaway server runs as when we are root and ``postgres`` does not exist.
FALLBACK_USER = "aiocinder-pg"

_SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "max_wal_size": "256MB",
    "checkpoint_timeout": "1h",
    "autovacuum": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
    "dynamic_shared_memory_type": "mmap",
}


#: Existing users the server may run as when we are root, in order of preference.
_SERVER_USERS = ("postgres", FALLBACK_USER)


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server can be had; the message says why."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    :raises ServerUnavailable: no PostgreSQL server binaries are installed.
    """
    candidates: list[Path] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
            if out:
                candidates.append(Path(out))

    def version_key(path: str) -> tuple[int, ...]:
        version = Path(path).parent.name
        return tuple(int(p) for p in version.split(".") if p.isdigit())

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key)[::-1]
    ]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise ServerUnavailable(
        "no PostgreSQL server binaries found (looked at PG_BINDIR, pg_config --bindir, "
        "/usr/lib/postgresql/*/bin and PATH): install them (Debian: apt-get install -y "
        f"postgresql) or set {DSN_ENV} to the DSN of a running server"
    )


def _base_dir() -> str:
    """Where the throwaway cluster goes: RAM when there is room, else ``/tmp``.

    A directory the server user can reach (not under ``/root``). On tmpfs,
    ``CREATE DATABASE`` (once per test) took 11-43 ms here against 86-212 ms
    on disk, even with ``fsync=off``.
    """
    if env := os.environ.get("AIOCINDER_TEST_PG_TMPDIR"):
        return env
    with contextlib.suppress(OSError):
        shm = os.statvfs("/dev/shm")
        if shm.f_bavail * shm.f_frsize >= 1 << 30 and os.access("/dev/shm", os.W_OK | os.X_OK):
            return "/dev/shm"
    return "/tmp"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_user() -> str | None:
    """The user to run the server binaries as: None for ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in _SERVER_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             FALLBACK_USER],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise ServerUnavailable(
            f"running as root, PostgreSQL needs an unprivileged user, and creating "
            f"{FALLBACK_USER!r} failed: {detail}"
        ) from exc
    return FALLBACK_USER


class PostgresServer:
    """A PostgreSQL server the tests may use: an existing one or a throwaway one.

    :param dsn: the maintenance DSN of an existing server; None starts a new one.
    """

    def __init__(self, dsn: str | None = None) -> None:
        self._external = dsn is not None
        self.dsn = dsn or ""
        self.startup_seconds = 0.0
        self._tmpdir: Path | None = None
        self._bindir: Path | None = None
        self._user: str | None = None
        self._counter = itertools.count(1)

    @classmethod
    def from_environment(cls) -> Self:
        """An existing server when ``AIOCINDER_TEST_PG_DSN`` is set, else a new one."""
        return cls(os.environ.get(DSN_ENV) or None)

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> str:
        """Start the server (a no-op for an existing one); return its maintenance DSN.

        :raises ServerUnavailable: the binaries are missing or the server did not start.
        """
        if self._external:
            self._check_reachable()
            return self.dsn
        if self._tmpdir is not None:
            return self.dsn
        began = time.perf_counter()
        self._bindir = find_bindir()
        self._user = _server_user()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="aiocinder-pg-", dir=_base_dir()))
        try:
            if self._user is not None:
                shutil.chown(self._tmpdir, self._user, self._user)
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - began
        return self.dsn

    def stop(self) -> None:
        """Stop a server this object started and delete its files. Idempotent."""
        tmpdir, self._tmpdir = self._tmpdir, None
        if tmpdir is None:
            return
        try:
            if (tmpdir / "data" / "postmaster.pid").exists():
                self._run(
                    "pg_ctl", "-D", str(tmpdir / "data"), "-m", "immediate", "-w", "stop",
                    cwd=tmpdir, check=False,
                )  # fmt: skip
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def halt(self, mode: str = "fast") -> None:
        """Stop a server this object started, keeping its files: an outage.

        :param mode: ``pg_ctl stop -m``: ``fast`` ends sessions cleanly,
            ``immediate`` as in a crash (the next start recovers).
        :raises ServerUnavailable: this is an existing server, not ours to stop.
        """
        tmpdir = self._own_dir("halt")
        self._run(
            "pg_ctl", "-D", str(tmpdir / "data"), "-m", mode, "-w", "stop", cwd=tmpdir
        )  # fmt: skip

    def resume(self) -> None:
        """Start a halted server again, on the same port (its DSNs stay valid).

        :raises ServerUnavailable: this is an existing server, or it did not start.
        """
        tmpdir = self._own_dir("resume")
        port = urlsplit(self.dsn).port
        self._run(
            "pg_ctl", "-D", str(tmpdir / "data"), "-l", str(tmpdir / "server.log"),
            "-w", "-t", "60", "-o", f"-p {port}", "start",
            cwd=tmpdir,
        )  # fmt: skip

    def _own_dir(self, action: str) -> Path:
        if self._external or self._tmpdir is None:
            raise ServerUnavailable(f"cannot {action} a server this test did not start")
        return self._tmpdir

    # -- databases -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        """Create a new empty database, yield its DSN, drop it afterwards."""
        import asyncpg  # type: ignore[import-untyped,unused-ignore]

        name = f"aiocinder_test_{os.getpid()}_{next(self._counter)}"
        admin = await asyncpg.connect(self.dsn, timeout=30)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
            try:
                yield self.database_dsn(name)
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    def database_dsn(self, name: str) -> str:
        """The DSN of database ``name`` on this server."""
        parts = urlsplit(self.dsn)
        return urlunsplit(parts._replace(path="/" + quote(name)))

    # -- internals -------------------------------------------------------------

    def _check_reachable(self) -> None:
        """Fail early, with the reason, when the external server does not answer."""
        parts = urlsplit(self.dsn)
        host = parts.hostname or "localhost"
        try:
            port = parts.port or 5432
        except ValueError as exc:
            raise ServerUnavailable(f"{DSN_ENV} is not a valid DSN: {exc}") from exc
        if host.startswith("/"):
            return  # a unix socket directory: asyncpg will say what is wrong
        try:
            socket.create_connection((host, port), timeout=10).close()
        except OSError as exc:
            raise ServerUnavailable(
                f"the server in {DSN_ENV} ({host}:{port}) does not answer: {exc}"
            ) from exc

    def _run(
        self, tool: str, *args: str, cwd: Path, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None
        argv = [str(self._bindir / tool), *args]
        if self._user is not None:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            argv = [runuser, "-u", self._user, "--", *argv]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        for var in ("PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS"):
            env.pop(var, None)
        try:
            done = subprocess.run(
                argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServerUnavailable(f"{tool} could not run: {exc}") from exc
        if check and done.returncode != 0:
            raise ServerUnavailable(
                f"{' '.join(argv)} failed with exit status {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )
        return done

    def _initdb(self) -> None:
        assert self._tmpdir is not None
        self._run(
            "initdb", "-D", str(self._tmpdir / "data"), "--username=postgres",
            "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
            cwd=self._tmpdir,
        )  # fmt: skip
        conf = self._tmpdir / "data" / "postgresql.conf"
        settings = {**_SERVER_SETTINGS, "unix_socket_directories": f"'{self._tmpdir}'"}
        with conf.open("a") as f:  # the file belongs to the server user; root may append
            f.write("\n# aiocinder test server\n")
            f.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _start_server(self) -> None:
        assert self._tmpdir is not None
        data, log = self._tmpdir / "data", self._tmpdir / "server.log"
        last = ""
        for _ in range(5):  # the free port may be taken before the server binds it
            port = _free_port()
            done = self._run(
                "pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60",
                "-o", f"-p {port}", "start",
                cwd=self._tmpdir, check=False,
            )  # fmt: skip
            if done.returncode == 0:
                self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
                return
            with contextlib.suppress(OSError):
                last = log.read_text()
            last = f"{done.stdout}{done.stderr}\n{last}"
            if "already in use" not in last:
                break
        raise ServerUnavailable(f"the PostgreSQL server did not start:\n{last}")


def allow_asyncpg_connect(blockbuster: Any) -> None:
    """Let ``blockbuster`` accept the file checks asyncpg makes to open a connection.

    Each new connection (not each query) makes asyncpg ``stat`` ``~/.pgpass`` and
    ``~/.postgresql/{root.crt,root.crl,postgresql.crt,postgresql.key}`` on the
    event loop, in ``connect_utils._parse_connect_dsn_and_args``. That is
    asyncpg's own doing, outside aiocinder's reach, and bounded by the pool size.
    """
    for function in blockbuster.functions.values():
        function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")


_shared: PostgresServer | None = None
_shared_error: ServerUnavailable | None = None


def shared_server() -> PostgresServer:
    """The process's one test server: started on first call, stopped at exit.

    :raises ServerUnavailable: none can be had (remembered: later calls fail fast).
    """
    global _shared, _shared_error
    if _shared is not None:
        return _shared
    if _shared_error is not None:
        raise _shared_error
    server = PostgresServer.from_environment()
    try:
        server.start()
    except ServerUnavailable as exc:
        _shared_error = exc
        raise
    atexit.register(server.stop)
    _shared = server
    return server


def require_server() -> PostgresServer:
    """:func:`shared_server` for a test: skip it when there is none, fail it under CI."""
    import pytest

    try:
        return shared_server()
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required when CI is set: {exc}", pytrace=False)
        pytest.skip(f"no PostgreSQL server: {exc}")


@contextlib.asynccontextmanager
async def own_server() -> AsyncIterator[PostgresServer]:
    """A throwaway server for one test, which it may halt and resume; stopped after.

    Started and stopped in a worker thread (``pg_ctl`` takes a second). Use its
    ``dsn`` (the ``postgres`` database) directly: the whole server is thrown
    away. Skips the test when no server can be started, or fails it under ``CI``.
    """
    import pytest

    server = PostgresServer()
    try:
        await asyncio.to_thread(server.start)
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(
                f"PostgreSQL server binaries are required when CI is set: {exc}", pytrace=False
            )
        pytest.skip(f"cannot start a PostgreSQL server of our own: {exc}")
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)
