"""Bulk scans: prefetch, coalesced lazy loads and streaming, counted at the store."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support import CountingSQLiteStore, ScriptedFileDriver, Ticker

import aiocinder
from aiocinder.records import SnapshotRecord, VolumeRecord

pytestmark = pytest.mark.asyncio
N = 30


@pytest_asyncio.fixture
async def counted(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Any, Any]]:
    store = CountingSQLiteStore(db_url)
    await aiocinder.setup({"storage": store})
    try:
        backend = await aiocinder.Backend(
            "files", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v")
        )
        for i in range(N):
            vol = await backend.create_volume(1, name=f"v{i % 3}")
            for _ in range(i % 3):
                await vol.create_snapshot()
            if i % 2:
                await vol.connect({"host": f"h{i}", "ip": "10.0.0.1"})
        await backend.refresh()
        store.reads.clear()
        yield backend, store
    finally:
        await aiocinder.shutdown()


async def walk(volumes: list[aiocinder.Volume]) -> list[tuple[str, int, int]]:
    out = []
    for vol in volumes:
        snaps = await vol.snapshots()
        conns = await vol.connections()
        assert all([await s.volume() is vol for s in snaps])
        assert all([await c.volume() is vol for c in conns])
        out.append((vol.id, len(snaps), len(conns)))
    return out


def expected(volumes: list[aiocinder.Volume]) -> list[tuple[str, int, int]]:
    index = {v.id: int(v.name[1:]) for v in volumes}  # type: ignore[index]
    order = sorted(volumes, key=lambda v: (v.created_at, v.id))
    return [(v.id, index[v.id] % 3, 0) for v in order]


async def test_prefetch_loads_everything_in_three_queries(counted: tuple[Any, Any]) -> None:
    backend, store = counted
    volumes = await backend.volumes(prefetch=("snapshots", "connections"))
    assert store.reads == {"get_volumes": 1, "get_snapshots_by_volume_ids": 1,
                           "get_connections_by_volume_ids": 1}
    seen = await walk(volumes)
    assert store.reads.total() == 3, "the walk was served from the caches"
    assert sum(s for _, s, _ in seen) == sum(i % 3 for i in range(N))
    assert sum(c for _, _, c in seen) == N // 2
    await backend.volumes(prefetch=("snapshots",))
    assert store.reads.total() == 3, "already loaded lists are not fetched again"


async def test_concurrent_lazy_loads_are_coalesced(counted: tuple[Any, Any]) -> None:
    backend, store = counted
    volumes = await backend.volumes()
    results = await asyncio.gather(*(v.snapshots() for v in volumes),
                                   *(v.connections() for v in volumes))
    assert store.reads["get_snapshots_by_volume_ids"] == 1
    assert store.reads["get_connections_by_volume_ids"] == 1
    # the first request of the turn went at once, by itself; the rest waited one turn
    assert store.reads["get_snapshots"] == store.reads["get_connections"] == 1
    snaps, conns = results[:N], results[N:]
    for vol, vsnaps, vconns in zip(volumes, snaps, conns, strict=True):
        assert all(s.volume_id == vol.id for s in vsnaps)
        assert all(c.volume_id == vol.id for c in vconns)
    assert sum(map(len, snaps)) == sum(i % 3 for i in range(N))
    assert sum(map(len, conns)) == N // 2
    # a lone load still goes through the single-volume query
    await volumes[0].refresh()
    await volumes[0].snapshots()
    assert store.reads["get_snapshots"] == 2


async def test_concurrent_refreshes_and_lookups_are_coalesced(
    counted: tuple[Any, Any]
) -> None:
    backend, store = counted
    volumes = await backend.volumes()
    await asyncio.gather(*(v.refresh() for v in volumes))
    found = await asyncio.gather(*(aiocinder.Volume.get_by_id(v.id) for v in volumes))
    assert [v.id for v in found] == [v.id for v in volumes]
    assert store.reads["get_volumes_by_ids"] == 2
    with pytest.raises(aiocinder.VolumeNotFound):
        await asyncio.gather(aiocinder.Volume.get_by_id(volumes[0].id),
                             aiocinder.Volume.get_by_id("missing"))


async def test_streaming_in_batches_with_filters(counted: tuple[Any, Any]) -> None:
    backend, store = counted
    everything = await backend.volumes()
    store.reads.clear()
    streamed = [v async for v in backend.iter_volumes(batch_size=7,
                                                      prefetch=("snapshots",))]
    assert [v.id for v in streamed] == [v.id for v in everything]
    assert store.reads["get_snapshots_by_volume_ids"] == math.ceil(N / 7)
    assert [len(await v.snapshots()) for v in streamed] == [i % 3 for i in range(N)]
    named = [v.name async for v in backend.iter_volumes(name="v1", batch_size=4)]
    assert named == ["v1"] * (N // 3)
    in_use = [v async for v in backend.iter_volumes(status="in-use")]
    assert len(in_use) == N // 2 and {v.status for v in in_use} == {"in-use"}


@pytest.mark.parametrize("bad", ["snapshots", ("volumes",), ["snapshot"]])
async def test_bad_prefetch_is_refused(counted: tuple[Any, Any], bad: Any) -> None:
    backend, _ = counted
    with pytest.raises(aiocinder.InvalidArgument, match="prefetch"):
        await backend.volumes(prefetch=bad)


async def test_building_thousands_of_objects_gives_the_loop_turns(tmp_path: Path) -> None:
    """Listing and prefetching build objects a slice per turn: a task running
    beside them gets turns in between (the memory store answers at once, so
    the turns are the resource layer's own)."""
    store = await aiocinder.setup({"storage": "memory"})
    try:
        backend = await aiocinder.Backend(
            "files", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v")
        )
        count = 1500
        for i in range(count):
            await store.set_volume(VolumeRecord(id=f"v{i:05d}", backend_name="files", size=1))
            await store.set_snapshot(SnapshotRecord(
                id=f"s{i:05d}", volume_id=f"v{i:05d}", backend_name="files", volume_size=1))
        async with Ticker() as ticker:
            volumes = await backend.volumes(prefetch=("snapshots",))
        assert len(volumes) == count
        assert [len(await v.snapshots()) for v in volumes] == [1] * count
        # 1,500 volumes and 1,500 snapshot lists, 256 per turn: 5 turns each way at least
        assert ticker.turns >= 10, ticker.turns
    finally:
        await aiocinder.shutdown()
