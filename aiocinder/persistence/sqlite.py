"""A metadata store in an SQLite file, through aiosqlite.

The embedded default for anything that must survive a restart. Several
processes may share the file (WAL journal, a busy timeout); for several hosts
use the PostgreSQL store.

How it stays correct with aiosqlite's one connection and one thread, shared by
every task: the connection is in autocommit mode and every write is a single
statement, so a cancelled task (whose statement still runs) can never leave
half of a transaction for someone else's ``COMMIT``. The only transaction, the
schema migration at :meth:`SQLiteStore.open`, runs in a task of its own that
callers await through :func:`asyncio.shield`: cancelling a caller cannot
split it.

So a write whose caller was cancelled may still have been stored, whole: the
caller's next compare-and-swap then raises
:class:`~aiocinder.exceptions.ConflictError`, and a reload tells.

:meth:`SQLiteStore.lock` excludes the other processes of the machine with
POSIX byte-range locks (``fcntl.lockf``) on ``<database>.locks``, a file
created beside the database with mode 0600: one byte per key, at an offset
derived from the key's hash. The kernel drops them when the process ends,
however it ends. They are taken without waiting (``LOCK_NB``), retried after
a short asynchronous sleep, so the event loop never blocks and a cancelled
waiter holds nothing. Such locks belong to a process, not to a task, so the
tasks of one process first take turns on an :class:`asyncio.Lock` per key.
(Byte-range locks over NFS are only as good as its lock manager: for several
hosts, use PostgreSQL.)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import json
import math
import os
import random
import sqlite3
import threading
import warnings
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

import aiosqlite
import anyio
import anyio.to_thread

from ..exceptions import (
    AlreadyExists,
    ConflictError,
    ConnectionNotFound,
    InvalidArgument,
    NotFound,
    PersistenceError,
    SchemaError,
    SnapshotNotFound,
    UsageError,
    VolumeNotFound,
)
from ..records import ConnectionRecord, KeyValue, SnapshotRecord, VolumeRecord, utcnow
from ._codec import SCHEMA_VERSION, decode_rows, encode
from .base import KeyedLocks, PersistenceStore, lock_id

__all__ = ["SQLiteStore", "map_sqlite_exceptions", "parse_sqlite_url"]

R = TypeVar("R", VolumeRecord, SnapshotRecord, ConnectionRecord)

MEMORY: Final = ":memory:"
_SCHEMES: Final = ("sqlite://", "sqlite+aiosqlite://")
_DUPLICATE_CODES: Final = frozenset(
    {sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE}
)
_TABLES: Final = ("volumes", "snapshots", "connections", "key_values")
#: Ids of a batched read encoded per turn of the event loop.
_IDS_CHUNK: Final = 2000
#: Rows a big read fetches per hop to the worker thread (decoded in chunks of
#: DECODE_CHUNK rows, a turn of the event loop each).
_PAGE: Final = 256

#: Statements that bring the schema to each version from the one before.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE volumes (
            id TEXT PRIMARY KEY NOT NULL, backend_name TEXT NOT NULL, name TEXT,
            status TEXT NOT NULL, created_at INTEGER NOT NULL,
            version INTEGER NOT NULL, data TEXT NOT NULL)""",
        "CREATE INDEX volumes_created ON volumes (created_at, id)",
        "CREATE INDEX volumes_backend ON volumes (backend_name, created_at, id)",
        "CREATE INDEX volumes_name ON volumes (name)",
        """CREATE TABLE snapshots (
            id TEXT PRIMARY KEY NOT NULL, volume_id TEXT NOT NULL,
            backend_name TEXT NOT NULL, name TEXT, status TEXT NOT NULL,
            created_at INTEGER NOT NULL, version INTEGER NOT NULL, data TEXT NOT NULL)""",
        "CREATE INDEX snapshots_volume ON snapshots (volume_id)",
        "CREATE INDEX snapshots_backend ON snapshots (backend_name)",
        "CREATE INDEX snapshots_name ON snapshots (name)",
        """CREATE TABLE connections (
            id TEXT PRIMARY KEY NOT NULL, volume_id TEXT NOT NULL,
            backend_name TEXT NOT NULL, status TEXT NOT NULL,
            created_at INTEGER NOT NULL, version INTEGER NOT NULL, data TEXT NOT NULL)""",
        "CREATE INDEX connections_volume ON connections (volume_id)",
        "CREATE INDEX connections_backend ON connections (backend_name)",
        "CREATE TABLE key_values (key TEXT PRIMARY KEY NOT NULL, value TEXT)",
    ),
}
assert max(_MIGRATIONS) == SCHEMA_VERSION


