"""PostgreSQL-only behaviour: DSNs, schema versions, several processes, error mapping.

The shared behaviour of every store is in ``test_contract.py``; this file
covers what only a database shared by many processes has. It needs a
PostgreSQL server (see ``tests/pgserver.py``): the tests skip without one,
and fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pgserver
import pytest
import pytest_asyncio

import aiocinder
from aiocinder.exceptions import (
    AiocinderError,
    AlreadyExists,
    ConflictError,
    ConnectionNotFound,
    InvalidArgument,
    PersistenceError,
    SchemaError,
    SnapshotNotFound,
    UsageError,
    VolumeNotFound,
)
from aiocinder.persistence import create_store
from aiocinder.persistence._codec import SCHEMA_VERSION
from aiocinder.persistence.base import PersistenceStore, lock_id
from aiocinder.persistence.postgresql import (
    MIGRATION_LOCK_KEY,
    MIGRATIONS,
    PostgreSQLStore,
    map_postgres_exceptions,
)
from aiocinder.records import ConnectionRecord, KeyValue, SnapshotRecord, VolumeRecord

from .conftest import take_lock

# -- fixtures (pg_server and pg_dsn are in conftest.py) ---------------------------


@pytest_asyncio.fixture
async def pg_store(pg_dsn: str) -> AsyncIterator[PostgreSQLStore]:
    async with PostgreSQLStore(pg_dsn, max_size=4) as store:
        yield store


async def _admin(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


def _volume(vid: str = "vol-1", **fields: Any) -> VolumeRecord:
    return VolumeRecord(**{"id": vid, "backend_name": "lvm", "size": 1, **fields})


# -- the test server -----------------------------------------------------------


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_a_missing_server_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(pgserver, "_shared", None)
    monkeypatch.setattr(pgserver, "_shared_error", pgserver.ServerUnavailable("no binaries"))
    with pytest.raises(outcome, match="no binaries"):
        pgserver.require_server()


def test_an_unreachable_external_server_is_unavailable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(pgserver.ServerUnavailable, match="does not answer"):
        pgserver.PostgresServer(f"postgresql://u@127.0.0.1:{port}/db").start()


# -- DSN and options ------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        "",
        "   ",
        "mysql://user@localhost/db",
        "sqlite:///aiocinder.sqlite",
        "postgresql+psycopg2://user@localhost/db",
        "host=localhost dbname=aiocinder",
        "localhost:5432",
        None,
        5432,
    ],
)
def test_refuses_a_dsn_that_is_not_postgresql(dsn: Any) -> None:
    with pytest.raises(InvalidArgument) as info:
        PostgreSQLStore(dsn)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:secret@db:5432/aic", "postgresql://u:secret@db:5432/aic"),
        ("postgresql+asyncpg://u:secret@db:5432/aic", "postgresql://u:secret@db:5432/aic"),
        ("postgres://u:secret@db/aic", "postgresql://u:secret@db/aic"),
        ("POSTGRESQL+ASYNCPG://u:secret@db/aic", "postgresql://u:secret@db/aic"),
        ("postgresql:///aic?host=/run/postgresql", "postgresql:///aic?host=/run/postgresql"),
    ],
)
def test_accepts_postgresql_and_sqlalchemy_dsns(given: str, expected: str) -> None:
    store = PostgreSQLStore(given)
    assert store._dsn == expected
    assert "secret" not in repr(store)
    assert store.name == "postgresql"


@pytest.mark.parametrize(
    "options",
    [
        {"min_size": -1},
        {"max_size": 0},
        {"min_size": 5, "max_size": 2},
        {"max_size": True},
        {"max_size": 2.0},
        {"command_timeout": 0},
        {"command_timeout": "60"},
        {"connect_timeout": None},
        {"connect_timeout": -1.0},
        {"lock_pool_size": 0},
        {"lock_pool_size": 1.5},
    ],
)
def test_refuses_bad_pool_options(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        PostgreSQLStore("postgresql://u@h/db", **options)


def test_create_store_builds_it_from_config() -> None:
    store = create_store(
        {"storage": "postgresql", "connection": "postgresql+asyncpg://u@h/db", "max_size": 3}
    )
    assert isinstance(store, PostgreSQLStore)
    with pytest.raises(InvalidArgument):
        create_store({"storage": "postgresql", "connection": "mysql://u@h/db"})


def test_asyncpg_loads_only_when_postgresql_is_chosen() -> None:
    code = (
        "import sys, aiocinder, aiocinder.persistence\n"
        "assert 'asyncpg' not in sys.modules, 'asyncpg imported by aiocinder'\n"
        "from aiocinder.persistence import create_store\n"
        "create_store({'storage': 'postgresql', 'connection': 'postgresql://u@h/db'})\n"
        "assert 'asyncpg' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_child_env(), timeout=60)


def _child_env() -> dict[str, str]:
    """The environment for a child Python that imports this aiocinder."""
    root = str(Path(aiocinder.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


# -- schema and migrations ------------------------------------------------------


def test_every_schema_version_has_a_migration() -> None:
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


@pytest.mark.asyncio
async def test_open_creates_the_versioned_schema(pg_dsn: str) -> None:
    async with PostgreSQLStore(pg_dsn) as store:
        await store.open()  # idempotent
    conn = await _admin(pg_dsn)
    try:
        assert await conn.fetch("SELECT version FROM aiocinder_schema") == [(SCHEMA_VERSION,)]
        tables = {
            row[0]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        assert tables == {"aiocinder_schema", "volumes", "snapshots", "connections", "key_values"}
        columns = await conn.fetch(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'volumes' ORDER BY ordinal_position"
        )
        assert [tuple(c) for c in columns] == [
            ("id", "text", "NO"),
            ("backend_name", "text", "NO"),
            ("name", "text", "YES"),
            ("status", "text", "NO"),
            ("created_at", "timestamp with time zone", "NO"),
            ("version", "bigint", "NO"),
            ("data", "jsonb", "NO"),
        ]
        indexes = {
            row[0]
            for row in await conn.fetch(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            )
        }
        for table, column in [
            ("volumes", "backend_name"),
            ("volumes", "name"),
            ("volumes", "created_at, id"),
            ("snapshots", "volume_id"),
            ("snapshots", "backend_name"),
            ("snapshots", "name"),
            ("snapshots", "created_at, id"),
            ("connections", "volume_id"),
            ("connections", "backend_name"),
            ("connections", "created_at, id"),
        ]:
            assert any(f"ON public.{table} USING btree ({column})" in d for d in indexes), (
                table,
                column,
            )
    finally:
        await conn.close()


async def _dump(dsn: str) -> dict[str, Any]:
    """Everything a test could see changed in the database."""
    conn = await _admin(dsn)
    try:
        tables = sorted(
            row[0]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        )
        out: dict[str, Any] = {"tables": tables}
        for table in tables:
            out[table] = sorted(map(tuple, await conn.fetch(f'SELECT * FROM "{table}"')), key=repr)
        return out
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_a_newer_schema_is_refused_and_left_untouched(pg_dsn: str) -> None:
    async with PostgreSQLStore(pg_dsn) as store:
        await store.set_volume(_volume())
    conn = await _admin(pg_dsn)
    try:
        await conn.execute("UPDATE aiocinder_schema SET version = $1", SCHEMA_VERSION + 1)
        await conn.execute("CREATE TABLE from_the_future (x int)")
    finally:
        await conn.close()
    before = await _dump(pg_dsn)

    store = PostgreSQLStore(pg_dsn)
    with pytest.raises(SchemaError, match=f"schema version {SCHEMA_VERSION + 1}"):
        await store.open()
    assert await _dump(pg_dsn) == before
    with pytest.raises(UsageError):  # a failed open leaves the store unopened
        await store.get_volumes()
    await store.close()


@pytest.mark.asyncio
async def test_tables_not_made_by_aiocinder_are_refused(pg_dsn: str) -> None:
    conn = await _admin(pg_dsn)
    try:
        await conn.execute("CREATE TABLE volumes (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO volumes VALUES (1)")
    finally:
        await conn.close()
    before = await _dump(pg_dsn)
    with pytest.raises(SchemaError, match="did not make"):
        await PostgreSQLStore(pg_dsn).open()
    assert await _dump(pg_dsn) == before  # rolled back: no aiocinder_schema either


@pytest.mark.asyncio
async def test_open_waits_for_the_migration_lock(pg_dsn: str) -> None:
    holder = await _admin(pg_dsn)
    store = PostgreSQLStore(pg_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            opening = asyncio.create_task(store.open())
            done, _ = await asyncio.wait([opening], timeout=0.5)
            assert not done, "open() did not wait for the schema lock"
        await asyncio.wait_for(opening, 30)
        assert await store.get_volumes() == []
    finally:
        await holder.close()
        await store.close()


@pytest.mark.asyncio
async def test_many_stores_open_a_fresh_database_at_once(pg_dsn: str) -> None:
    stores = [PostgreSQLStore(pg_dsn, min_size=1, max_size=1) for _ in range(8)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].set_volume(_volume())
        for s in stores:
            assert [v.id for v in await s.get_volumes()] == ["vol-1"]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    conn = await _admin(pg_dsn)
    try:
        assert await conn.fetch("SELECT version FROM aiocinder_schema") == [(SCHEMA_VERSION,)]
    finally:
        await conn.close()


_OPEN_SCRIPT = """
import asyncio, sys
from aiocinder.persistence.postgresql import PostgreSQLStore  # imports asyncpg

