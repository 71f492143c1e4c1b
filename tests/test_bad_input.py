"""Bad input gets a typed error and leaves persisted state (and the files) as they were."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support import ScriptedFileDriver

import aiocinder
from aiocinder.persistence import PersistenceStore

pytestmark = pytest.mark.asyncio


class World:
    """A backend with one volume that has a snapshot and a connection, and one plain volume."""

    backend: aiocinder.Backend
    busy: aiocinder.Volume
    plain: aiocinder.Volume
    snap: aiocinder.Snapshot
    conn: aiocinder.Connection


@pytest_asyncio.fixture
async def world(backend: aiocinder.Backend) -> World:
    w = World()
    w.backend = backend
    w.busy = await backend.create_volume(2, name="busy")
    w.snap = await w.busy.create_snapshot(name="snap")
    w.conn = await w.busy.connect({"host": "h", "ip": "10.1.1.1"})
    w.plain = await backend.create_volume(2, name="plain")
    return w


async def state(store: PersistenceStore, files: Path) -> tuple[Any, ...]:
    return (
        await store.get_volumes(),
        await store.get_snapshots(),
        await store.get_connections(),
        await store.get_key_values(),
        sorted((p.name, p.stat().st_size) for p in files.iterdir()),
    )


Case = Callable[[World], Awaitable[object]]

CASES: list[tuple[str, Case, type[Exception], str]] = [
    ("size 0", lambda w: w.backend.create_volume(0), aiocinder.InvalidArgument, "at least 1"),
    ("negative size", lambda w: w.backend.create_volume(-3), aiocinder.InvalidArgument,
     "at least 1"),
    ("fractional size", lambda w: w.backend.create_volume(1.5), aiocinder.InvalidArgument,
     "whole number"),
    ("size as str", lambda w: w.backend.create_volume("1"), aiocinder.InvalidArgument,
     "whole number"),
    ("size None", lambda w: w.backend.create_volume(None), aiocinder.InvalidArgument,
     "whole number"),
    ("size bool", lambda w: w.backend.create_volume(True), aiocinder.InvalidArgument,
     "whole number"),
    ("shrink", lambda w: w.plain.extend(1), aiocinder.InvalidArgument, "larger"),
    ("extend to same", lambda w: w.plain.extend(2), aiocinder.InvalidArgument, "larger"),
    ("extend float", lambda w: w.plain.extend(3.0), aiocinder.InvalidArgument, "whole number"),
    ("clone smaller", lambda w: w.plain.clone(size=1), aiocinder.InvalidArgument, "smaller"),
    ("volume from snapshot smaller", lambda w: w.snap.create_volume(size=1),
     aiocinder.InvalidArgument, "smaller"),
    ("unknown volume id", lambda w: aiocinder.Volume.get_by_id("no-such-volume"),
     aiocinder.VolumeNotFound, "no-such-volume"),
    ("unknown snapshot id", lambda w: aiocinder.Snapshot.get_by_id("nope"),
     aiocinder.SnapshotNotFound, "nope"),
    ("unknown connection id", lambda w: aiocinder.Connection.get_by_id("nope"),
     aiocinder.ConnectionNotFound, "nope"),
    ("delete volume with snapshot and connection", lambda w: w.busy.delete(),
     aiocinder.InvalidVolume, "1 snapshot"),
    ("name with NUL", lambda w: w.backend.create_volume(1, name="a\x00b"),
     aiocinder.InvalidArgument, "NUL"),
    ("name too long", lambda w: w.backend.create_volume(1, name="n" * 256),
     aiocinder.InvalidArgument, "longer"),
    ("name not text", lambda w: w.backend.create_volume(1, name=42),
     aiocinder.InvalidArgument, "name must be a str"),
    ("name with lone surrogate", lambda w: w.backend.create_volume(1, name="\udcff"),
     aiocinder.InvalidArgument, "Unicode"),
    ("path traversal id", lambda w: w.backend.create_volume(1, id="../../etc/passwd"),
     aiocinder.InvalidArgument, "id"),
    ("empty id", lambda w: w.backend.create_volume(1, id=""), aiocinder.InvalidArgument, "id must"),
    ("taken id", lambda w: w.backend.create_volume(1, id=w.plain.id),
     aiocinder.AlreadyExists, "exists"),
    ("snapshot with taken id", lambda w: w.plain.create_snapshot(id=w.snap.id),
     aiocinder.AlreadyExists, "exists"),
    ("metadata value not str", lambda w: w.backend.create_volume(1, metadata={"a": 1}),
     aiocinder.InvalidArgument, "metadata"),
    ("extra specs not a mapping", lambda w: w.backend.create_volume(1, extra_specs=["x"]),
     aiocinder.InvalidArgument, "extra_specs"),
    ("unknown pool", lambda w: w.backend.create_volume(1, pool_name="gold"),
     aiocinder.InvalidArgument, "gold"),
    ("connector not a mapping", lambda w: w.plain.connect("node1"),
     aiocinder.InvalidArgument, "connector"),
    ("connector not JSON", lambda w: w.plain.connect({"host": object()}),
     aiocinder.InvalidArgument, "JSON"),
    ("bad attach mode", lambda w: w.plain.connect({"host": "h"}, attach_mode="rx"),
     aiocinder.InvalidArgument, "attach_mode"),
    ("snapshot name as bytes", lambda w: w.busy.create_snapshot(name=b"bytes"),
     aiocinder.InvalidArgument, "name must be a str"),
    ("backend name reused with other options", lambda w: aiocinder.Backend(
        "files", volume_driver=ScriptedFileDriver, volumes_dir="/elsewhere"),
     aiocinder.BackendConfigConflict, "'files'"),
    ("driver that does not import", lambda w: aiocinder.Backend(
        "other", volume_driver="no.such.Driver"), aiocinder.InvalidArgument, "import"),
    ("driver option unknown", lambda w: aiocinder.Backend(
        "other", volume_driver=ScriptedFileDriver, volumes_dir="/tmp", colour="red"),
     aiocinder.InvalidArgument, "colour"),
    ("zero driver calls", lambda w: aiocinder.Backend(
        "other", volume_driver=ScriptedFileDriver, max_concurrent_driver_calls=0),
     aiocinder.InvalidArgument, "max_concurrent_driver_calls"),
]


@pytest.mark.parametrize(("case", "expected", "match"),
                         [pytest.param(c, e, m, id=i) for i, c, e, m in CASES])
async def test_bad_input_changes_nothing(
    world: World, lib: PersistenceStore, tmp_path: Path,
    case: Case, expected: type[Exception], match: str,
) -> None:
    files = tmp_path / "volumes"
    before = await state(lib, files)
    backends = dict(aiocinder.Backend.backends)
    with pytest.raises(expected, match=match):
        await case(world)
    assert await state(lib, files) == before
    assert aiocinder.Backend.backends == backends
    assert (world.plain.size, world.plain.status) == (2, "available")


async def test_invalid_argument_is_a_value_error() -> None:
    assert issubclass(aiocinder.InvalidArgument, ValueError)
    assert issubclass(aiocinder.InvalidArgument, aiocinder.AiocinderError)
    assert issubclass(aiocinder.UsageError, RuntimeError)
    assert issubclass(aiocinder.VolumeNotFound, LookupError)


async def test_hostile_names_are_stored_verbatim_and_never_name_storage(
    world: World, lib: PersistenceStore, tmp_path: Path
) -> None:
    names = ["x'); DROP TABLE volumes; --", "../../../etc/passwd", "日本語 \"quoted\"\n", ""]
    for name in names:
        vol = await world.backend.create_volume(1, name=name, description=name)
        (stored,) = await lib.get_volumes(volume_id=vol.id)
        assert (stored.name, stored.description) == (name, name)
        assert (tmp_path / "volumes" / f"volume-{vol.id}").exists()
    assert [v.name for v in await aiocinder.Volume.get_by_name(names[0])] == [names[0]]
    assert len(await lib.get_volumes()) == 2 + len(names)


async def test_stale_save_raises_conflict_and_keeps_the_winner(world: World) -> None:
    a = await aiocinder.Volume.get_by_id(world.plain.id)
    b = await aiocinder.Volume.get_by_id(world.plain.id)
    a.name = "from a"
    await a.save()
    b.name = "from b"
    with pytest.raises(aiocinder.ConflictError):
        await b.save()
    await b.refresh()
    assert b.name == "from a"


async def test_operations_refuse_wrong_states(world: World) -> None:
    await world.snap.delete()
    with pytest.raises(aiocinder.InvalidSnapshot):
        await world.snap.delete()
    with pytest.raises(aiocinder.InvalidSnapshot):
        await world.snap.create_volume()
    await world.conn.disconnect()
    with pytest.raises(aiocinder.InvalidConnection):
        await world.conn.disconnect()
    await world.busy.delete()
    with pytest.raises(aiocinder.InvalidVolume, match="deleted"):
        await world.busy.extend(5)
