"""Importing cinderlib's data: its database and its JSON, checked against the manifest.

The fixtures (``cinderlib.sqlite``, the JSON dumps and ``manifest.json``) were
written by the real cinderlib 5.2.0; ``manifest.json`` says what a correct
import yields. They are looked for in ``tests/fixtures/cinderlib``, then in
``$AIOCINDER_CINDERLIB_FIXTURES``, then in ``../shared/fixtures/cinderlib``
beside the checkout; the tests skip without them (and fail when ``CI`` is set).
The fixture files are only read: each test works on a copy in ``tmp_path``.

Targets are the memory, SQLite and PostgreSQL stores; sources the SQLite
database (as a path and as a URL), the same database loaded into PostgreSQL,
``dump.json`` and ``dump-all-backend-info.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pgserver
import pytest
import pytest_asyncio
from blockbuster import BlockBuster

import aiocinder
from aiocinder.importer import TABLES, ImportCounts, ImportTally, import_cinderlib
from aiocinder.persistence.base import PersistenceStore
from aiocinder.persistence.memory import MemoryStore
from aiocinder.persistence.postgresql import PostgreSQLStore
from aiocinder.persistence.sqlite import SQLiteStore
from aiocinder.records import KeyValue, VolumeRecord

ROOT = Path(__file__).resolve().parent.parent


def _fixtures_dir() -> Path | None:
    candidates = [ROOT / "tests" / "fixtures" / "cinderlib"]
    if os.environ.get("AIOCINDER_CINDERLIB_FIXTURES"):
        candidates.insert(0, Path(os.environ["AIOCINDER_CINDERLIB_FIXTURES"]))
    candidates.append(ROOT.parent / "shared" / "fixtures" / "cinderlib")
    return next((c for c in candidates if (c / "manifest.json").is_file()), None)


FIXTURES = _fixtures_dir()


@pytest.fixture(scope="module")
def fixtures() -> Path:
    if FIXTURES is None:
        if os.environ.get("CI"):
            pytest.fail("the cinderlib fixtures are required when CI is set", pytrace=False)
        pytest.skip("no cinderlib fixtures (tests/fixtures/cinderlib)")
    return FIXTURES


@pytest.fixture(scope="module")
def manifest(fixtures: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((fixtures / "manifest.json").read_text())
    return data


@pytest.fixture
def db_copy(fixtures: Path, tmp_path: Path) -> Path:
    """A private copy of cinderlib's database (the shared one is read-only)."""
    copy = tmp_path / "source" / "cinderlib.sqlite"
    copy.parent.mkdir()
    shutil.copyfile(fixtures / "cinderlib.sqlite", copy)
    copy.chmod(0o600)
    return copy