def parse_sqlite_url(connection: str) -> str:
    """The database a SQLAlchemy-style SQLite URL names: a path, or ``":memory:"``.

    ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``, ``sqlite://``
    and ``sqlite:///:memory:`` (in memory). ``sqlite+aiosqlite://`` works too.

    :raises InvalidArgument: anything else.
    """
    if not isinstance(connection, str):
        raise InvalidArgument(f"SQLite connection must be a URL string, not {connection!r}")
    for scheme in _SCHEMES:
        if connection.startswith(scheme):
            rest = connection[len(scheme) :]
            break
    else:
        raise InvalidArgument(
            f"not a SQLite URL: {connection!r}; use sqlite:///relative.db, "
            "sqlite:////absolute/path.db or sqlite:// (in memory)"
        )
    if not rest:
        return MEMORY
    path = rest[1:]
    if not rest.startswith("/") or not path:
        raise InvalidArgument(
            f"SQLite URL {connection!r} names no file: use sqlite:///relative.db or "
            "sqlite:////absolute/path.db (a host part is not allowed)"
        )
    if "?" in path:
        raise InvalidArgument(f"SQLite URL {connection!r}: query parameters are not supported")
    return path


@contextlib.contextmanager
def map_sqlite_exceptions(operation: str, *, resource: Any = None) -> Iterator[None]:
    """Translate the :mod:`sqlite3` errors raised in the block into aiocinder errors.

    A duplicate primary key becomes :class:`~aiocinder.exceptions.AlreadyExists`;
    every other :class:`sqlite3.Error` (``database is locked``, a corrupt file,
    a full disk...) becomes :class:`~aiocinder.exceptions.PersistenceError`.
    Both are chained to the original.

    :param operation: what was attempted, e.g. ``"SQLiteStore.set_volume()"``.
    :param resource: the record concerned, attached to the error.
    :raises AlreadyExists: for a duplicate id.
    :raises PersistenceError: for any other SQLite error.
    """
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if getattr(exc, "sqlite_errorcode", None) in _DUPLICATE_CODES:
            what = getattr(resource, "id", None)
            raise AlreadyExists(
                f"{operation}: id {what!r} already exists", resource=resource
            ) from exc
        raise PersistenceError(f"{operation} failed: {exc}", resource=resource) from exc
    except sqlite3.Error as exc:
        raise PersistenceError(f"{operation} failed: {exc}", resource=resource) from exc


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def _micros(value: datetime) -> int:
    """``created_at`` as integer microseconds since the epoch: sorts as time does."""
    if value.tzinfo is None:  # as records.from_dict reads naive datetimes
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class _Table(Generic[R]):
    """SQL for one resource table, built once from constant names."""

    name: str
    cls: type[R]
    not_found: type[NotFound]
    columns: tuple[str, ...]  # indexed columns besides id, created_at, version, data

    @property
    def kind(self) -> str:
        return self.name.removesuffix("s")

    @property
    def select(self) -> str:
        return f"SELECT data, version FROM {self.name}"

    @property
    def insert(self) -> str:
        names = ", ".join(self.columns)
        marks = ", ".join("?" * len(self.columns))
        return (
            f"INSERT INTO {self.name} (id, {names}, created_at, version, data) "
            f"VALUES (?, {marks}, ?, 1, ?)"
        )

    @property
    def update(self) -> str:
        sets = ", ".join(f"{c} = ?" for c in self.columns)
        return (
            f"UPDATE {self.name} SET {sets}, created_at = ?, version = version + 1, data = ? "
            "WHERE id = ? AND version = ?"
        )

    def row(self, record: R) -> tuple[Any, ...]:
        """Parameters for :attr:`insert` (and :attr:`update` minus the id)."""
        indexed: tuple[Any, ...] = tuple(getattr(record, c) for c in self.columns)
        return (record.id, *indexed, _micros(record.created_at), encode(record))


