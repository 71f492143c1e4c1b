"""SQLite-specific behaviour: the file, the schema, concurrency and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
import pytest_asyncio

import aiocinder
from aiocinder.exceptions import (
    AiocinderError,
    AlreadyExists,
    InvalidArgument,
    PersistenceError,
    SchemaError,
    UsageError,
)
from aiocinder.persistence import create_store
from aiocinder.persistence._codec import SCHEMA_VERSION
from aiocinder.persistence.sqlite import SQLiteStore, map_sqlite_exceptions, parse_sqlite_url
from aiocinder.records import ConnectionRecord, KeyValue, SnapshotRecord, VolumeRecord

from .conftest import take_lock

REPO = Path(aiocinder.__file__).parent.parent


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on a connection of our own, as another program would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def aquery(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    return await anyio.to_thread.run_sync(query, path, sql, params)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "aiocinder.sqlite"


@pytest_asyncio.fixture
async def store(db: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(url(db)) as opened:
        yield opened


def volume(vid: str = "v1", **changes: Any) -> VolumeRecord:
    fields: dict[str, Any] = {"id": vid, "backend_name": "lvm", "size": 1}
    return VolumeRecord(**(fields | changes))


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- the file --------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.usefixtures("umask_zero")
async def test_new_file_is_private(db: Path) -> None:
    async with SQLiteStore(url(db)) as store:
        await store.set_volume(volume())
        files = sorted(db.parent.iterdir())
        assert [f.name for f in files] == [db.name, f"{db.name}-shm", f"{db.name}-wal"]
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


@pytest.mark.asyncio
async def test_existing_file_keeps_its_mode(db: Path) -> None:
    db.touch(mode=0o640)
    db.chmod(0o640)
    async with SQLiteStore(url(db)) as store:
        assert await store.get_volumes() == []
    assert stat.S_IMODE(db.stat().st_mode) == 0o640


@pytest.mark.asyncio
async def test_wal_journal_mode_is_active(store: SQLiteStore, db: Path) -> None:
    assert await aquery(db, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.asyncio
async def test_data_survives_close_and_reopen(db: Path) -> None:
    async with SQLiteStore(url(db)) as store:
        vol = await store.set_volume(volume(metadata={"k": "ü"}))
        vol = await store.set_volume(vol.replace(status="available"))
        snap = await store.set_snapshot(
            SnapshotRecord(id="s1", volume_id="v1", backend_name="lvm", volume_size=1)
        )
        conn = await store.set_connection(
            ConnectionRecord(id="c1", volume_id="v1", backend_name="lvm", conn_info={"a": [1]})
        )
        await store.set_key_value(KeyValue("node", "props"))
    async with SQLiteStore(url(db)) as store:
        assert await store.get_volumes() == [vol]
        assert await store.get_snapshots() == [snap]
        assert await store.get_connections() == [conn]
        assert await store.get_key_values() == [KeyValue("node", "props")]
        assert (await store.set_volume(vol)).version == 3


@pytest.mark.asyncio
async def test_missing_directory_raises_persistence_error(tmp_path: Path) -> None:
    store = SQLiteStore(url(tmp_path / "no" / "such" / "dir.db"))
    with pytest.raises(PersistenceError, match="cannot create"):
        await store.open()
    await store.close()


@pytest.mark.asyncio
async def test_a_file_that_is_not_a_database_raises_persistence_error(db: Path) -> None:
    db.write_bytes(b"this is not a database, " * 100)
    before = digest(db)
    store = SQLiteStore(url(db))
    with pytest.raises(PersistenceError) as caught:
        await store.open()
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    await store.close()
    assert digest(db) == before


# -- URLs and options ------------------------------------------------------


@pytest.mark.parametrize(
    ("connection", "database"),
    [
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite:///dir/sub.db", "dir/sub.db"),
        ("sqlite:////absolute/path.db", "/absolute/path.db"),
        ("sqlite://", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite+aiosqlite:///relative.db", "relative.db"),
    ],
)
def test_urls(connection: str, database: str) -> None:
    assert parse_sqlite_url(connection) == database
    assert SQLiteStore(connection).database == database


@pytest.mark.parametrize(
    "connection",
    [
        "",
        "aiocinder.sqlite",
        "/absolute/path.db",
        "postgresql://user@host/db",
        "sqlite:",
        "sqlite:/x.db",
        "sqlite:///",
        "sqlite://host/x.db",
        "sqlite:///x.db?mode=ro",
        "SQLITE:///x.db",
        None,
        Path("x.db"),
    ],
)
def test_bad_urls_raise_invalid_argument(connection: Any) -> None:
    with pytest.raises(InvalidArgument):
        SQLiteStore(connection)


@pytest.mark.parametrize("busy_timeout", [-1, float("nan"), float("inf"), "1", True, None])
def test_bad_busy_timeout_raises_invalid_argument(busy_timeout: Any) -> None:
    with pytest.raises(InvalidArgument):
        SQLiteStore("sqlite://", busy_timeout=busy_timeout)


def test_default_url_is_a_relative_file() -> None:
    assert SQLiteStore().database == "aiocinder.sqlite"


def test_create_store_passes_options() -> None:
    store = create_store({"storage": "sqlite", "connection": "sqlite://", "busy_timeout": 1})
    assert isinstance(store, SQLiteStore)
    assert store.database == ":memory:"
    with pytest.raises(InvalidArgument):
        create_store({"storage": "sqlite", "timeout": 1})
    with pytest.raises(InvalidArgument):
        create_store({"storage": "memory", "connection": "sqlite://"})


@pytest.mark.asyncio
async def test_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with SQLiteStore("sqlite:///relative.db") as store:
        await store.set_volume(volume())
    assert await aquery(tmp_path / "relative.db", "SELECT id FROM volumes") == [("v1",)]


@pytest.mark.asyncio
@pytest.mark.parametrize("connection", ["sqlite://", "sqlite:///:memory:"])
async def test_memory_database_creates_no_file(
    connection: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with SQLiteStore(connection) as store:
        stored = await store.set_volume(volume())
        assert await store.get_volumes() == [stored]
    assert list(tmp_path.iterdir()) == []


# -- schema ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_schema_has_one_row_with_the_current_version(store: SQLiteStore, db: Path) -> None:
    assert await aquery(db, "SELECT version FROM aiocinder_schema") == [(SCHEMA_VERSION,)]
    tables = await aquery(db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")
    assert [t for (t,) in tables] == [
        "aiocinder_schema",
        "connections",
        "key_values",
        "snapshots",
        "volumes",
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("journal", ["wal", "delete"])
async def test_newer_schema_raises_schema_error_and_leaves_the_file_alone(
    db: Path, journal: str
) -> None:
    if journal == "wal":
        async with SQLiteStore(url(db)) as store:
            await store.set_volume(volume())
    else:  # a file that is not even in WAL mode: opening must not switch it
        query(db, "CREATE TABLE aiocinder_schema (version INTEGER NOT NULL)")
    query(db, "DELETE FROM aiocinder_schema")
    query(db, "INSERT INTO aiocinder_schema VALUES (?)", (SCHEMA_VERSION + 1,))
    before = digest(db)
    listing = sorted(p.name for p in db.parent.iterdir())
    store = SQLiteStore(url(db))
    with pytest.raises(SchemaError, match=f"schema version {SCHEMA_VERSION + 1}"):
        await store.open()
    with pytest.raises(SchemaError):  # and again: a failed open can be retried
        await store.open()
    with pytest.raises(UsageError, match="before open"):
        await store.get_volumes()
    await store.close()
    assert digest(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == listing
    assert query(db, "PRAGMA journal_mode") == [(journal,)]


@pytest.mark.asyncio
async def test_foreign_tables_without_schema_row_raise_schema_error(db: Path) -> None:
    query(db, "CREATE TABLE volumes (id INTEGER PRIMARY KEY, name TEXT)")
    before = digest(db)
    store = SQLiteStore(url(db))
    with pytest.raises(SchemaError, match="not an aiocinder database"):
        await store.open()
    await store.close()
    assert digest(db) == before


@pytest.mark.asyncio
async def test_two_stores_open_one_new_file_at_once(db: Path) -> None:
    stores = [SQLiteStore(url(db)) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await asyncio.gather(*(s.set_volume(volume(f"v{i}")) for i, s in enumerate(stores)))
        assert len(await stores[0].get_volumes()) == 4
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert query(db, "SELECT version FROM aiocinder_schema") == [(SCHEMA_VERSION,)]


OPENER = textwrap.dedent(
    """
    import asyncio, sys
    from aiocinder.persistence.sqlite import SQLiteStore

    async def main():
        store = SQLiteStore(sys.argv[1])
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        async with store:
            await store.set_volume(store_volume())

    def store_volume():
        from aiocinder.records import VolumeRecord
        return VolumeRecord(id=sys.argv[2], backend_name="lvm", size=1)

    asyncio.run(main())
    """
)


def test_processes_open_one_new_file_at_once(db: Path) -> None:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, url(db), f"v{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(4)
    ]
    try:
        for proc in procs:  # every process imported everything and waits on stdin
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:  # then all go at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [p.returncode for p in procs] == [0] * 4, results
    assert query(db, "SELECT version FROM aiocinder_schema") == [(SCHEMA_VERSION,)]
    assert query(db, "SELECT id FROM volumes ORDER BY id") == [("v0",), ("v1",), ("v2",), ("v3",)]


# -- lifecycle -------------------------------------------------------------


@pytest.mark.asyncio
async def test_use_before_open_and_after_close_names_the_method(db: Path) -> None:
    store = SQLiteStore(url(db))
    with pytest.raises(UsageError, match=r"^SQLiteStore\.get_volumes\(\) called before open\(\)$"):
        await store.get_volumes()
    await store.open()
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(
        UsageError, match=r"^SQLiteStore\.get_volumes\(\) called after close\(\)$"
    ) as caught:
        await store.get_volumes()
    assert isinstance(caught.value, RuntimeError)
    with pytest.raises(UsageError, match=r"^SQLiteStore\.set_key_value\(\) called after close"):
        await store.set_key_value(KeyValue("k", "v"))
    with pytest.raises(UsageError, match=r"^SQLiteStore\.open\(\) called after close"):
        await store.open()


@pytest.mark.asyncio
async def test_close_while_opening(db: Path) -> None:
    store = SQLiteStore(url(db))
    opening = asyncio.create_task(store.open())
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(UsageError):
        await opening
    with pytest.raises(UsageError):
        await store.get_volumes()


def forget(objects: list[Any]) -> None:
    objects.clear()
    gc.collect()


@pytest.mark.asyncio
async def test_unclosed_store_warns(db: Path) -> None:
    store = SQLiteStore(url(db))
    await store.open()
    conn = store._conn
    assert conn is not None
    stores = [store]
    del store
    with pytest.warns(ResourceWarning, match="unclosed <SQLiteStore"):
        forget(stores)
    await conn.close()  # what the store's owner forgot, so aiosqlite's thread ends


# -- errors ----------------------------------------------------------------


def sqlite_error_classes() -> list[type[sqlite3.Error]]:
    found: list[type[sqlite3.Error]] = []
    pending: list[type[sqlite3.Error]] = [sqlite3.Error]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("error", sqlite_error_classes(), ids=lambda c: c.__name__)
def test_every_sqlite_error_is_mapped(error: type[sqlite3.Error]) -> None:
    with pytest.raises(AiocinderError) as caught, map_sqlite_exceptions("op()"):
        raise error("boom")
    assert type(caught.value) is PersistenceError
    assert caught.value.__cause__.__class__ is error
    assert "op() failed: boom" in str(caught.value)


def test_duplicate_key_is_mapped_to_already_exists() -> None:
    error = sqlite3.IntegrityError("UNIQUE constraint failed: volumes.id")
    error.sqlite_errorcode = sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
    record = volume()
    with pytest.raises(AlreadyExists) as caught, map_sqlite_exceptions("op()", resource=record):
        raise error
    assert caught.value.resource is record
    assert caught.value.__cause__ is error


@pytest.mark.asyncio
async def test_locked_database_raises_persistence_error(db: Path) -> None:
    async with SQLiteStore(url(db), busy_timeout=0.05) as store:
        await store.set_volume(volume())
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(PersistenceError, match="database is locked") as caught:
                await store.set_volume(volume("v2"))
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            assert caught.value.resource.id == "v2"
            assert [v.id for v in await store.get_volumes()] == ["v1"]  # reads still work
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.set_volume(volume("v2"))


# -- cancellation ----------------------------------------------------------


async def assert_no_transaction_left(store: SQLiteStore, db: Path) -> None:
    # A cancelled caller's statement still runs in aiosqlite's thread; one
    # more query, queued after it, returns once it is done.
    await store.get_key_values("flush")
    assert store._conn is not None
    assert not store._conn.in_transaction
    # Another connection can take the write lock at once: we hold none.
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("operation", ["update", "insert"])
async def test_cancelled_writes_leave_no_half_state(
    store: SQLiteStore, db: Path, operation: str
) -> None:
    current = await store.set_volume(volume("v0", status="available"))
    for i in range(40):
        if operation == "update":
            wanted = current.replace(status="error", description=f"attempt {i}")
        else:
            wanted = volume(f"new-{i}", description=f"attempt {i}")
        task = asyncio.create_task(store.set_volume(wanted))
        for _ in range(i % 8):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await assert_no_transaction_left(store, db)
        stored = await store.get_volumes(volume_id=wanted.id)
        # Either nothing happened or all of it did, never a part.
        if operation == "update":
            (row,) = stored
            assert row in (
                current,
                wanted.replace(version=current.version + 1, updated_at=row.updated_at),
            )
            if row.version > current.version:
                assert row.description == f"attempt {i}"
        else:
            assert stored in ([], [wanted.replace(version=1)])
        # A write from another task still works and is committed.
        (current,) = await store.get_volumes(volume_id="v0")
        current = await asyncio.create_task(store.set_volume(current.replace(status="available")))
        assert await aquery(db, "SELECT version FROM volumes WHERE id = 'v0'") == [
            (current.version,)
        ]
    await assert_no_transaction_left(store, db)


@pytest.mark.asyncio
async def test_cancelled_open_leaves_no_transaction(tmp_path: Path) -> None:
    for i in range(12):
        db = tmp_path / f"db{i}.sqlite"
        store = SQLiteStore(url(db))
        task = asyncio.create_task(store.open())
        for _ in range(i):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await store.open()  # finishes (or awaits) the same shielded open
            await assert_no_transaction_left(store, db)
            await store.set_volume(volume())
            assert query(db, "SELECT version FROM aiocinder_schema") == [(SCHEMA_VERSION,)]
            assert query(db, "SELECT id FROM volumes") == [("v1",)]
        finally:
            await store.close()


@pytest.mark.asyncio
async def test_cancelled_iteration_leaves_no_transaction(store: SQLiteStore, db: Path) -> None:
    for i in range(10):
        await store.set_volume(volume(f"v{i}"))

    async def scan() -> None:
        async for _ in store.iter_volumes(batch_size=3):
            await asyncio.sleep(0)

    task = asyncio.create_task(scan())
    await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_no_transaction_left(store, db)


def readers_left(path: Path) -> bool:
    """Whether a connection still reads an old snapshot of ``path``: a read
    statement left open. Another connection's checkpoint then cannot finish."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        ((busy, _, _),) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return bool(busy)
    finally:
        conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("stop", ["none", "error", "cancel", "close"])