async def main(dsn):
    async with PostgreSQLStore(dsn, min_size=1, max_size=1) as store:
        print(len(await store.get_volumes()))

print("ready", flush=True)
sys.stdin.readline()  # "go": sent to every process at once
asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.asyncio
async def test_processes_open_a_fresh_database_at_once(pg_dsn: str) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _OPEN_SCRIPT,
            pg_dsn,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_child_env(),
        )
        for _ in range(3)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    results = await asyncio.gather(*(p.communicate(b"go\n") for p in procs))
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == "0"
    conn = await _admin(pg_dsn)
    try:
        assert await conn.fetch("SELECT version FROM aiocinder_schema") == [(SCHEMA_VERSION,)]
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_ids_sort_by_code_point_whatever_the_database_locale(
    pg_server: pgserver.PostgresServer,
) -> None:
    admin = await asyncpg.connect(pg_server.dsn)
    name = f"aiocinder_icu_{os.getpid()}"
    try:
        await admin.execute(
            f'CREATE DATABASE "{name}" TEMPLATE template0 '
            "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
        )
    except asyncpg.PostgresError as exc:
        await admin.close()
        if os.environ.get("CI"):
            pytest.fail(f"CI's PostgreSQL must make ICU databases: {exc}")
        pytest.skip(f"this server cannot make an ICU database: {exc}")
    try:
        ids = ["b", "B", "a-c", "ab", "a_b", "Z", "é", "a-b"]
        same_time = datetime(2024, 1, 1, tzinfo=UTC)
        async with PostgreSQLStore(pg_server.database_dsn(name)) as store:
            for vid in ids:
                await store.set_volume(_volume(vid, created_at=same_time))
            assert [v.id for v in await store.get_volumes()] == sorted(ids)
            assert [v.id async for v in store.iter_volumes(batch_size=3)] == sorted(ids)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# -- advisory locks ---------------------------------------------------------------