_VOLUMES: Final = _Table(
    "volumes", VolumeRecord, VolumeNotFound, ("backend_name", "name", "status")
)
_SNAPSHOTS: Final = _Table(
    "snapshots", SnapshotRecord, SnapshotNotFound, ("volume_id", "backend_name", "name", "status")
)
_CONNECTIONS: Final = _Table(
    "connections", ConnectionRecord, ConnectionNotFound, ("volume_id", "backend_name", "status")
)


def _where(**filters: Any) -> tuple[str, list[Any]]:
    """``WHERE`` on the given (constant) column names for the filters that are not None."""
    given = {column: value for column, value in filters.items() if value is not None}
    if not given:
        return "", []
    return "WHERE " + " AND ".join(f"{c} = ?" for c in given), list(given.values())


async def _ids_json(ids: Collection[str], operation: str) -> str:
    """The ids as one JSON array, a parameter that ``json_each()`` reads: any
    number of ids in one query, never near SQLite's limit on bound parameters.

    Encoded :data:`_IDS_CHUNK` ids per turn of the event loop: 10,000 ids
    take some 2 ms to encode.
    """
    if isinstance(ids, str):
        raise InvalidArgument(f"{operation} takes a collection of ids, not a str")
    listed = list(ids)
    parts: list[str] = []
    for start in range(0, len(listed), _IDS_CHUNK):
        if start:
            await asyncio.sleep(0)
        parts.append(json.dumps(listed[start : start + _IDS_CHUNK])[1:-1])
    return f"[{','.join(parts)}]"


def _daemonise(conn: aiosqlite.Connection) -> None:
    """Make the connection's worker thread a daemon before it starts.

    aiosqlite's thread is not a daemon, so a program that ends (say, on an
    exception) without ``shutdown()`` would hang at exit waiting for it. Every
    statement runs in autocommit and SQLite's journal is crash-safe, so
    nothing is lost when the thread ends with the interpreter. aiosqlite keeps
    the thread in a private attribute; if that changes, this does nothing.
    """
    thread = getattr(conn, "_thread", None)
    if isinstance(thread, threading.Thread) and not thread.is_alive():
        thread.daemon = True


def _create_private_file(path: str) -> None:
    """Create ``path`` readable by its owner only, unless it exists (runs in a thread)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


# -- locks between processes ---------------------------------------------------

#: First and longest pause between two tries of a lock another process holds.
_LOCK_RETRY_FIRST: Final = 0.001
_LOCK_RETRY_MAX: Final = 0.05


class _LockFile:
    """``<database>.locks``, open once in this process.

    POSIX record locks belong to the process, and closing *any* descriptor of
    the file drops every one of them: so all the stores of this process that
    use one database share this descriptor, and their tasks take turns
    through :attr:`local` before asking the kernel.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.users = 0
        self.local = KeyedLocks()


#: The lock files open in this process, by path.
_lock_files: dict[str, _LockFile] = {}
_lock_files_guard = threading.Lock()


def _attach_lock_file(database: str) -> _LockFile:
    """Open (creating it with mode 0600) or share the lock file of ``database``.

    Runs in a worker thread: it resolves the path and may create the file.
    """
    path = os.path.realpath(database) + ".locks"
    with _lock_files_guard:
        found = _lock_files.get(path)
        if found is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            found = _lock_files[path] = _LockFile(path, fd)
        found.users += 1
        return found


def _detach_lock_file(lock_file: _LockFile) -> None:
    """Let go of the lock file; the last store of the process closes it."""
    with _lock_files_guard:
        lock_file.users -= 1
        if lock_file.users:
            return
        del _lock_files[lock_file.path]
        fd, lock_file.fd = lock_file.fd, -1
    os.close(fd)


def _lock_offset(key: str) -> int:
    """The byte of the lock file that stands for ``key`` (below 2**62: any
    ``off_t`` holds it, whatever the file's size)."""
    return (lock_id(key) & 0xFFFF_FFFF_FFFF_FFFF) >> 2


async def _lock_byte(lock_file: _LockFile, offset: int, database: str) -> None:
    """Take the byte at ``offset`` for this process, trying until it is free."""
    delay = _LOCK_RETRY_FIRST
    while True:
        try:
            fcntl.lockf(lock_file.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
            return
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise PersistenceError(
                    f"cannot lock {lock_file.path!r} for {database!r}: {exc}"
                ) from exc
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, _LOCK_RETRY_MAX)