def _manifest_volumes(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for backend in manifest["backends"]:
        for volume in backend["volumes"]:
            yield backend["name"], volume


def _secrets(manifest: dict[str, Any]) -> set[str]:
    """Every password the data holds: none may ever appear in a message."""
    found = set()
    for _, volume in _manifest_volumes(manifest):
        if volume["provider_auth"]:
            found.add(volume["provider_auth"].split()[-1])
        for conn in volume["connections"]:
            found.add(conn["conn_info"]["data"]["auth_password"])
    for backend in manifest["backends"]:
        if "chap_password" in backend["driver_config"]:
            found.add(backend["driver_config"]["chap_password"])
    assert found
    return found


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- stores ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> pgserver.PostgresServer:
    return pgserver.require_server()


@pytest.fixture
def pg_databases(
    pg_server: pgserver.PostgresServer, blockbuster: BlockBuster
) -> Callable[[], AbstractAsyncContextManager[str]]:
    """Makes new PostgreSQL databases (skips without a server; fails under CI)."""
    pgserver.allow_asyncpg_connect(blockbuster)
    return pg_server.database


@asynccontextmanager
async def _memory_target(request: pytest.FixtureRequest, tmp_path: Path
                         ) -> AsyncIterator[PersistenceStore]:
    async with MemoryStore() as store:
        yield store


@asynccontextmanager
async def _sqlite_target(request: pytest.FixtureRequest, tmp_path: Path
                         ) -> AsyncIterator[PersistenceStore]:
    async with SQLiteStore(f"sqlite:///{tmp_path / 'target.sqlite'}") as store:
        yield store


@asynccontextmanager
async def _postgresql_target(request: pytest.FixtureRequest, tmp_path: Path
                             ) -> AsyncIterator[PersistenceStore]:
    databases = request.getfixturevalue("pg_databases")
    async with databases() as dsn, PostgreSQLStore(dsn, max_size=4) as store:
        yield store


TARGETS = {"memory": _memory_target, "sqlite": _sqlite_target,
           "postgresql": _postgresql_target}


@pytest_asyncio.fixture(params=list(TARGETS))
async def target(request: pytest.FixtureRequest, tmp_path: Path
                 ) -> AsyncIterator[PersistenceStore]:
    """An empty, opened aiocinder store of each kind."""
    async with TARGETS[request.param](request, tmp_path) as store:
        yield store


# -- cinderlib's database in PostgreSQL ---------------------------------------------

_PG_TYPES = {"TEXT": "text", "INTEGER": "integer", "BOOLEAN": "boolean",
             "DATETIME": "timestamp without time zone"}


async def load_into_postgresql(db: Path, dsn: str) -> None:
    """Copy the tables the import reads from cinderlib's SQLite file into
    PostgreSQL, with the column types Cinder's schema has there (booleans,
    timestamps), as a cinderlib ``db`` persistence on PostgreSQL holds them."""
    with sqlite3.connect(db) as lite:
        lite.row_factory = sqlite3.Row
        present = {n for (n,) in lite.execute("SELECT name FROM sqlite_master")}
        tables = {}
        for table in TABLES:
            if table not in present:
                continue
            columns = [(c["name"], c["type"].upper(), c["pk"])
                       for c in lite.execute(f'PRAGMA table_info("{table}")')]
            rows = [tuple(r) for r in lite.execute(f'SELECT * FROM "{table}"')]
            tables[table] = (columns, rows)
    conn = await asyncpg.connect(dsn)
    try:
        for table, (columns, rows) in tables.items():
            defs = ", ".join(
                f'"{name}" {_PG_TYPES.get(kind, kind.lower())}{" PRIMARY KEY" if pk else ""}'
                for name, kind, pk in columns)
            await conn.execute(f'CREATE TABLE "{table}" ({defs})')

            def convert(value: Any, kind: str) -> Any:
                if value is None:
                    return None
                if kind == "BOOLEAN":
                    return bool(value)
                if kind == "DATETIME":
                    return datetime.fromisoformat(value)
                return value

            converted = [tuple(convert(v, kind) for v, (_, kind, _) in zip(row, columns,
                                                                              strict=True))
                         for row in rows]
            names = ", ".join(f'"{name}"' for name, _, _ in columns)
            marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
            await conn.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})',
                                   converted)
    finally:
        await conn.close()


@asynccontextmanager
async def _source(kind: str, request: pytest.FixtureRequest, db: Path, fixtures: Path
                  ) -> AsyncIterator[Any]:
    if kind == "sqlite-path":
        yield str(db)
    elif kind == "sqlite-pathlike":
        yield db
    elif kind == "sqlite-url":
        yield f"sqlite:///{db}"
    elif kind == "postgresql":
        databases = request.getfixturevalue("pg_databases")
        async with databases() as dsn:
            await load_into_postgresql(db, dsn)
            # as cinderlib's SQLAlchemy configuration would name it
            yield dsn.replace("postgresql://", "postgresql+psycopg2://", 1)
    else:
        copy = db.parent / kind
        shutil.copyfile(fixtures / kind, copy)
        yield copy


DB_SOURCES = ["sqlite-path", "sqlite-pathlike", "sqlite-url", "postgresql"]
JSON_SOURCES = ["dump.json", "dump-all-backend-info.json"]


# -- the manifest, field by field ------------------------------------------------------