async def _advisory_locks(dsn: str) -> list[tuple[int, bool]]:
    """The advisory locks of the database's sessions: (64-bit key, granted)."""
    conn = await _admin(dsn)
    try:
        rows = await conn.fetch(
            "SELECT (classid::bigint << 32) | objid::bigint, granted FROM pg_locks "
            "WHERE locktype = 'advisory' AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    finally:
        await conn.close()
    return [(row[0] - (1 << 64) if row[0] >= 1 << 63 else row[0], row[1]) for row in rows]


@pytest.mark.asyncio
async def test_a_lock_is_an_advisory_lock_on_the_server(
    pg_store: PostgreSQLStore, pg_dsn: str
) -> None:
    async with pg_store.lock("volume:a"):
        assert await _advisory_locks(pg_dsn) == [(lock_id("volume:a"), True)]
    assert await _advisory_locks(pg_dsn) == []


@pytest.mark.asyncio
async def test_a_lock_excludes_another_pool(
    two_stores: tuple[PostgreSQLStore, PostgreSQLStore], pg_dsn: str
) -> None:
    a, b = two_stores
    async with a.lock("volume:a"):
        waiting = asyncio.create_task(take_lock(b, "volume:a", within=10))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert (lock_id("volume:a"), False) in await _advisory_locks(pg_dsn)
        assert await take_lock(b, "volume:b", within=10)
    assert await waiting
    assert await _advisory_locks(pg_dsn) == []


@pytest.mark.asyncio
async def test_cancelled_waiters_leave_nothing_held(
    two_stores: tuple[PostgreSQLStore, PostgreSQLStore], pg_dsn: str
) -> None:
    # Cancel waiters just before, at and after the moment the server grants
    # them the lock: whatever the session got is let go with the connection.
    a, b = two_stores
    for round_ in range(30):
        release = asyncio.Event()

        async def hold(release: asyncio.Event) -> None:
            async with a.lock("volume:a"):
                await release.wait()

        holding = asyncio.create_task(hold(release))
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(take_lock(b, "volume:a"))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.sleep(0.0005 * round_)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await holding
        assert await take_lock(a, "volume:a", within=10)
    assert await _advisory_locks(pg_dsn) == []


@pytest.mark.asyncio
async def test_lock_holders_never_starve_their_own_writes(pg_dsn: str) -> None:
    # Locks have a pool of their own: holders of many locks still get a
    # connection of the main pool (of one connection here) for their writes.
    async with PostgreSQLStore(pg_dsn, min_size=1, max_size=1, lock_pool_size=8) as store:
        inside = asyncio.Barrier(8)

        async def work(i: int) -> None:
            async with store.lock(f"volume:{i}"):
                await inside.wait()  # all 8 locks are held at once
                await store.set_volume(_volume(f"vol-{i}"))

        await asyncio.wait_for(asyncio.gather(*(work(i) for i in range(8))), 30)
    assert await _advisory_locks(pg_dsn) == []


@pytest.mark.asyncio
async def test_a_lock_whose_connection_breaks_is_let_go_quietly(
    pg_store: PostgreSQLStore, pg_dsn: str
) -> None:
    async with pg_store.lock("volume:a"):
        admin = await _admin(pg_dsn)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'aiocinder locks' AND datname = current_database()"
            )
        finally:
            await admin.close()
        assert killed == 1
        assert await _advisory_locks(pg_dsn) == []  # the server let it go with the session
    async with asyncio.timeout(10), pg_store.lock("volume:a"):
        assert await _advisory_locks(pg_dsn) == [(lock_id("volume:a"), True)]