def _unlock_byte(lock_file: _LockFile, offset: int) -> None:
    with _lock_files_guard:  # not while the last store closes the file
        if lock_file.fd >= 0:
            fcntl.lockf(lock_file.fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)


class SQLiteStore(PersistenceStore):
    """Records in an SQLite database, one aiosqlite connection shared by all tasks.

    :param connection: a SQLAlchemy-style URL: ``sqlite:///relative.db``,
        ``sqlite:////absolute/path.db``, or ``sqlite://`` for a database in memory.
    :param busy_timeout: seconds to wait for another process's lock before
        failing with :class:`~aiocinder.exceptions.PersistenceError`.
    :raises InvalidArgument: a bad URL or timeout.
    """

    name = "sqlite"

    def __init__(
        self, connection: str = "sqlite:///aiocinder.sqlite", *, busy_timeout: float = 30.0
    ) -> None:
        self._database = parse_sqlite_url(connection)
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, int | float)
            or not math.isfinite(busy_timeout)
            or busy_timeout < 0
        ):
            raise InvalidArgument(f"busy_timeout must be seconds >= 0, not {busy_timeout!r}")
        self._busy_timeout_ms = round(busy_timeout * 1000)
        self._state = _State.NEW
        self._conn: aiosqlite.Connection | None = None
        self._opening: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        # Serialises writes, so that "UPDATE, then SELECT to tell a conflict
        # from a deleted row" answers about the row that UPDATE saw (within
        # this process). It guards no transaction: none spans two awaits.
        self._write_lock = anyio.Lock(fast_acquire=True)
        # lock(): the lock file, opened on first use; for ":memory:", tasks only.
        self._lock_file: _LockFile | None = None
        self._lock_file_opening: asyncio.Task[_LockFile] | None = None
        self._memory_locks = KeyedLocks()

    @property
    def database(self) -> str:
        """The database file's path as the URL gave it, or ``":memory:"``."""
        return self._database

    def __repr__(self) -> str:
        return f"<SQLiteStore {self._database!r} {self._state.value}>"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_conn", None) is not None:
            _warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=1)

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Connect, and create or migrate the schema. Idempotent.

        Opening is done by a task of its own, awaited through
        :func:`asyncio.shield`: a cancelled caller leaves it to finish (or roll
        back) its transaction, and the next :meth:`open` awaits the same task.

        :raises SchemaError: the database was written by a newer aiocinder, or
            is not an aiocinder database; it was not changed.
        :raises PersistenceError: the file cannot be created or read.
        :raises UsageError: the store was closed.
        """
        if self._state is _State.OPEN:
            return
        if self._state is _State.CLOSED:
            raise UsageError("SQLiteStore.open() called after close()")
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open())
            self._opening.add_done_callback(_retrieve)
        await asyncio.shield(self._opening)
        if not self._is_open():  # close() was called meanwhile
            raise UsageError("SQLiteStore.close() was called while open() ran")

    async def _open(self) -> None:
        try:
            if self._database != MEMORY:
                try:
                    await anyio.to_thread.run_sync(_create_private_file, self._database)
                except OSError as exc:
                    raise PersistenceError(f"cannot create {self._database!r}: {exc}") from exc
            with map_sqlite_exceptions("SQLiteStore.open()"):
                pending = aiosqlite.connect(self._database, isolation_level=None)
                _daemonise(pending)
                conn = await pending
        except BaseException:
            self._opening = None
            raise
        try:
            with map_sqlite_exceptions("SQLiteStore.open()"):
                # PRAGMA takes no bound parameters; the value is an int we computed.
                await conn.execute_fetchall(f"PRAGMA busy_timeout = {self._busy_timeout_ms:d}")
                await conn.execute_fetchall("PRAGMA foreign_keys = ON")
                await conn.execute_fetchall("PRAGMA synchronous = NORMAL")
                # Read (and refuse a newer schema) before anything, even the
                # journal mode, is written to the file.
                version = await self._schema_version(conn)
                await conn.execute_fetchall("PRAGMA journal_mode = WAL")
                if version != SCHEMA_VERSION:
                    await self._migrate(conn)
        except BaseException:
            self._opening = None
            with contextlib.suppress(sqlite3.Error):  # keep the error that matters
                await conn.close()
            raise
        self._conn = conn
        if self._state is _State.NEW:
            self._state = _State.OPEN

    async def _schema_version(self, conn: aiosqlite.Connection) -> int:
        """The stored schema version, 0 for a database without our tables.

        :raises SchemaError: newer than this code, or not an aiocinder database.
        """
        rows = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {name for (name,) in rows}
        if "aiocinder_schema" not in tables:
            if ours := tables.intersection(_TABLES):
                raise SchemaError(
                    f"{self._database!r} has tables {sorted(ours)} but no aiocinder_schema "
                    "table: it is not an aiocinder database"
                )
            return 0
        rows = list(await conn.execute_fetchall("SELECT version FROM aiocinder_schema"))
        if len(rows) != 1 or not isinstance(rows[0][0], int):
            raise SchemaError(f"{self._database!r}: aiocinder_schema holds {rows!r}")
        version: int = rows[0][0]
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self._database!r} has schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this aiocinder knows: upgrade aiocinder"
            )
        return version

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock at once, so a second process
        # opening the same new file waits (busy_timeout) and then finds the
        # schema done. We run inside the opening task, which callers await
        # through asyncio.shield: no cancellation can stop us between BEGIN
        # and COMMIT/ROLLBACK. The lock keeps other writers of this process
        # out, though none can run before open() returns.
        async with self._write_lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                version = await self._schema_version(conn)
                if version == 0:
                    await conn.execute("CREATE TABLE aiocinder_schema (version INTEGER NOT NULL)")
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target]:
                        await conn.execute(statement)
                if version == 0:
                    await conn.execute(
                        "INSERT INTO aiocinder_schema (version) VALUES (?)", (SCHEMA_VERSION,)
                    )
                elif version < SCHEMA_VERSION:
                    await conn.execute("UPDATE aiocinder_schema SET version = ?", (SCHEMA_VERSION,))
                await conn.execute("COMMIT")
            except BaseException:
                # Queued after whatever ran before it, so it ends the
                # transaction even if the failure came before BEGIN was run;
                # "no transaction is active" when BEGIN itself failed.
                with contextlib.suppress(sqlite3.OperationalError):
                    await conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        """Close the connection (after the statements already queued). Idempotent.

        :raises PersistenceError: SQLite failed to close the database.
        """
        if self._closing is None:
            self._state = _State.CLOSED
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._opening is not None:
            await asyncio.wait({self._opening})
        if self._lock_file_opening is not None:
            await asyncio.wait({self._lock_file_opening})
        lock_file, self._lock_file = self._lock_file, None
        if lock_file is not None:
            _detach_lock_file(lock_file)
        conn, self._conn = self._conn, None
        if conn is not None:
            with map_sqlite_exceptions("SQLiteStore.close()"):
                await conn.close()

    def _is_open(self) -> bool:
        return self._state is _State.OPEN

    def _db(self, method: str) -> aiosqlite.Connection:
        conn = self._conn
        if self._state is _State.OPEN and conn is not None:
            return conn
        when = "after close()" if self._state is _State.CLOSED else "before open()"
        raise UsageError(f"SQLiteStore.{method}() called {when}")

    # -- locks -------------------------------------------------------------

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold ``key`` exclusively among the processes using this database file.

        A byte-range lock on ``<database>.locks`` (created with mode 0600 on
        first use), taken without blocking the event loop; see the module's
        documentation. For an in-memory database, which no other process can
        open, the tasks of this process only.

        :raises UsageError: the store is not open.
        :raises PersistenceError: the lock file cannot be created or locked.
        """
        self._db("lock")
        return self._hold(_lock_offset(key))

    @contextlib.asynccontextmanager
    async def _hold(self, offset: int) -> AsyncIterator[None]:
        if self._database == MEMORY:
            async with self._memory_locks.hold(offset):
                yield
            return
        lock_file = await self._open_lock_file()
        # Keyed by offset: two keys that share a byte take turns in the
        # process too, so the kernel's lock is never taken twice by it.
        async with lock_file.local.hold(offset):
            await _lock_byte(lock_file, offset, self._database)
            try:
                yield
            finally:
                _unlock_byte(lock_file, offset)

    async def _open_lock_file(self) -> _LockFile:
        self._db("lock")
        if self._lock_file is not None:
            return self._lock_file
        if self._lock_file_opening is None:
            self._lock_file_opening = asyncio.get_running_loop().create_task(
                self._attach_lock_file()
            )
        return await asyncio.shield(self._lock_file_opening)

    async def _attach_lock_file(self) -> _LockFile:
        try:
            lock_file = await anyio.to_thread.run_sync(_attach_lock_file, self._database)
        except OSError as exc:
            raise PersistenceError(
                f"cannot create the lock file beside {self._database!r}: {exc}"
            ) from exc
        finally:
            self._lock_file_opening = None
        if not self._is_open():  # closed meanwhile
            _detach_lock_file(lock_file)
            raise UsageError("SQLiteStore.lock() called after close()")
        self._lock_file = lock_file
        return lock_file

    # -- shared helpers ----------------------------------------------------

    async def _fetch(
        self, method: str, table: _Table[R], where: str, params: Any, *, by_id: bool = False
    ) -> list[R]:
        """The rows ``where`` selects, in store order, decoded.

        A lookup by id is one ``execute_fetchall``: one hop to the worker
        thread. Any other read may be big, so it first asks for one row more
        than a page; most reads are smaller and are done in that one hop. A
        bigger result is read again, a page at a time (:meth:`_fetch_pages`).
        """
        conn = self._db(method)
        sql = f"{table.select} {where} ORDER BY created_at, id"
        first = sql if by_id else f"{sql} LIMIT {_PAGE + 1:d}"
        with map_sqlite_exceptions(f"SQLiteStore.{method}()"):
            rows = list(await conn.execute_fetchall(first, params))
        if len(rows) > _PAGE:
            return await self._fetch_pages(method, table.cls, sql, params)
        return await decode_rows(table.cls, rows)

    async def _fetch_by_ids(
        self, method: str, table: _Table[R], column: str, ids: Collection[str]
    ) -> list[R]:
        """The rows whose ``column`` (a constant) is one of ``ids``, in one query."""
        ids_json = await _ids_json(ids, f"SQLiteStore.{method}()")
        if not ids:
            self._db(method)
            return []
        where = f"WHERE {column} IN (SELECT value FROM json_each(?))"
        return await self._fetch(method, table, where, (ids_json,))

    async def _fetch_pages(self, method: str, cls: type[R], sql: str, params: Any) -> list[R]:
        """Every row of ``sql``, from one cursor, :data:`_PAGE` rows per hop to
        the worker thread, each page decoded as it arrives.

        One statement, so one snapshot of what other connections committed
        (writes of this process, which share the connection, may or may not
        show in it). The worker thread, which holds the GIL while it builds
        row tuples, never builds more than a page at once.
        """
        with map_sqlite_exceptions(f"SQLiteStore.{method}()"):
            cursor = await self._db(method).execute(sql, params)
            done = False
            try:
                records: list[R] = []
                while not done:
                    rows = list(await cursor.fetchmany(_PAGE))
                    done = len(rows) < _PAGE  # the cursor released its statement
                    records += await decode_rows(cls, rows)
                    if not done:
                        self._db(method)  # closed meanwhile: UsageError
                return records
            finally:
                if not done:  # stopped midway: end the statement (and its read transaction)
                    # The connection may be closed already, and its cursors with it.
                    with contextlib.suppress(ValueError, sqlite3.Error):
                        await cursor.close()

    async def _set(self, method: str, table: _Table[R], record: R) -> R:
        operation = f"SQLiteStore.{method}()"
        if record.version < 0:
            raise InvalidArgument(f"{operation}: negative version {record.version}")
        async with self._write_lock:
            conn = self._db(method)
            with map_sqlite_exceptions(operation, resource=record):
                if record.version == 0:
                    stored = record.replace(version=1)
                    await conn.execute(table.insert, table.row(stored))
                    return stored
                stored = record.replace(version=record.version + 1, updated_at=utcnow())
                _, *values = table.row(stored)
                cursor = await conn.execute(table.update, (*values, record.id, record.version))
                if cursor.rowcount == 1:
                    return stored
                rows = await self._db(method).execute_fetchall(
                    f"SELECT version FROM {table.name} WHERE id = ?", (record.id,)
                )
        if not rows:
            raise table.not_found(f"{table.kind} {record.id!r} not found", resource=record)
        raise ConflictError(
            f"{table.kind} {record.id!r} was changed meanwhile: stored version "
            f"{next(iter(rows))[0]}, update based on version {record.version}",
            resource=record,
        )

    async def _delete(self, method: str, sql: str, key: str) -> None:
        async with self._write_lock:
            conn = self._db(method)
            with map_sqlite_exceptions(f"SQLiteStore.{method}()"):
                await conn.execute(sql, (key,))

    # -- volumes -----------------------------------------------------------

    async def get_volumes(
        self,
        volume_id: str | None = None,
        volume_name: str | None = None,
        backend_name: str | None = None,
    ) -> list[VolumeRecord]:
        """Volumes matching every given filter, ordered by ``created_at`` then ``id``.

        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        where, params = _where(id=volume_id, name=volume_name, backend_name=backend_name)
        by_id = volume_id is not None
        return await self._fetch("get_volumes", _VOLUMES, where, params, by_id=by_id)

    async def get_volumes_by_ids(self, volume_ids: Collection[str]) -> list[VolumeRecord]:
        """The volumes with these ids, in one query; missing ids are left out.

        :raises InvalidArgument: ``volume_ids`` is a single ``str``.
        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        return await self._fetch_by_ids("get_volumes_by_ids", _VOLUMES, "id", volume_ids)

    def iter_volumes(
        self,
        backend_name: str | None = None,
        *,
        status: str | None = None,
        volume_name: str | None = None,
        batch_size: int = 500,
    ) -> AsyncIterator[VolumeRecord]:
        """Stream volumes in store order, one query per ``batch_size`` rows.

        Keyset pagination on ``(created_at, id)``: each query starts after the
        last row yielded, so no transaction stays open between batches and
        memory is bounded by ``batch_size``.

        :raises InvalidArgument: ``batch_size`` is not an int >= 1.
        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        self._db("iter_volumes")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgument(f"batch_size must be an int >= 1, not {batch_size!r}")
        where, params = _where(backend_name=backend_name, status=status, name=volume_name)
        return self._iter_volumes(where, params, batch_size)

    async def _iter_volumes(
        self, where: str, params: list[Any], batch_size: int
    ) -> AsyncIterator[VolumeRecord]:
        select = "SELECT data, version, created_at, id FROM volumes"
        order = "ORDER BY created_at, id LIMIT ?"
        first = f"{select} {where} {order}"
        following = (
            f"{select} {where + ' AND' if where else 'WHERE'} (created_at, id) > (?, ?) {order}"
        )
        rows: Sequence[Any] = ()
        while True:
            conn = self._db("iter_volumes")
            with map_sqlite_exceptions("SQLiteStore.iter_volumes()"):
                if rows:
                    _, _, created_at, last_id = rows[-1]
                    rows = list(
                        await conn.execute_fetchall(
                            following, (*params, created_at, last_id, batch_size)
                        )
                    )
                else:
                    rows = list(await conn.execute_fetchall(first, (*params, batch_size)))
            for record in await decode_rows(VolumeRecord, rows):
                yield record
            if len(rows) < batch_size:
                return

    async def set_volume(self, record: VolumeRecord) -> VolumeRecord:
        """Insert (``version == 0``) or compare-and-swap update the volume.

        :returns: the record as stored (version advanced, ``updated_at`` set on update).
        :raises AlreadyExists: inserting an id that is already stored.
        :raises ConflictError: the stored version is not ``record.version``.
        :raises VolumeNotFound: updating a volume that is no longer stored.
        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        return await self._set("set_volume", _VOLUMES, record)

    async def delete_volume(self, volume_id: str) -> None:
        """Delete the volume; a missing one is not an error.

        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        await self._delete("delete_volume", "DELETE FROM volumes WHERE id = ?", volume_id)

    # -- snapshots ---------------------------------------------------------

    async def get_snapshots(
        self,
        snapshot_id: str | None = None,
        snapshot_name: str | None = None,
        volume_id: str | None = None,
        backend_name: str | None = None,
    ) -> list[SnapshotRecord]:
        """Snapshots matching every given filter, in store order.

        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        where, params = _where(
            id=snapshot_id, name=snapshot_name, volume_id=volume_id, backend_name=backend_name
        )
        by_id = snapshot_id is not None
        return await self._fetch("get_snapshots", _SNAPSHOTS, where, params, by_id=by_id)

    async def get_snapshots_by_volume_ids(
        self, volume_ids: Collection[str]
    ) -> list[SnapshotRecord]:
        """The snapshots of all these volumes, in one query, in store order.

        :raises InvalidArgument: ``volume_ids`` is a single ``str``.
        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        return await self._fetch_by_ids(
            "get_snapshots_by_volume_ids", _SNAPSHOTS, "volume_id", volume_ids
        )

    async def set_snapshot(self, record: SnapshotRecord) -> SnapshotRecord:
        """Insert or compare-and-swap update the snapshot, as :meth:`set_volume`.

        :raises AlreadyExists: inserting an id that is already stored.
        :raises ConflictError: the stored version is not ``record.version``.
        :raises SnapshotNotFound: updating a snapshot that is no longer stored.
        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        return await self._set("set_snapshot", _SNAPSHOTS, record)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete the snapshot; a missing one is not an error.

        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        await self._delete("delete_snapshot", "DELETE FROM snapshots WHERE id = ?", snapshot_id)

    # -- connections -------------------------------------------------------

    async def get_connections(
        self,
        connection_id: str | None = None,
        volume_id: str | None = None,
        backend_name: str | None = None,
    ) -> list[ConnectionRecord]:
        """Connections matching every given filter, in store order.

        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        where, params = _where(id=connection_id, volume_id=volume_id, backend_name=backend_name)
        by_id = connection_id is not None
        return await self._fetch("get_connections", _CONNECTIONS, where, params, by_id=by_id)

    async def get_connections_by_volume_ids(
        self, volume_ids: Collection[str]
    ) -> list[ConnectionRecord]:
        """The connections of all these volumes, in one query, in store order.

        :raises InvalidArgument: ``volume_ids`` is a single ``str``.
        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        return await self._fetch_by_ids(
            "get_connections_by_volume_ids", _CONNECTIONS, "volume_id", volume_ids
        )

    async def set_connection(self, record: ConnectionRecord) -> ConnectionRecord:
        """Insert or compare-and-swap update the connection, as :meth:`set_volume`.

        :raises AlreadyExists: inserting an id that is already stored.
        :raises ConflictError: the stored version is not ``record.version``.
        :raises ConnectionNotFound: updating a connection that is no longer stored.
        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        return await self._set("set_connection", _CONNECTIONS, record)

    async def delete_connection(self, connection_id: str) -> None:
        """Delete the connection; a missing one is not an error.

        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        await self._delete(
            "delete_connection", "DELETE FROM connections WHERE id = ?", connection_id
        )

    # -- key-value store ---------------------------------------------------

    async def get_key_values(self, key: str | None = None) -> list[KeyValue]:
        """The entry for ``key`` (zero or one), or every entry ordered by key.

        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        conn = self._db("get_key_values")
        where, params = _where(key=key)
        with map_sqlite_exceptions("SQLiteStore.get_key_values()"):
            rows = await conn.execute_fetchall(
                f"SELECT key, value FROM key_values {where} ORDER BY key", params
            )
        return [KeyValue(k, v) for k, v in rows]

    async def set_key_value(self, key_value: KeyValue) -> None:
        """Create or replace an entry.

        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        async with self._write_lock:
            conn = self._db("set_key_value")
            with map_sqlite_exceptions("SQLiteStore.set_key_value()", resource=key_value):
                await conn.execute(
                    "INSERT OR REPLACE INTO key_values (key, value) VALUES (?, ?)",
                    (key_value.key, key_value.value),
                )

    async def delete_key_value(self, key: str) -> None:
        """Delete an entry; a missing key is not an error.

        :raises PersistenceError: SQLite failed.
        :raises UsageError: the store is not open.
        """
        await self._delete("delete_key_value", "DELETE FROM key_values WHERE key = ?", key)


def _retrieve(task: asyncio.Task[None]) -> None:
    # An open() whose callers were all cancelled may fail with nobody awaiting
    # it; the next open() retries, so only mark the exception as seen.
    if not task.cancelled():
        task.exception()