async def assert_store_matches_manifest(store: PersistenceStore, manifest: dict[str, Any],
                                        *, key_values: bool = True) -> None:
    counts = manifest["counts"]
    volumes = {v.id: v for v in await store.get_volumes()}
    assert len(volumes) == counts["volumes"]
    assert {v.backend_name for v in volumes.values()} == {b["name"] for b in
                                                          manifest["backends"]}
    assert len(manifest["backends"]) == counts["backends"]
    snapshots = {s.id: s for s in await store.get_snapshots()}
    connections = {c.id: c for c in await store.get_connections()}
    assert len(snapshots) == counts["snapshots"]
    assert len(connections) == counts["connections"]

    for backend_name, expected in _manifest_volumes(manifest):
        vol = volumes[expected["id"]]
        assert vol.backend_name == backend_name
        for name in ("name", "description", "size", "status", "host", "bootable",
                     "volume_type_name", "extra_specs", "metadata", "admin_metadata",
                     "provider_location", "provider_id", "provider_auth", "source_volid",
                     "snapshot_id", "user_id", "project_id"):
            value = getattr(vol, name)
            assert (dict(value) if name.endswith(("specs", "metadata")) else value
                    ) == expected[name], (expected["name"], name)
        assert dict(vol.qos_specs) == (expected["qos_specs"] or {})
        assert vol.host is not None and vol.host.rpartition("#")[2] == expected["pool"]
        assert vol.created_at == _when(expected["created_at"])
        assert not vol.multiattach

        assert {s.id for s in await store.get_snapshots(volume_id=vol.id)} == {
            s["id"] for s in expected["snapshots"]}
        for exp in expected["snapshots"]:
            snap = snapshots[exp["id"]]
            for name in ("name", "description", "status", "volume_id", "volume_size",
                         "provider_id", "provider_location"):
                assert getattr(snap, name) == exp[name], (exp["name"], name)
            assert snap.backend_name == exp["backend"]
            assert snap.created_at == _when(exp["created_at"])
            assert dict(snap.metadata) == {}

        assert {c.id for c in await store.get_connections(volume_id=vol.id)} == {
            c["id"] for c in expected["connections"]}
        for exp in expected["connections"]:
            conn = connections[exp["id"]]
            assert conn.volume_id == exp["volume_id"]
            assert conn.backend_name == backend_name
            assert dict(conn.connector_info) == exp["connector_info"] == exp["connector_field"]
            assert dict(conn.conn_info) == exp["conn_info"]
            assert conn.device == exp["device"]
            assert conn.path == (exp["device"] or {}).get("path")
            assert conn.protocol == exp["conn_info"]["driver_volume_type"]
            assert conn.attach_mode == exp["attach_mode"]
            assert conn.instance_uuid == exp["instance_uuid"]
            assert conn.created_at == _when(exp["created_at"])
            # cinderlib never persisted a status; a stored connection is attached.
            assert not exp["has_status_attr"]
            assert conn.status == "attached"
            assert (conn.project_id, conn.user_id) == (vol.project_id, vol.user_id)

    for kind, getter in (("volumes", volumes), ("snapshots", snapshots),
                         ("connections", connections)):
        for gone in manifest["deleted"][kind]:
            assert gone["id"] not in getter, f"deleted {kind} {gone['id']} came back"
    errors = {e["id"] for e in manifest["driver_errors"]}
    assert all(volumes[vid].status == "error" for vid in errors)
    if key_values:
        stored = {(kv.key, kv.value) for kv in await store.get_key_values()}
        assert stored == {(kv["key"], kv["value"]) for kv in manifest["key_values"]}
        assert len(stored) == counts["key_values"]


def assert_counts(counts: ImportCounts, manifest: dict[str, Any], *, first: bool,
                  key_values: int) -> None:
    expected = manifest["counts"]
    assert counts.backends == tuple(sorted(b["name"] for b in manifest["backends"]))
    for kind, tally in (("volumes", counts.volumes), ("snapshots", counts.snapshots),
                        ("connections", counts.connections)):
        assert tally == (ImportTally(created=expected[kind]) if first else
                         ImportTally(already_present=expected[kind])), kind
    assert counts.key_values == (ImportTally(created=key_values) if first else
                                 ImportTally(already_present=key_values))
    assert counts.orphaned == 0
    assert counts.created == (sum(expected[k] for k in ("volumes", "snapshots",
                                                        "connections")) + key_values
                              if first else 0)


async def store_contents(store: PersistenceStore) -> tuple[list[Any], ...]:
    """Everything a store holds, for before/after comparisons."""
    return (await store.get_volumes(), await store.get_snapshots(),
            await store.get_connections(), await store.get_key_values())


def _soft_deleted(manifest: dict[str, Any]) -> int:
    return sum(1 for kind in ("volumes", "snapshots", "connections")
               for gone in manifest["deleted"][kind] if gone["deletion"] == "soft")