# -- outage -------------------------------------------------------------------------


async def _checkpoint(dsn: str) -> None:
    """Write everything to disk, so that even a crash of the test server keeps it."""
    conn = await _admin(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
@pytest.mark.asyncio
async def test_the_store_recovers_when_the_server_comes_back(mode: str) -> None:
    # A server of our own, to take down: statements fail with PersistenceError
    # while it is down, and the same store works again once it is back.
    async with pgserver.own_server() as server:
        dsn = server.dsn
        store = PostgreSQLStore(dsn, min_size=2, max_size=4, connect_timeout=5)
        await store.open()
        try:
            stored = await store.set_volume(_volume())
            await _checkpoint(dsn)  # the test server does not wait for its disk (fsync=off...)
            async with store.lock("volume:vol-1"):
                await asyncio.to_thread(server.halt, mode)
                for call in (
                    store.get_volumes(),
                    store.set_volume(stored.replace(status="error")),
                    store.get_key_values(),
                    take_lock(store, "volume:other"),
                ):
                    with pytest.raises(PersistenceError, match="cannot reach PostgreSQL"):
                        await call
                await asyncio.to_thread(server.resume)
            # the lock's session died with the server: leaving the block is quiet
            assert await store.get_volumes() == [stored]
            async with asyncio.timeout(10), store.lock("volume:vol-1"):
                assert await _advisory_locks(dsn) == [(lock_id("volume:vol-1"), True)]
            updated = await store.set_volume(stored.replace(status="available"))
            assert updated.version == 2
        finally:
            await store.close()


# -- compare-and-swap between processes -----------------------------------------


@pytest_asyncio.fixture
async def two_stores(pg_dsn: str) -> AsyncIterator[tuple[PostgreSQLStore, PostgreSQLStore]]:
    """Two stores with pools of their own on one database: two processes, in effect."""
    async with PostgreSQLStore(pg_dsn) as a, PostgreSQLStore(pg_dsn) as b:
        yield a, b


@pytest.mark.asyncio
async def test_a_stale_update_from_another_pool_conflicts(
    two_stores: tuple[PostgreSQLStore, PostgreSQLStore],
) -> None:
    a, b = two_stores
    created = await a.set_volume(_volume(status="creating"))
    [seen_by_b] = await b.get_volumes(volume_id="vol-1")
    assert seen_by_b == created

    updated = await a.set_volume(created.replace(status="available"))
    assert updated.version == 2
    with pytest.raises(ConflictError, match="version 1") as info:
        await b.set_volume(seen_by_b.replace(status="error"))
    assert info.value.resource.id == "vol-1"
    assert (await a.get_volumes(volume_id="vol-1"))[0].status == "available"

    [fresh] = await b.get_volumes(volume_id="vol-1")
    final = await b.set_volume(fresh.replace(status="in-use"))
    assert final.version == 3
    assert await a.get_volumes(volume_id="vol-1") == [final]


@pytest.mark.asyncio
async def test_racing_updates_from_two_pools_let_exactly_one_win(
    two_stores: tuple[PostgreSQLStore, PostgreSQLStore],
) -> None:
    a, b = two_stores
    for n in range(20):
        base = await a.set_volume(_volume(f"vol-{n}"))
        results = await asyncio.gather(
            a.set_volume(base.replace(status="available")),
            b.set_volume(base.replace(status="error")),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, VolumeRecord)]
        losers = [r for r in results if isinstance(r, ConflictError)]
        assert len(winners) == 1, results
        assert len(losers) == 1, results
        assert await b.get_volumes(volume_id=base.id) == winners


