"""json / dump / load: exact round trips, and hostile input refused whole."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import ScriptedFileDriver, persistence, sql_store_url

import aiocinder
from aiocinder.persistence import PersistenceStore

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """Every test here runs on both SQL stores."""
    with sql_store_url(request.param, tmp_path) as url:
        yield url


async def populated(backend: aiocinder.Backend) -> aiocinder.Volume:
    vol = await backend.create_volume(
        1, name="data ünïcode \"q\"", description="line one\nline two",
        extra_specs={"provisioning:type": "thin"}, qos_specs={"maxIOPS": "1000"},
        metadata={"team": "db", "empty": ""},
    )
    await vol.create_snapshot(name="s1", metadata={"why": "backup"})
    await vol.create_snapshot(name="s2")
    conn = await vol.connect({"host": "node", "ip": "10.0.0.9", "multipath": False,
                              "initiator": "iqn.1993-08.org.debian:01:abc"})
    assert conn.status == "attached"
    return vol


async def test_volume_round_trip_is_exact(backend: aiocinder.Backend) -> None:
    vol = await populated(backend)
    dumped = await vol.dump()
    assert [s["name"] for s in dumped["snapshots"]] == ["s1", "s2"]
    assert dumped["connections"][0]["connector_info"]["host"] == "node"
    assert json.loads(await vol.dumps()) == dumped
    assert vol.json == dumped == vol.to_dict()

    loaded = await aiocinder.load(await vol.dumps())
    assert isinstance(loaded, aiocinder.Volume)
    assert loaded.record == vol.record
    assert loaded.created_at == vol.created_at and loaded.created_at.microsecond
    snaps = await loaded.snapshots()
    assert [s.record for s in snaps] == [s.record for s in await vol.snapshots()]
    assert [await s.volume() for s in snaps] == [loaded, loaded]
    assert all([await s.volume() is loaded for s in snaps])
    (conn,) = await loaded.connections()
    assert conn.record == (await vol.connections())[0].record
    assert conn.conn_info["data"]["device_path"].endswith(vol.id)
    assert loaded.jsons == vol.jsons


async def test_module_dump_and_backend_name_only(backend: aiocinder.Backend) -> None:
    vol = await populated(backend)
    everything = await aiocinder.dump()
    assert [b["volume_backend_name"] for b in everything] == ["files"]
    assert "config" not in everything[0]
    assert [v["id"] for v in everything[0]["volumes"]] == [vol.id]
    assert json.loads(await aiocinder.dumps()) == everything
    (result,) = await aiocinder.load(everything)
    assert result is backend


async def test_all_backend_info_never_shows_secrets(db_url: str, tmp_path: Any) -> None:
    await aiocinder.setup(persistence(db_url),
                          output_all_backend_info=True)
    try:
        backend = await aiocinder.Backend(
            "secretive", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v"),
            fail={"nothing"}, delay=0.0,
        )
        backend._config["chap_password"] = "s3cr3t"  # as a Cinder driver's option would be
        text = await backend.dumps()
        assert "s3cr3t" not in text
        config = json.loads(text)["config"]
        assert config["chap_password"] == "***"
        assert config["volumes_dir"] == str(tmp_path / "v")
        assert config["volume_driver"] == "support.ScriptedFileDriver"
    finally:
        await aiocinder.shutdown()


async def test_load_with_save_writes_records(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await populated(backend)
    data = await vol.dump()
    snap_ids = [s["id"] for s in data["snapshots"]]
    # forget it in the store, then bring it back from the dump
    for sid in snap_ids:
        await lib.delete_snapshot(sid)
    await lib.delete_connection(data["connections"][0]["id"])
    await lib.delete_volume(vol.id)
    assert await lib.get_volumes() == []
    loaded = await aiocinder.load(data, save=True)
    (stored,) = await lib.get_volumes()
    assert stored.replace(version=0) == vol.record.replace(version=0)
    assert [s.id for s in await lib.get_snapshots(volume_id=vol.id)] == snap_ids
    assert len(await lib.get_connections(volume_id=vol.id)) == 1
    await loaded.extend(2)  # the loaded object carries the stored version
    assert (await lib.get_volumes())[0].size == 2


BAD_INPUTS: list[tuple[str, Any, str]] = [
    ("not json", "{not json", "not valid JSON"),
    ("unknown class", {"class": "Pool"}, "unknown class"),
    ("not an object", 42, "expected an object"),
    ("unknown field", {"class": "Volume", "id": "v", "backend_name": "files", "size": 1,
                       "evil": True}, "unknown"),
    ("size as text", {"class": "Volume", "id": "v", "backend_name": "files", "size": "1"},
     "size must be int"),
    ("NUL in a name", {"class": "Volume", "id": "v", "backend_name": "files", "size": 1,
                       "name": "a\x00"}, "NUL"),
    ("bad date", {"class": "Volume", "id": "v", "backend_name": "files", "size": 1,
                  "created_at": "yesterday"}, "ISO 8601"),
    ("snapshot under another volume", {
        "class": "Volume", "id": "v", "backend_name": "files", "size": 1,
        "snapshots": [{"class": "Snapshot", "id": "s", "volume_id": "other",
                       "backend_name": "files", "volume_size": 1}]}, "listed under"),
    ("duplicate ids", [{"class": "Volume", "id": "v", "backend_name": "files", "size": 1}] * 2,
     "same volume id"),
    ("deep nesting", "[" * 100000 + "]" * 100000, ""),
]


@pytest.mark.parametrize(("data", "match"),
                         [pytest.param(d, m, id=i) for i, d, m in BAD_INPUTS])
async def test_hostile_input_is_refused_and_saves_nothing(
    backend: aiocinder.Backend, lib: PersistenceStore, data: Any, match: str
) -> None:
    good = {"class": "Volume", "id": "good", "backend_name": "files", "size": 1}
    with pytest.raises(aiocinder.InvalidArgument, match=match or None):
        await aiocinder.load([good, data] if not isinstance(data, str) else data, save=True)
    assert await lib.get_volumes() == []


async def test_load_follows_fail_on_missing_backend(backend: aiocinder.Backend,
                                                    lib: PersistenceStore) -> None:
    foreign = {"class": "Volume", "id": "f", "backend_name": "elsewhere", "size": 1}
    with pytest.raises(aiocinder.BackendNotInitialised, match="elsewhere"):
        await aiocinder.load(foreign, save=True)
    assert await lib.get_volumes() == []