@pytest.mark.asyncio
@pytest.mark.parametrize("source_kind", DB_SOURCES + JSON_SOURCES)
async def test_import_matches_the_manifest_and_twice_creates_nothing(
    source_kind: str, target: PersistenceStore, request: pytest.FixtureRequest,
    db_copy: Path, fixtures: Path, manifest: dict[str, Any],
) -> None:
    from_db = source_kind in DB_SOURCES
    key_values = len(manifest["key_values"]) if from_db else 0
    async with _source(source_kind, request, db_copy, fixtures) as source:
        first = await import_cinderlib(source, store=target)
        assert_counts(first, manifest, first=True, key_values=key_values)
        # The database tells soft-deleted rows apart; dump.json never had them.
        assert first.deleted == (_soft_deleted(manifest) if from_db else 0)
        await assert_store_matches_manifest(target, manifest, key_values=from_db)
        stored = await store_contents(target)

        second = await import_cinderlib(source, store=target)
        assert_counts(second, manifest, first=False, key_values=key_values)
        assert await store_contents(target) == stored, "the second import changed records"
    assert db_copy.read_bytes() == (fixtures / "cinderlib.sqlite").read_bytes(), \
        "the source database was modified"


def _without_versions(records: list[Any]) -> list[Any]:
    return sorted((r.replace(version=0) for r in records), key=lambda r: r.id)


@pytest.mark.asyncio
async def test_database_and_dump_give_the_same_records(db_copy: Path, fixtures: Path) -> None:
    """Every field, updated_at included, whether read from the database or the dump."""
    async with MemoryStore() as from_db, MemoryStore() as from_dump, \
            MemoryStore() as from_full_dump:
        await import_cinderlib(db_copy, store=from_db)
        await import_cinderlib(fixtures / "dump.json", store=from_dump)
        await import_cinderlib(fixtures / "dump-all-backend-info.json", store=from_full_dump)
        for getter in ("get_volumes", "get_snapshots", "get_connections"):
            records = [_without_versions(await getattr(s, getter)())
                       for s in (from_db, from_dump, from_full_dump)]
            assert records[0] == records[1] == records[2], getter
        assert any(v.updated_at is not None for v in await from_db.get_volumes())


@pytest.mark.asyncio
@pytest.mark.parametrize("form", ["text", "parsed", "bytes", "file"])
@pytest.mark.parametrize("value", ["jsons", "to_jsons_simplified", "dumps"])
@pytest.mark.parametrize("name", ["volume-analytics-warehouse.json",
                                  "volume-pg-billing-data.json"])
async def test_per_volume_json(name: str, value: str, form: str, fixtures: Path,
                               manifest: dict[str, Any], tmp_path: Path) -> None:
    """``vol.jsons``, ``vol.to_jsons()`` and ``vol.dumps``, in every form a user holds them."""
    held = json.loads((fixtures / name).read_text())
    text: str = held[value]
    data = json.loads(text)
    source: Any = {"text": text, "parsed": data, "bytes": text.encode()}.get(form)
    if form == "file":
        source = tmp_path / "vol.json"
        source.write_text(text)
    backend_name, expected = next((b, v) for b, v in _manifest_volumes(manifest)
                                  if v["id"] == held["volume_id"])
    ovo = data["ovo"]["versioned_object.data"]
    # What the file holds at its moment: snapshots and connections when loaded.
    expected_snapshots = ({s["id"] for s in expected["snapshots"]} if "snapshots" in ovo
                          else set())
    expected_connections = ({c["id"] for c in expected["connections"]}
                            if "volume_attachment" in ovo else set())
    async with MemoryStore() as store:
        counts = await import_cinderlib(source, store=store)
        assert counts.volumes == ImportTally(created=1)
        assert counts.snapshots == ImportTally(created=len(expected_snapshots))
        assert counts.connections == ImportTally(created=len(expected_connections))
        assert counts.backends == (backend_name,)
        [vol] = await store.get_volumes()
        assert vol.id == expected["id"] and vol.backend_name == backend_name
        for field in ("name", "description", "size", "host", "metadata", "provider_auth",
                      "provider_location", "provider_id", "extra_specs"):
            value_ = getattr(vol, field)
            assert (dict(value_) if field.endswith(("specs", "metadata")) else value_
                    ) == expected[field], field
        assert vol.created_at == _when(expected["created_at"])
        # A file written from memory before any reload still has the QoS specs
        # cinderlib's database lost; one written after a reload does not.
        lost = {e["field"]: e for e in manifest["lost_by_cinderlib"]["volumes"]
                if e["id"] == vol.id}
        if "from the in-memory objects" in held["note"]:
            assert dict(vol.qos_specs) == lost["qos_specs"]["at_creation"]
        else:
            assert dict(vol.qos_specs) == (expected["qos_specs"] or {})
        assert {s.id for s in await store.get_snapshots()} == expected_snapshots
        connections = await store.get_connections()
        assert {c.id for c in connections} == expected_connections
        for conn in connections:
            exp = next(c for c in expected["connections"] if c["id"] == conn.id)
            assert dict(conn.conn_info) == exp["conn_info"]
            assert conn.device == exp["device"]
            assert conn.status == "attached"
        again = await import_cinderlib(source, store=store)
        assert again.created == 0 and again.already_present == counts.created