@pytest.mark.parametrize(
    ("make", "setter", "getter", "deleter", "not_found"),
    [
        (lambda: _volume("x"), "set_volume", "get_volumes", "delete_volume", VolumeNotFound),
        (
            lambda: SnapshotRecord(id="x", volume_id="v", backend_name="lvm", volume_size=1),
            "set_snapshot", "get_snapshots", "delete_snapshot", SnapshotNotFound,
        ),
        (
            lambda: ConnectionRecord(id="x", volume_id="v", backend_name="lvm"),
            "set_connection", "get_connections", "delete_connection", ConnectionNotFound,
        ),
    ],
)  # fmt: skip
@pytest.mark.asyncio
async def test_updating_a_row_another_pool_deleted_is_not_found(
    two_stores: tuple[PostgreSQLStore, PostgreSQLStore],
    make: Callable[[], Any],
    setter: str,
    getter: str,
    deleter: str,
    not_found: type[Exception],
) -> None:
    a, b = two_stores
    stored = await getattr(a, setter)(make())
    with pytest.raises(AlreadyExists, match="'x' already exists"):
        await getattr(b, setter)(make())
    await getattr(b, deleter)("x")
    with pytest.raises(not_found):
        await getattr(a, setter)(stored.replace(status=stored.status))
    assert await getattr(a, getter)() == []


# -- queries --------------------------------------------------------------------


