"""cinderlib's resource-tracking loop, awaited, and the lazy properties behind it."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support import CountingSQLiteStore, ScriptedFileDriver, persistence, sql_store_url

import aiocinder

pytestmark = pytest.mark.asyncio


async def scan(backend: aiocinder.Backend) -> list[tuple[Any, ...]]:
    """The documented loop, collecting what it prints."""
    seen: list[tuple[Any, ...]] = []
    await backend.refresh()
    for vol in await backend.volumes():
        await vol.refresh()
        seen.append(("volume", vol.id, vol.name, vol.size, vol.status))
        for snap in await vol.snapshots():
            seen.append(("snapshot", snap.id, (await snap.volume()).id, snap.status))
        for conn in await vol.connections():
            seen.append((
                "connection", conn.connector_info["host"], conn.connector_info["ip"],
                (await conn.volume()).id, conn.status,
            ))
    return seen


async def populate(backend: aiocinder.Backend, count: int) -> None:
    for i in range(count):
        vol = await backend.create_volume(1, name=f"vol-{i}")
        await vol.create_snapshot(name=f"vol-{i}-a")
        await vol.create_snapshot(name=f"vol-{i}-b")
        await vol.connect({"host": f"node-{i}", "ip": f"10.0.0.{i}"})


async def start(db_url: str, volumes_dir: Path) -> aiocinder.Backend:
    await aiocinder.setup(persistence(db_url))
    return await aiocinder.Backend(
        "files", volume_driver=ScriptedFileDriver, volumes_dir=str(volumes_dir)
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with sql_store_url(request.param, tmp_path) as url:
        yield url


async def test_tracking_loop_survives_a_restart(shared_url: str, tmp_path: Path) -> None:
    db_url = shared_url
    backend = await start(db_url, tmp_path / "v")
    try:
        await populate(backend, 4)
        before = await scan(backend)
    finally:
        await aiocinder.shutdown()
    assert aiocinder.Backend.backends == {} and aiocinder.Backend.persistence is None
    assert sum(1 for row in before if row[0] == "volume") == 4
    assert sum(1 for row in before if row[0] == "snapshot") == 8
    connections = [row for row in before if row[0] == "connection"]
    assert len(connections) == 4 and {row[4] for row in connections} == {"attached"}
    assert {row[1] for row in connections} == {f"node-{i}" for i in range(4)}

    backend = await start(db_url, tmp_path / "v")
    try:
        assert await scan(backend) == before
    finally:
        await aiocinder.shutdown()


async def test_identity_through_lazy_properties(backend: aiocinder.Backend) -> None:
    await populate(backend, 2)
    await backend.refresh()
    for vol in await backend.volumes():
        for snap in await vol.snapshots():
            assert await snap.volume() is vol
        for conn in await vol.connections():
            assert await conn.volume() is vol
    # a fresh lookup is a new object, equal by id
    any_vol = (await backend.volumes())[0]
    again = await aiocinder.Volume.get_by_id(any_vol.id)
    assert again == any_vol and again is not any_vol


async def test_scanned_volumes_are_freed_without_the_garbage_collector(
    backend: aiocinder.Backend,
) -> None:
    await populate(backend, 3)
    await scan(backend)
    volumes = await backend.volumes(prefetch=("snapshots", "connections"))
    children = []
    for vol in volumes:
        for child in (*await vol.snapshots(), *await vol.connections()):
            assert await child.volume() is vol
            children.append(child)
    del vol
    refs = [weakref.ref(v) for v in volumes]
    gc.disable()
    try:
        del volumes
        await backend.refresh()
        assert all(ref() is None for ref in refs), "a volume was kept alive by a cycle"
    finally:
        gc.enable()
    # a child that outlives its volume loads the volume again when asked
    again = await children[0].volume()
    assert again.id == children[0].volume_id and again is await children[0].volume()


async def test_concurrent_first_awaits_share_one_read(db_url: str, tmp_path: Path) -> None:
    store = CountingSQLiteStore(db_url)
    await aiocinder.setup({"storage": store})
    try:
        backend = await aiocinder.Backend(
            "files", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v")
        )
        await populate(backend, 1)
        vol = await aiocinder.Volume.get_by_id((await backend.volumes())[0].id)
        store.reads.clear()
        results = await asyncio.gather(*(vol.snapshots() for _ in range(20)))
        assert store.reads["get_snapshots"] == 1
        assert all(len(r) == 2 for r in results)
        assert len({id(r) for r in results}) == 20, "every await gets a list of its own"
        assert len({id(s) for r in results for s in r}) == 2, "...of the same snapshots"
        await vol.snapshots()
        assert store.reads["get_snapshots"] == 1, "cached"
        await vol.refresh()
        await vol.snapshots()
        assert store.reads["get_snapshots"] == 2, "refresh drops the cache"
    finally:
        await aiocinder.shutdown()


async def test_refresh_shows_changes_made_through_another_handle(
    backend: aiocinder.Backend,
) -> None:
    vol = await backend.create_volume(1, name="shared")
    other = await aiocinder.Volume.get_by_id(vol.id)
    assert await vol.snapshots() == []
    listed = await backend.volumes()

    snap = await other.create_snapshot(name="made-elsewhere")
    other.name = "renamed"
    await other.save()
    await other.extend(3)
    new = await backend.create_volume(1, name="new")  # backend cache is coherent itself

    assert await vol.snapshots() == [] and vol.name == "shared" and vol.size == 1
    await vol.refresh()
    assert await vol.snapshots() == [snap]
    assert (vol.name, vol.size) == ("renamed", 3)
    assert {v.id for v in await backend.volumes()} == {v.id for v in listed} | {new.id}


async def test_operations_keep_loaded_caches_coherent(backend: aiocinder.Backend) -> None:
    vol = await backend.create_volume(1)
    assert await vol.snapshots() == [] and await vol.connections() == []
    snap = await vol.create_snapshot()
    conn = await vol.connect({"host": "h", "ip": "1.2.3.4"})
    assert await vol.snapshots() == [snap] and await vol.connections() == [conn]
    listed = await vol.snapshots()
    listed.clear()  # the caller's list, not the cache
    assert await vol.snapshots() == [snap]
    await conn.disconnect()
    await snap.delete()
    assert await vol.snapshots() == [] and await vol.connections() == []
    clone = await vol.clone()
    assert clone in await backend.volumes()
    await clone.delete()
    assert clone not in await backend.volumes()


async def test_a_load_finishing_after_refresh_is_not_cached(
    db_url: str, tmp_path: Path
) -> None:
    gate = asyncio.Event()

    class SlowStore(CountingSQLiteStore):
        async def get_snapshots(self, *args: Any, **kwargs: Any) -> Any:
            result = await super().get_snapshots(*args, **kwargs)
            if self.reads["get_snapshots"] == 1:
                await gate.wait()
            return result

    store = SlowStore(db_url)
    await aiocinder.setup({"storage": store})
    try:
        backend = await aiocinder.Backend(
            "files", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v")
        )
        vol = await backend.create_volume(1)
        first = asyncio.ensure_future(vol.snapshots())
        await asyncio.sleep(0.05)
        await vol.refresh()           # the slow load is now stale
        gate.set()
        assert await first == []
        await vol.create_snapshot()   # cache not loaded: nothing to keep coherent
        assert len(await vol.snapshots()) == 1
        assert store.reads["get_snapshots"] == 2
    finally:
        await aiocinder.shutdown()


async def test_cancelled_first_loader_does_not_poison_the_cache(
    db_url: str, tmp_path: Path
) -> None:
    class SlowStore(CountingSQLiteStore):
        async def get_snapshots(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.1)
            return await super().get_snapshots(*args, **kwargs)

    store = SlowStore(db_url)
    await aiocinder.setup({"storage": store})
    try:
        backend = await aiocinder.Backend(
            "files", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v")
        )
        vol = await backend.create_volume(1)
        await vol.create_snapshot()
        await vol.refresh()
        first = asyncio.ensure_future(vol.snapshots())
        second = asyncio.ensure_future(vol.snapshots())
        await asyncio.sleep(0.02)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert len(await second) == 1, "the shared load went on for the other awaiter"
        assert len(await vol.snapshots()) == 1
        assert store.reads["get_snapshots"] == 1
    finally:
        await aiocinder.shutdown()


async def test_snapshots_are_stamped_when_taken_not_when_asked_for(
    db_url: str, tmp_path: Path
) -> None:
    store = await aiocinder.setup(persistence(db_url))
    try:
        backend = await aiocinder.Backend(
            "files", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v")
        )
        vol = await backend.create_volume(1)
        async with store.lock(f"volume:{vol.id}"):  # as another process would hold it
            asked = asyncio.create_task(vol.create_snapshot(name="waited"))
            await asyncio.sleep(0.05)
            released = datetime.now(UTC)
        snap = await asked
        assert snap.created_at >= released
        assert (await vol.snapshots())[0].created_at == snap.created_at
    finally:
        await aiocinder.shutdown()