async def test_a_big_read_ends_its_statement_however_it_stops(
    store: SQLiteStore, db: Path, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    # Three pages of rows: the read goes through a cursor, a page per hop.
    made = await asyncio.gather(*(store.set_volume(volume(f"v{i:04d}")) for i in range(768)))
    build = VolumeRecord.from_stored
    decoded = 0
    reader: asyncio.Task[list[VolumeRecord]] | None = None

    def stopping(data: Any) -> VolumeRecord:
        nonlocal decoded
        decoded += 1
        if decoded == 300:  # on the second page
            assert reader is not None
            if stop == "error":
                raise RuntimeError("decoding failed")
            if stop == "cancel":
                reader.cancel()
            if stop == "close":
                asyncio.get_running_loop().create_task(store.close())
        return build(data)

    monkeypatch.setattr(VolumeRecord, "from_stored", staticmethod(stopping))
    reader = asyncio.create_task(store.get_volumes())
    expected: type[BaseException] | None = {
        "none": None, "error": RuntimeError, "cancel": asyncio.CancelledError, "close": UsageError
    }[stop]  # fmt: skip
    if expected is None:
        assert await reader == sorted(made, key=lambda v: v.id)
    else:
        with pytest.raises(expected):
            await reader
    if stop == "close":
        return  # closing the connection ended the statement
    await store.set_volume(volume("after"))
    await assert_no_transaction_left(store, db)
    assert not readers_left(db)
    assert len(await store.get_volumes()) == 769


# -- locks between processes ------------------------------------------------

LOCKER = textwrap.dedent(
    """
    import asyncio, sys
    from aiocinder.persistence.sqlite import SQLiteStore

    async def main(url, key, mode):
        async with SQLiteStore(url) as store:
            if mode == "try":  # is the key free for this process within 0.3 s?
                try:
                    async with asyncio.timeout(0.3), store.lock(key):
                        print("free", flush=True)
                except TimeoutError:
                    print("busy", flush=True)
                return
            async with store.lock(key):  # hold it until told (or killed)
                print("held", flush=True)
                await asyncio.to_thread(sys.stdin.readline)

    asyncio.run(main(*sys.argv[1:]))
    """
)


def _child_env() -> dict[str, str]:
    return dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )


async def _try_in_child(db: Path, key: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, url(db), key, "try",
        stdout=asyncio.subprocess.PIPE, env=_child_env(),
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return out.decode().strip()


@contextlib.asynccontextmanager
async def _held_in_child(db: Path, key: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, url(db), key, "hold",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=_child_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"held\n"
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.asyncio
@pytest.mark.usefixtures("umask_zero")
async def test_the_lock_file_is_private_and_beside_the_database(
    store: SQLiteStore, db: Path
) -> None:
    lock_file = db.parent / f"{db.name}.locks"
    assert not lock_file.exists()  # made on first use only
    assert await take_lock(store, "volume:a")
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
    assert lock_file.stat().st_size == 0  # byte-range locks need no data


@pytest.mark.asyncio
async def test_a_lock_excludes_another_process(store: SQLiteStore, db: Path) -> None:
    async with store.lock("volume:a"):
        assert await _try_in_child(db, "volume:a") == "busy"
        assert await _try_in_child(db, "volume:b") == "free"
    assert await _try_in_child(db, "volume:a") == "free"


@pytest.mark.asyncio
async def test_another_process_holding_a_lock_makes_us_wait(store: SQLiteStore, db: Path) -> None:
    async with _held_in_child(db, "volume:a") as holder:
        waiting = asyncio.create_task(take_lock(store, "volume:a", within=10))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert await take_lock(store, "volume:b", within=10)
        assert holder.stdin is not None
        holder.stdin.write(b"release\n")
        assert await waiting
        assert await asyncio.wait_for(holder.wait(), 30) == 0


@pytest.mark.asyncio
async def test_a_lock_dies_with_its_process(store: SQLiteStore, db: Path) -> None:
    async with _held_in_child(db, "volume:a") as holder:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel lets the lock go
        await holder.wait()
        assert await take_lock(store, "volume:a", within=10)


@pytest.mark.asyncio
async def test_stores_of_one_process_share_the_lock_file(db: Path) -> None:
    from aiocinder.persistence import sqlite

    async with SQLiteStore(url(db)) as first:
        second = SQLiteStore(url(db))
        await second.open()
        async with first.lock("volume:a"):
            # The second store of this process waits for the first...
            waiting = asyncio.create_task(take_lock(second, "volume:a"))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert len(sqlite._lock_files) == 1
            # ... and closing it does not close the descriptor the lock is on
            # (closing any descriptor of the file would drop the lock).
            await second.close()
            assert len(sqlite._lock_files) == 1
            assert await _try_in_child(db, "volume:a") == "busy"
        assert await _try_in_child(db, "volume:a") == "free"
    assert sqlite._lock_files == {}


@pytest.mark.asyncio
async def test_an_in_memory_database_locks_tasks_and_makes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with SQLiteStore("sqlite://") as store:
        async with store.lock("volume:a"):
            waiting = asyncio.create_task(take_lock(store, "volume:a", within=10))
            await asyncio.sleep(0.05)
            assert not waiting.done()
        assert await waiting
    assert list(tmp_path.iterdir()) == []


@pytest.mark.asyncio
async def test_an_unusable_lock_file_is_a_persistence_error(store: SQLiteStore, db: Path) -> None:
    (db.parent / f"{db.name}.locks").mkdir()  # a directory cannot be opened for writing
    with pytest.raises(PersistenceError, match="lock file"):
        await take_lock(store, "volume:a")


def test_a_program_that_fails_before_shutdown_still_exits(tmp_path: Path) -> None:
    """aiosqlite's worker thread must not keep a crashed program alive."""
    script = (
        "import asyncio, aiocinder\n"
        "async def main():\n"
        f"    await aiocinder.setup({{'storage': 'sqlite', "
        f"'connection': 'sqlite:///{tmp_path}/x.db'}})\n"
        "    raise RuntimeError('boom')\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "RuntimeError: boom" in result.stderr