class _CountingPool:
    """Wraps the store's pool to count the statements it runs."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.statements: list[str] = []

    async def fetch(self, sql: str, *args: Any) -> Any:
        self.statements.append(sql)
        return await self.pool.fetch(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


@pytest.mark.asyncio
async def test_iter_volumes_pages_by_created_at_then_id(pg_store: PostgreSQLStore) -> None:
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    expected = []
    for n in range(23):
        # Ties on created_at (n // 5) so that pages must break them by id.
        vol = _volume(
            f"vol-{(n * 7) % 23:02}",
            created_at=t0 + timedelta(seconds=n // 5),
            backend_name="a" if n % 3 else "b",
            status="available" if n % 2 else "error",
            name="big" if n % 4 == 0 else None,
        )
        expected.append(await pg_store.set_volume(vol))
    expected.sort(key=lambda v: (v.created_at, v.id))

    counting = _CountingPool(pg_store._pool)
    pg_store._pool = counting  # type: ignore[assignment]
    got = [v async for v in pg_store.iter_volumes(batch_size=4)]
    assert got == expected
    assert len(counting.statements) == 6  # 5 full pages and one short one
    assert all("LIMIT" in sql for sql in counting.statements)

    def want(**kw: Any) -> list[VolumeRecord]:
        return [v for v in expected if all(getattr(v, k) == x for k, x in kw.items())]

    assert [v async for v in pg_store.iter_volumes("a", batch_size=2)] == want(backend_name="a")
    assert [v async for v in pg_store.iter_volumes("a", status="error", batch_size=1)] == want(
        backend_name="a", status="error"
    )
    assert [v async for v in pg_store.iter_volumes(volume_name="big", batch_size=100)] == want(
        name="big"
    )
    assert await pg_store.get_volumes(backend_name="b") == want(backend_name="b")

    counting.statements.clear()
    ids = [v.id for v in expected[::2]] + ["missing"]
    assert await pg_store.get_volumes_by_ids(ids) == expected[::2]
    assert len(counting.statements) == 1
    assert "ANY" in counting.statements[0]
    assert await pg_store.get_volumes_by_ids([]) == []
    assert len(counting.statements) == 1


@pytest.mark.asyncio
async def test_argument_checks(pg_store: PostgreSQLStore) -> None:
    with pytest.raises(InvalidArgument):
        await pg_store.get_volumes_by_ids("vol-1")
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InvalidArgument):
            pg_store.iter_volumes(batch_size=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await pg_store.set_volume(_volume(version=-1))
    with pytest.raises(InvalidArgument, match="refused a value"):
        await pg_store.set_volume(_volume(name=5))  # type: ignore[arg-type]
    assert await pg_store.get_volumes() == []


@pytest.mark.parametrize(
    "fields", [{"name": "a\x00b"}, {"metadata": {"k": "a\x00b"}}], ids=["column", "json"]
)
@pytest.mark.asyncio
async def test_nul_characters_are_refused(
    pg_store: PostgreSQLStore, fields: dict[str, Any]
) -> None:
    # PostgreSQL text and jsonb cannot hold U+0000; the other stores can.
    with pytest.raises(InvalidArgument, match="refused a value"):
        await pg_store.set_volume(_volume(**fields))
    assert await pg_store.get_volumes() == []


@pytest.mark.asyncio
async def test_values_are_parameters_never_sql(pg_store: PostgreSQLStore) -> None:
    hostile = "x'); DROP TABLE volumes; --"
    vol = await pg_store.set_volume(
        _volume(hostile, name=hostile, metadata={hostile: "é ✓ \x01"}, description='"\\')
    )
    assert await pg_store.get_volumes(volume_name=hostile) == [vol]
    assert await pg_store.get_volumes_by_ids([hostile]) == [vol]
    await pg_store.set_key_value(KeyValue(hostile, hostile))
    assert await pg_store.get_key_values(hostile) == [KeyValue(hostile, hostile)]


@pytest.mark.asyncio
async def test_a_statement_over_command_timeout_is_a_persistence_error(pg_dsn: str) -> None:
    async with PostgreSQLStore(pg_dsn, command_timeout=0.3) as store:
        locker = await _admin(pg_dsn)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE volumes IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(PersistenceError, match="timed out") as info:
                    await store.get_volumes()
                assert isinstance(info.value.__cause__, TimeoutError)
        finally:
            await locker.close()
        assert await store.get_volumes() == []


@pytest.mark.asyncio
async def test_an_unreachable_server_is_a_persistence_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PostgreSQLStore(f"postgresql://u:hunter2@127.0.0.1:{port}/db", connect_timeout=5)
    with pytest.raises(PersistenceError, match="cannot reach PostgreSQL") as info:
        await store.open()
    assert "hunter2" not in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    await store.close()


# -- lifecycle ------------------------------------------------------------------

_CALLS: dict[str, tuple[Any, ...]] = {
    "get_volumes": (),
    "get_volumes_by_ids": (["v"],),
    "set_volume": (_volume(),),
    "delete_volume": ("v",),
    "get_snapshots": (),
    "get_snapshots_by_volume_ids": (["v"],),
    "set_snapshot": (SnapshotRecord(id="s", volume_id="v", backend_name="b", volume_size=1),),
    "delete_snapshot": ("s",),
    "get_connections": (),
    "get_connections_by_volume_ids": (["v"],),
    "set_connection": (ConnectionRecord(id="c", volume_id="v", backend_name="b"),),
    "delete_connection": ("c",),
    "get_key_values": (),
    "set_key_value": (KeyValue("k", "v"),),
    "delete_key_value": ("k",),
    "iter_volumes": (),
}


def test_the_lifecycle_checks_cover_every_method() -> None:
    abstract = set(PersistenceStore.__abstractmethods__) - {"open", "close"}
    assert abstract == set(_CALLS)


@pytest.mark.parametrize(
    ("method", "record"),
    [
        ("put_volume", _volume()),
        ("put_snapshot", SnapshotRecord(id="s", volume_id="v", backend_name="b", volume_size=1)),
        ("put_connection", ConnectionRecord(id="c", volume_id="v", backend_name="b")),
    ],
)
@pytest.mark.asyncio
async def test_the_base_class_helpers_refuse_use_after_close(
    pg_dsn: str, method: str, record: Any
) -> None:
    store = PostgreSQLStore(pg_dsn)
    await store.open()
    stored = await getattr(store, method)(record)
    assert stored.version == 1
    await store.close()
    with pytest.raises(UsageError, match="after close"):
        await getattr(store, method)(record)


async def _call(store: PostgreSQLStore, method: str) -> None:
    result = getattr(store, method)(*_CALLS[method])
    if method == "iter_volumes":
        assert [r async for r in result] == []
    else:
        await result


@pytest.mark.parametrize("method", sorted(_CALLS))
@pytest.mark.asyncio
async def test_use_after_close_raises_usage_error(pg_dsn: str, method: str) -> None:
    store = PostgreSQLStore(pg_dsn)
    with pytest.raises(UsageError, match=rf"PostgreSQLStore\.{method}\(\) called before open"):
        await _call(store, method)
    await store.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(UsageError, match=rf"PostgreSQLStore\.{method}\(\) called after close"):
        await _call(store, method)
    with pytest.raises(RuntimeError):
        await _call(store, method)
    with pytest.raises(UsageError, match="open"):
        await store.open()


@pytest.mark.asyncio
async def test_iteration_stops_with_usage_error_when_closed_midway(
    pg_store: PostgreSQLStore,
) -> None:
    for n in range(3):
        await pg_store.set_volume(_volume(f"vol-{n}"))
    pages = pg_store.iter_volumes(batch_size=1)
    assert (await anext(pages)).id == "vol-0"
    await pg_store.close()
    with pytest.raises(UsageError, match="after close"):
        await anext(pages)


@pytest.mark.asyncio
async def test_close_during_open_wins(pg_dsn: str) -> None:
    holder = await _admin(pg_dsn)
    store = PostgreSQLStore(pg_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            opening = asyncio.create_task(store.open())
            await asyncio.sleep(0.2)
            await store.close()
        with pytest.raises(UsageError, match="interrupted by close"):
            await asyncio.wait_for(opening, 30)
        with pytest.raises(UsageError, match="after close"):
            await store.get_volumes()
        count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'aiocinder'"
        for _ in range(50):  # terminated connections leave the server's list shortly
            if await holder.fetchval(count) == 0:
                break
            await asyncio.sleep(0.05)
        assert await holder.fetchval(count) == 0
    finally:
        await holder.close()


@pytest.mark.asyncio
async def test_concurrent_opens_share_one_pool(pg_dsn: str) -> None:
    store = PostgreSQLStore(pg_dsn)
    await asyncio.gather(store.open(), store.open(), store.open())
    pool = store._pool
    await store.open()
    assert store._pool is pool
    await store.close()


# -- error mapping --------------------------------------------------------------

_MAPPED: list[tuple[BaseException, type[AiocinderError], str]] = [
    (asyncpg.UniqueViolationError("dup"), AlreadyExists, "already exists"),
    (asyncpg.SerializationError("ser"), ConflictError, "conflicted"),
    (asyncpg.DeadlockDetectedError("dl"), ConflictError, "conflicted"),
    (OSError("refused"), PersistenceError, "cannot reach"),
    (ConnectionRefusedError("refused"), PersistenceError, "cannot reach"),
    (TimeoutError(), PersistenceError, "timed out"),
    (asyncpg.PostgresConnectionError("conn"), PersistenceError, "cannot reach"),
    (asyncpg.ConnectionDoesNotExistError("gone"), PersistenceError, "cannot reach"),
    (asyncpg.ConnectionFailureError("fail"), PersistenceError, "cannot reach"),
    (asyncpg.CannotConnectNowError("starting"), PersistenceError, "cannot reach"),
    (asyncpg.AdminShutdownError("terminating"), PersistenceError, "cannot reach"),
    (asyncpg.CrashShutdownError("crash"), PersistenceError, "cannot reach"),
    (asyncpg.TooManyConnectionsError("too many"), PersistenceError, "cannot reach"),
    (asyncpg.InterfaceError("connection is closed"), PersistenceError, "cannot reach"),
    (asyncpg.InterfaceError("pool is closed"), PersistenceError, "cannot reach"),
    (asyncpg.DataError("invalid input"), InvalidArgument, "refused a value"),
    (asyncpg.InvalidTextRepresentationError("bad"), InvalidArgument, "refused a value"),
    (asyncpg.exceptions.ClientConfigurationError("sslmode"), InvalidArgument, "refused"),
    (asyncpg.UndefinedTableError("no table"), PersistenceError, "42P01"),
    (asyncpg.InterfaceError("misuse"), PersistenceError, "client error"),
    (asyncpg.exceptions.ProtocolError("protocol"), PersistenceError, "client error"),
]


@pytest.mark.parametrize(
    ("raised", "expected", "message"), _MAPPED, ids=[type(e).__name__ for e, _, _ in _MAPPED]
)
def test_map_postgres_exceptions(
    raised: BaseException, expected: type[AiocinderError], message: str
) -> None:
    mapping = map_postgres_exceptions("postgresql://h/db", subject="volume 'v'", resource="R")
    with pytest.raises(expected, match=message) as info, mapping:
        raise raised
    assert type(info.value) is expected
    assert info.value.__cause__ is raised
    assert info.value.resource == "R"


def _asyncpg_exception_classes() -> Iterator[type[BaseException]]:
    bases = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.InternalClientError,
    )
    for name in dir(asyncpg.exceptions):
        cls = getattr(asyncpg.exceptions, name)
        if isinstance(cls, type) and issubclass(cls, bases):
            yield cls


def _instance(cls: type[BaseException]) -> BaseException:
    return cls("boom")


def test_no_asyncpg_exception_escapes_the_mapping() -> None:
    classes = list(_asyncpg_exception_classes())
    assert len(classes) > 200  # every SQLSTATE class asyncpg knows, and its client errors
    for cls in classes:
        exc = _instance(cls)
        with pytest.raises(AiocinderError) as info, map_postgres_exceptions():
            raise exc
        assert info.value.__cause__ is exc, cls


def test_every_mapped_class_is_tested() -> None:
    """Each class the mapping names has a row in ``_MAPPED``."""
    from aiocinder.persistence import postgresql

    named = {
        asyncpg.UniqueViolationError,
        asyncpg.SerializationError,
        asyncpg.DeadlockDetectedError,
        asyncpg.InterfaceError,
        asyncpg.PostgresError,
        asyncpg.exceptions.InternalClientError,
        *postgresql._CONNECTION_ERRORS,
        *postgresql._INPUT_ERRORS,
    }
    tested = {type(e) for e, _, _ in _MAPPED}
    for cls in named:
        assert any(issubclass(t, cls) for t in tested), cls


@pytest.mark.parametrize(
    "passing", [asyncio.CancelledError(), KeyboardInterrupt(), VolumeNotFound("v")]
)
def test_the_mapping_lets_these_through(passing: BaseException) -> None:
    with pytest.raises(type(passing)) as info, map_postgres_exceptions():
        raise passing
    assert info.value is passing


@pytest.mark.asyncio
async def test_main_pool_statements_take_one_round_trip(pg_dsn: str) -> None:
    """The main pool skips asyncpg's reset query on release (a second round trip
    per statement); the lock pool keeps it, which is what lets its locks go."""
    async with PostgreSQLStore(pg_dsn, min_size=1, max_size=1) as store:
        sent: list[str] = []
        async with store._pool.acquire() as conn:  # the pool's one connection
            conn.add_query_logger(lambda record: sent.append(record.query))
        await store.set_volume(VolumeRecord(id="v1", backend_name="lvm", size=1))
        for _ in range(3):
            assert [v.id for v in await store.get_volumes()] == ["v1"]
        assert len(sent) == 4, sent
        assert not [q for q in sent if "RESET ALL" in q or "unlock_all" in q]
        # the lock pool keeps its reset: a lock let go is gone from the server
        async with store.lock("volume:v1"):
            assert await _advisory_locks(pg_dsn) == [(lock_id("volume:v1"), True)]
        assert await _advisory_locks(pg_dsn) == []


@pytest.mark.asyncio
async def test_sessions_let_the_server_drop_a_vanished_host_within_a_minute(
    pg_dsn: str,
) -> None:
    """Both pools ask the server for TCP keepalives, so the session advisory
    locks of a host that vanished are freed in about a minute, not hours."""
    if "127.0.0.1" not in pg_dsn and "localhost" not in pg_dsn:
        if os.environ.get("CI"):
            pytest.fail(f"CI's PostgreSQL must be reached over TCP: {pg_dsn}")
        pytest.skip("keepalive settings only read back over TCP")
    async with PostgreSQLStore(pg_dsn, min_size=1, max_size=1) as store:
        lock_pool = await store._locks_pool()
        for pool in (store._pool, lock_pool):
            async with pool.acquire() as conn:
                shown = [await conn.fetchval(f"SHOW tcp_keepalives_{name}")
                         for name in ("idle", "interval", "count")]
            assert shown == ["30", "10", "3"], shown