@pytest.mark.asyncio
async def test_standalone_snapshot_and_connection_entries(fixtures: Path,
                                                          manifest: dict[str, Any]) -> None:
    """``snap.json`` / ``conn.json`` alone: their volume must be in the data or the store."""
    dump = json.loads((fixtures / "dump.json").read_text())
    volume_entry = next(v for b in dump for v in b["volumes"]
                        if v["ovo"]["versioned_object.data"]["snapshots"]["versioned_object.data"]
                        ["objects"] and v["ovo"]["versioned_object.data"]["volume_attachment"]
                        ["versioned_object.data"]["objects"])
    data = volume_entry["ovo"]["versioned_object.data"]
    snapshot = {"class": "Snapshot", "backend": volume_entry["backend"],
                "ovo": data["snapshots"]["versioned_object.data"]["objects"][0]}
    connection = {"class": "Connection", "backend": volume_entry["backend"],
                  "ovo": data["volume_attachment"]["versioned_object.data"]["objects"][0]}
    async with MemoryStore() as store:
        for alone in (snapshot, connection):
            with pytest.raises(aiocinder.InvalidArgument, match="neither in the data nor"):
                await import_cinderlib(alone, store=store)
        assert await store_contents(store) == ([], [], [], [])
        # Listed before their volume in the same data: fine.
        counts = await import_cinderlib([snapshot, connection, volume_entry], store=store)
        assert (counts.volumes.created, counts.snapshots.total,
                counts.connections.total) == (1, len(data["snapshots"]["versioned_object."
                                                                       "data"]["objects"]),
                                              len(data["volume_attachment"]["versioned_"
                                                                           "object.data"]
                                                  ["objects"]))
        [conn] = [c for c in await store.get_connections()
                  if c.id == connection["ovo"]["versioned_object.data"]["id"]]
        [vol] = await store.get_volumes()
        assert (conn.project_id, conn.backend_name) == (vol.project_id, vol.backend_name)
    async with MemoryStore() as store:
        # Their volume already in the store: fine too.
        await import_cinderlib(volume_entry | {"ovo": {**volume_entry["ovo"],
                               "versioned_object.data": {k: v for k, v in data.items()
                                                         if k not in ("snapshots",
                                                                      "volume_attachment")}}},
                               store=store)
        counts = await import_cinderlib([snapshot, connection], store=store)
        assert (counts.snapshots.created, counts.connections.created) == (1, 1)
        wrong = {**snapshot, "backend": {"volume_backend_name": "elsewhere"}}
        with pytest.raises(aiocinder.InvalidArgument, match="is not its volume's"):
            await import_cinderlib(wrong, store=store)


# -- the tracking loop on imported data ---------------------------------------------------


@pytest.mark.asyncio
async def test_imported_volumes_work_with_the_tracking_loop(
    db_copy: Path, manifest: dict[str, Any]
) -> None:
    """Into the active store; the backends' driver (``__main__.NoopDriver``)
    is nowhere to be imported, and nothing tries to."""
    with pytest.raises(aiocinder.UsageError):
        await import_cinderlib(db_copy)
    store = await aiocinder.setup(fail_on_missing_backend=False)
    try:
        counts = await import_cinderlib(db_copy)
        assert counts.volumes.created == manifest["counts"]["volumes"]
        assert aiocinder.Backend.backends == {}, "no backend was initialised"
        assert store is aiocinder.Backend.persistence
        for _, expected in _manifest_volumes(manifest):
            vol = await aiocinder.Volume.get_by_id(expected["id"])
            await vol.refresh()
            assert vol.volume_type.extra_specs == expected["extra_specs"]
            snaps = await vol.snapshots()
            assert {s.id for s in snaps} == {s["id"] for s in expected["snapshots"]}
            for snap in snaps:
                assert await snap.volume() is vol
                assert snap.status == "available"
            conns = await vol.connections()
            assert {c.id for c in conns} == {c["id"] for c in expected["connections"]}
            for conn in conns:
                exp = next(c for c in expected["connections"] if c["id"] == conn.id)
                assert conn.connector_info["host"] == exp["connector_info"]["host"]
                assert conn.connector_info["ip"] == exp["connector_info"]["ip"]
                assert await conn.volume() is vol
                assert conn.status == "attached" and conn.connected
                assert conn.path == (exp["device"] or {}).get("path")
            assert [v.id for v in await aiocinder.Volume.get_by_name(expected["name"])] == [
                expected["id"]]
        kv = await store.get_key_values(manifest["key_values"][0]["key"])
        assert kv == [KeyValue(manifest["key_values"][0]["key"],
                               manifest["key_values"][0]["value"])]
        # The backend is not initialised here: operations say so, clearly.
        vol = await aiocinder.Volume.get_by_id(manifest["backends"][0]["volumes"][0]["id"])
        with pytest.raises(aiocinder.BackendNotInitialised):
            await vol.extend(vol.size + 1)
    finally:
        await aiocinder.shutdown()


