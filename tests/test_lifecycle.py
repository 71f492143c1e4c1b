"""Volumes, snapshots and connections through the real FileDriver on SQLite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import ArrayFault, ScriptedFileDriver

import aiocinder

GiB = 1 << 30
pytestmark = pytest.mark.asyncio


def volume_file(backend: aiocinder.Backend, volume_id: str) -> Path:
    return Path(backend.config["volumes_dir"]) / f"volume-{volume_id}"


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_at(path: str | Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


async def test_create_extend_snapshot_clone_connect_delete(
    backend: aiocinder.Backend, lib: aiocinder.persistence.PersistenceStore
) -> None:
    vol = await backend.create_volume(size=1, name="disk", metadata={"team": "db"})
    assert vol.status == "available"
    assert vol.host == "testhost@files#files"
    path = volume_file(backend, vol.id)
    assert path.stat().st_size == GiB
    assert vol.provider_location == str(path)
    write_at(path, 4096, b"payload")

    await vol.extend(2)
    assert (vol.size, vol.status) == (2, "available")
    assert path.stat().st_size == 2 * GiB

    snap = await vol.create_snapshot(name="s1")
    assert (snap.status, snap.volume_size, snap.volume_id) == ("available", 2, vol.id)
    clone = await vol.clone(name="copy")
    assert (clone.source_volid, clone.size) == (vol.id, 2)
    from_snap = await snap.create_volume(size=3)
    assert (from_snap.snapshot_id, from_snap.size) == (snap.id, 3)
    for copy in (clone, from_snap):
        assert read_at(volume_file(backend, copy.id), 4096, 7) == b"payload"
    assert volume_file(backend, from_snap.id).stat().st_size == 3 * GiB

    conn = await vol.connect({"host": "node1", "ip": "10.0.0.1"})
    assert conn.status == "attached" and conn.connected and not conn.attached
    assert conn.protocol == "local"
    assert conn.conn_info["data"]["device_path"] == str(path)
    assert conn.conn_info["data"]["access_mode"] == "rw"
    assert vol.status == "in-use"

    stored = {v.id: v for v in await lib.get_volumes(backend_name="files")}
    assert stored[vol.id].status == "in-use" and stored[vol.id].size == 2
    assert len(await lib.get_connections(volume_id=vol.id)) == 1

    with pytest.raises(aiocinder.InvalidVolume, match="1 snapshot"):
        await vol.delete()
    await conn.disconnect()
    assert vol.status == "available"
    assert await lib.get_connections(volume_id=vol.id) == []
    await snap.delete()
    assert snap.status == "deleted"
    assert not (path.parent / f"snapshot-{snap.id}").exists()
    await vol.delete()
    assert vol.status == "deleted" and not path.exists()
    with pytest.raises(aiocinder.VolumeNotFound):
        await aiocinder.Volume.get_by_id(vol.id)
    assert {v.id for v in await backend.volumes()} == {clone.id, from_snap.id}


async def test_lookups(backend: aiocinder.Backend) -> None:
    a = await backend.create_volume(1, name="twin")
    b = await backend.create_volume(1, name="twin")
    snap = await a.create_snapshot(name="snappy")
    conn = await b.connect({"host": "h"})
    assert (await aiocinder.Volume.get_by_id(a.id)) == a
    assert {v.id for v in await aiocinder.Volume.get_by_name("twin")} == {a.id, b.id}
    assert await aiocinder.Volume.get_by_name("nobody") == []
    assert (await aiocinder.Snapshot.get_by_id(snap.id)).name == "snappy"
    assert [s.id for s in await aiocinder.Snapshot.get_by_name("snappy")] == [snap.id]
    found = await aiocinder.Connection.get_by_id(conn.id)
    assert found.connector_info == {"host": "h"} and found.status == "attached"
    assert (await found.volume()).id == b.id
    with pytest.raises(aiocinder.SnapshotNotFound):
        await aiocinder.Snapshot.get_by_id("missing")
    with pytest.raises(aiocinder.ConnectionNotFound):
        await aiocinder.Connection.get_by_id("missing")


async def test_caller_supplied_id_never_duplicates(
    backend: aiocinder.Backend, lib: aiocinder.persistence.PersistenceStore
) -> None:
    vol = await backend.create_volume(1, name="first", id="fixed-id")
    write_at(volume_file(backend, vol.id), 0, b"keep me")
    with pytest.raises(aiocinder.AlreadyExists):
        await backend.create_volume(2, name="second", id="fixed-id")
    (stored,) = await lib.get_volumes(volume_id="fixed-id")
    assert (stored.name, stored.size, stored.status) == ("first", 1, "available")
    assert read_at(volume_file(backend, vol.id), 0, 7) == b"keep me"
    with pytest.raises(aiocinder.AlreadyExists):
        await vol.clone(id="fixed-id")
    assert read_at(volume_file(backend, vol.id), 0, 7) == b"keep me"


async def faulty_backend(tmp_path: Path, *fail: str) -> aiocinder.Backend:
    return await aiocinder.Backend(
        "faulty", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v"), fail=fail
    )


async def test_create_failure_is_recorded_as_error(
    lib: aiocinder.persistence.PersistenceStore, tmp_path: Path
) -> None:
    backend = await faulty_backend(tmp_path, "create_volume")
    with pytest.raises(aiocinder.DriverError) as info:
        await backend.create_volume(1, name="doomed")
    vol = info.value.resource
    assert isinstance(vol, aiocinder.Volume) and vol.status == "error"
    assert isinstance(info.value.__cause__, ArrayFault)
    (stored,) = await lib.get_volumes(volume_name="doomed")
    assert (stored.id, stored.status) == (vol.id, "error")
    assert [v.id for v in await backend.volumes()] == [vol.id]
    await vol.delete()  # an errored volume can be cleaned up
    assert await lib.get_volumes(volume_name="doomed") == []


@pytest.mark.parametrize(
    ("method", "status"),
    [("extend_volume", "error_extending"), ("delete_volume", "error_deleting")],
)
async def test_volume_operation_failures(
    lib: aiocinder.persistence.PersistenceStore, tmp_path: Path, method: str, status: str
) -> None:
    backend = await faulty_backend(tmp_path, method)
    vol = await backend.create_volume(1)
    with pytest.raises(aiocinder.DriverError) as info:
        if method == "extend_volume":
            await vol.extend(2)
        else:
            await vol.delete()
    assert info.value.resource is vol
    assert vol.status == status
    (stored,) = await lib.get_volumes(volume_id=vol.id)
    assert (stored.status, stored.size) == (status, 1)
    assert volume_file(backend, vol.id).stat().st_size == GiB


async def test_snapshot_failure_is_recorded(
    lib: aiocinder.persistence.PersistenceStore, tmp_path: Path
) -> None:
    backend = await faulty_backend(tmp_path, "create_snapshot")
    vol = await backend.create_volume(1)
    with pytest.raises(aiocinder.DriverError) as info:
        await vol.create_snapshot(name="bad")
    snap = info.value.resource
    assert isinstance(snap, aiocinder.Snapshot) and snap.status == "error"
    assert [s.status for s in await lib.get_snapshots(volume_id=vol.id)] == ["error"]
    assert (await vol.snapshots()) == [snap]
    assert vol.status == "available"


async def test_connect_failure_leaves_nothing(
    lib: aiocinder.persistence.PersistenceStore, tmp_path: Path
) -> None:
    backend = await faulty_backend(tmp_path, "initialize_connection")
    vol = await backend.create_volume(1)
    loaded = await vol.connections()
    with pytest.raises(aiocinder.DriverError) as info:
        await vol.connect({"host": "h"})
    assert info.value.resource is vol
    assert await lib.get_connections(volume_id=vol.id) == []
    assert await vol.connections() == loaded == []
    assert vol.status == "available"
    (stored,) = await lib.get_volumes(volume_id=vol.id)
    assert stored.status == "available"


async def test_last_disconnect_makes_volume_available(backend: aiocinder.Backend) -> None:
    vol = await backend.create_volume(1)
    first = await vol.connect({"host": "a"})
    second = await vol.connect({"host": "b"}, attach_mode="ro")
    assert second.attach_mode == "ro" and second.conn_info["data"]["access_mode"] == "ro"
    await first.disconnect()
    assert vol.status == "in-use"
    await vol.disconnect(second)
    assert vol.status == "available"
    assert await vol.connections() == []


async def test_stats_and_statistics(backend: aiocinder.Backend, tmp_path: Path) -> None:
    stats = await backend.stats(refresh=True)
    fs = os.statvfs(tmp_path)
    assert stats["pools"][0]["pool_name"] == "files"
    assert stats["total_capacity_gb"] == round(fs.f_blocks * fs.f_frsize / GiB, 2)
    assert backend.pool_names == ("files",)
    stats["pools"].clear()  # a copy: the backend's own is untouched
    assert backend.pool_names == ("files",)
    st = backend.statistics()
    assert (st.name, st.max_concurrent_driver_calls, st.running_driver_calls) == ("files", 8, 0)
    with pytest.raises(aiocinder.InvalidArgument, match="pool"):
        await backend.create_volume(1, pool_name="nope")