# -- replacing, orphans, deleted rows -------------------------------------------------------


@pytest.mark.asyncio
async def test_present_records_are_kept_unless_replace(db_copy: Path,
                                                       manifest: dict[str, Any]) -> None:
    async with MemoryStore() as store:
        await import_cinderlib(db_copy, store=store)
        [vol] = await store.get_volumes(volume_id=manifest["backends"][0]["volumes"][0]["id"])
        await store.set_volume(vol.replace(name="renamed in aiocinder"))
        await store.set_key_value(KeyValue(manifest["key_values"][0]["key"], "changed"))

        kept = await import_cinderlib(db_copy, store=store)
        assert kept.volumes == ImportTally(already_present=manifest["counts"]["volumes"])
        assert (await store.get_volumes(volume_id=vol.id))[0].name == "renamed in aiocinder"
        assert (await store.get_key_values(manifest["key_values"][0]["key"]))[0].value == \
            "changed"

        replaced = await import_cinderlib(db_copy, store=store, replace=True)
        assert replaced.volumes == ImportTally(replaced=manifest["counts"]["volumes"])
        assert replaced.key_values == ImportTally(replaced=len(manifest["key_values"]))
        assert replaced.created == replaced.already_present == 0
        assert (await store.get_volumes(volume_id=vol.id))[0].name == vol.name
        await assert_store_matches_manifest(store, manifest)


def _db(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    with sqlite3.connect(path) as db:
        for sql, params in statements:
            db.execute(sql, params)
    db.close()


@pytest.mark.asyncio
async def test_orphans_and_broken_deleted_rows_are_left_out(db_copy: Path,
                                                            manifest: dict[str, Any]) -> None:
    """A live snapshot or connection whose volume row is gone is not imported
    (cinderlib could not reach it either); broken rows that are deleted do not
    stop an import."""
    victim = next(v for _, v in _manifest_volumes(manifest)
                  if v["snapshots"] and v["connections"])
    soft = next(v for v in manifest["deleted"]["volumes"] if v["deletion"] == "soft")
    _db(db_copy,
        ("DELETE FROM volumes WHERE id = ?", (victim["id"],)),
        ("UPDATE volumes SET size = 'garbage', created_at = 'never' WHERE id = ?",
         (soft["id"],)),
        ("UPDATE volume_attachment SET connection_info = '{broken' WHERE deleted = 1", ()))
    async with MemoryStore() as store:
        counts = await import_cinderlib(db_copy, store=store)
    assert counts.orphaned == len(victim["snapshots"]) + len(victim["connections"])
    assert counts.volumes.created == manifest["counts"]["volumes"] - 1
    assert counts.deleted == _soft_deleted(manifest)


# -- malformed input -------------------------------------------------------------------------


def _first_connection(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(c for _, v in _manifest_volumes(manifest) for c in v["connections"])


def _breakages(manifest: dict[str, Any]) -> dict[str, tuple[tuple[str, tuple[Any, ...]], ...]]:
    conn = _first_connection(manifest)
    password = conn["conn_info"]["data"]["auth_password"]
    vol = next(v for _, v in _manifest_volumes(manifest) if v["metadata"])
    snap = next(s for _, v in _manifest_volumes(manifest) for s in v["snapshots"])
    return {
        "broken connection_info JSON": (
            ("UPDATE volume_attachment SET connection_info = ? WHERE id = ?",
             ('{"conn": {"data": {"auth_password": "' + password + '", ', conn["id"])),),
        "connection_info not an object": (
            ("UPDATE volume_attachment SET connection_info = '[1, 2]' WHERE id = ?",
             (conn["id"],)),),
        "size is text": (("UPDATE volumes SET size = 'huge' WHERE id = ?", (vol["id"],)),),
        "size is zero": (("UPDATE volumes SET size = 0 WHERE id = ?", (vol["id"],)),),
        "garbage row": (
            ("INSERT INTO volumes (id, deleted, host, size, status, created_at, "
             "volume_type_id) VALUES ('garbage', 0, 'x@y#z', 1, 'available', "
             "'yesterday', 'none')", ()),),
        "unknown status": (("UPDATE volumes SET status = 'exploded' WHERE id = ?",
                            (vol["id"],)),),
        "no backend in host": (("UPDATE volumes SET host = NULL WHERE id = ?", (vol["id"],)),),
        "deleted is not a boolean": (("UPDATE snapshots SET deleted = 7 WHERE id = ?",
                                      (snap["id"],)),),
        "metadata value NULL": (("UPDATE volume_metadata SET value = NULL WHERE volume_id = ?",
                                 (vol["id"],)),),
        "unknown attach_status": (
            ("UPDATE volume_attachment SET attach_status = 'sideways' WHERE id = ?",
             (conn["id"],)),),
        "attach_mode unknown": (("UPDATE volume_attachment SET attach_mode = 'rx' WHERE id = ?",
                                 (conn["id"],)),),
        "not a cinderlib database": (("DROP TABLE volume_attachment", ()),),
        "an id that is a path": (("UPDATE volumes SET id = '../../etc' WHERE id = ?",
                                  (vol["id"],)),),
        "a backend name with a slash": (
            ("UPDATE volumes SET host = 'node@a/b#pool' WHERE id = ?", (vol["id"],)),),
    }


BREAKAGES = ["broken connection_info JSON", "connection_info not an object", "size is text",
             "size is zero", "garbage row", "unknown status", "no backend in host",
             "deleted is not a boolean", "metadata value NULL", "unknown attach_status",
             "attach_mode unknown", "not a cinderlib database", "an id that is a path",
             "a backend name with a slash"]


@pytest.mark.asyncio
@pytest.mark.parametrize("breakage", BREAKAGES)
async def test_malformed_database_raises_and_writes_nothing(
    breakage: str, target: PersistenceStore, db_copy: Path, fixtures: Path,
    manifest: dict[str, Any],
) -> None:
    # Something is in the target already; it must be all that is there after.
    seed = VolumeRecord(id="already-here", backend_name="other", size=1, status="available")
    await target.set_volume(seed)
    before = await store_contents(target)
    breakages = _breakages(manifest)
    assert sorted(breakages) == sorted(BREAKAGES)
    _db(db_copy, *breakages[breakage])
    with pytest.raises(aiocinder.InvalidArgument) as caught:
        await import_cinderlib(db_copy, store=target)
    assert await store_contents(target) == before
    assert str(db_copy) in str(caught.value)
    assert_no_secrets(caught.value, manifest)


def assert_no_secrets(error: BaseException, manifest: dict[str, Any]) -> None:
    """Neither the error nor anything chained to it shows a password."""
    seen: BaseException | None = error
    while seen is not None:
        shown = f"{seen!r} {seen} {getattr(seen, 'doc', '')}"
        assert not [s for s in _secrets(manifest) if s in shown], shown
        seen = seen.__cause__ or seen.__context__


JSON_BREAKAGES: dict[str, Callable[[Any], Any]] = {
    "not JSON": lambda d: json.dumps(d)[:-40],
    "unknown class": lambda d: [{**d[0], "class": "Pool"}],
    "wrong object": lambda d: [{**d[0], "volumes": [{"class": "Volume", "ovo": {
        "versioned_object.name": "Snapshot", "versioned_object.data": {}}}]}],
    "a size that is text": lambda d: _edit_first_volume(d, size="20"),
    "metadata not strings": lambda d: _edit_first_volume(d, metadata={"n": 1}),
    "no created_at": lambda d: _edit_first_volume(d, created_at=None),
    "not a list or object": lambda d: 42,
    "the same id twice, different": lambda d: [d[0], _edit_first_volume(d, size=99)[0]],
}


def _edit_first_volume(dump: list[Any], **changes: Any) -> list[Any]:
    copy = json.loads(json.dumps(dump))
    copy[0]["volumes"][0]["ovo"]["versioned_object.data"].update(changes)
    return list(copy)


@pytest.mark.asyncio
@pytest.mark.parametrize("breakage", list(JSON_BREAKAGES))
async def test_malformed_json_raises_and_writes_nothing(breakage: str, fixtures: Path,
                                                        manifest: dict[str, Any]) -> None:
    dump = json.loads((fixtures / "dump-all-backend-info.json").read_text())
    broken = JSON_BREAKAGES[breakage](dump)
    async with MemoryStore() as store:
        with pytest.raises(aiocinder.InvalidArgument) as caught:
            await import_cinderlib(broken, store=store)
        assert await store_contents(store) == ([], [], [], [])
    assert_no_secrets(caught.value, manifest)


@pytest.mark.asyncio
@pytest.mark.parametrize(("source", "match"), [
    ("", "empty"),
    ("mysql+pymysql://u:pw@db/cinder", "cannot read a 'mysql\\+pymysql' database"),
    ("sqlite://", "names no file"),
    ("sqlite:///:memory:", "names no file"),
    (12, "not int"),
])
async def test_unusable_sources(source: Any, match: str) -> None:
    async with MemoryStore() as store:
        with pytest.raises(aiocinder.InvalidArgument, match=match):
            await import_cinderlib(source, store=store)


@pytest.mark.asyncio
async def test_unreadable_files(tmp_path: Path) -> None:
    async with MemoryStore() as store:
        with pytest.raises(aiocinder.InvalidArgument, match="no such file"):
            await import_cinderlib(tmp_path / "missing.sqlite", store=store)
        with pytest.raises(aiocinder.InvalidArgument, match="is a directory"):
            await import_cinderlib(tmp_path, store=store)
        fake = tmp_path / "fake.sqlite"
        fake.write_bytes(b"SQLite format 3\x00" + b"\x07" * 4000)
        with pytest.raises(aiocinder.InvalidArgument, match="not a readable SQLite database"):
            await import_cinderlib(fake, store=store)
        empty = tmp_path / "empty.sqlite"
        sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
        with pytest.raises(aiocinder.InvalidArgument, match="not a cinderlib database"):
            await import_cinderlib(empty, store=store)


@pytest.mark.asyncio
async def test_an_unreachable_postgresql_source_never_shows_its_password(
    blockbuster: BlockBuster,
) -> None:
    import socket

    pgserver.allow_asyncpg_connect(blockbuster)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with MemoryStore() as store:
        with pytest.raises(aiocinder.PersistenceError) as caught:
            await import_cinderlib(
                f"postgresql+psycopg2://cinder:hunter2-secret@127.0.0.1:{port}/cinder",
                store=store)
    assert "hunter2-secret" not in str(caught.value)
    assert f"postgresql://cinder@127.0.0.1:{port}/cinder" in str(caught.value)


# -- the command --------------------------------------------------------------------------------


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-m", "aiocinder.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_import_command(db_copy: Path, fixtures: Path, manifest: dict[str, Any],
                        tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'aiocinder.sqlite'}"
    counts = manifest["counts"]
    first = run("import-cinderlib", str(db_copy), "--to", target, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    for label, kind in (("volumes", "volumes"), ("snapshots", "snapshots"),
                        ("connections", "connections"), ("key values", "key_values")):
        line = next(ln for ln in first.stdout.splitlines() if ln.startswith(label))
        assert line.split()[-5:] == [str(counts[kind]), "created,", "0", "already",
                                     "present"], line
    assert f"left out     {_soft_deleted(manifest)} deleted, 0 orphaned" in first.stdout
    for backend in manifest["backends"]:
        assert backend["name"] in first.stdout

    # The dump with every backend's config, passwords included, into the same store.
    again = run("import-cinderlib", str(fixtures / "dump-all-backend-info.json"),
                "--to", target, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"volumes           0 created, {counts['volumes']:>6} already present" in \
        again.stdout

    listed = run("list", "--connection", target, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip().endswith(
        f"{counts['volumes']} volumes, {counts['snapshots']} snapshots, "
        f"{counts['connections']} connections")

    _db(db_copy, ("UPDATE volume_attachment SET connection_info = '{\"conn\": 1' "
                  "WHERE id = ?", (_first_connection(manifest)["id"],)))
    bad = run("import-cinderlib", str(db_copy), "--to", target, "--replace", cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.startswith("aiocinder: InvalidArgument:"), bad.stderr
    assert "not valid JSON" in bad.stderr
    for output in (first, again, listed, bad):
        shown = output.stdout + output.stderr
        assert not [s for s in _secrets(manifest) if s in shown]
