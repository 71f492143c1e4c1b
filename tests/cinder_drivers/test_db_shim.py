"""Cinder's database API, answered from aiocinder's store while a Cinder backend runs.

The calls are made as a driver makes them: from a thread that is not the
event loop's, through ``cinder.db.api`` and Cinder's objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
import pytest
from cinder import context as cinder_context
from cinder import exception, objects
from cinder.db import api as db_api
from cinder.volume import volume_types

import aiocinder

pytestmark = pytest.mark.asyncio

T = TypeVar("T")


async def in_thread(func: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(func)


def ctx() -> Any:
    return cinder_context.get_admin_context()


async def test_volumes_and_their_metadata(
        fake_backend: aiocinder.Backend, cinder_lib: aiocinder.persistence.PersistenceStore
) -> None:
    vol = await fake_backend.create_volume(1, name="v", metadata={"a": "1", "b": "2"})

    loaded = await in_thread(lambda: objects.Volume.get_by_id(ctx(), vol.id))
    assert (loaded.display_name, loaded.size, loaded.status) == ("v", 1, "available")
    assert loaded.metadata == {"a": "1", "b": "2"}
    assert loaded.admin_metadata == {"fake_lun": "1"}
    assert loaded.volume_type.name == "__DEFAULT__" and len(loaded.volume_attachment) == 0

    merged = await in_thread(lambda: db_api.volume_metadata_update(ctx(), vol.id, {"b": "3"},
                                                                   False))
    assert merged == {"a": "1", "b": "3"}
    replaced = await in_thread(lambda: db_api.volume_metadata_update(ctx(), vol.id,
                                                                     {"c": "4"}, True))
    assert replaced == {"c": "4"}
    await in_thread(lambda: db_api.volume_admin_metadata_delete(ctx(), vol.id, "fake_lun"))
    (stored,) = await cinder_lib.get_volumes(volume_id=vol.id)
    assert dict(stored.metadata) == {"c": "4"} and dict(stored.admin_metadata) == {}

    # what a driver may not change stays aiocinder's: the status, the size
    await in_thread(lambda: db_api.volume_update(ctx(), vol.id, {
        "status": "error", "size": 9, "provider_location": "moved"}))
    (stored,) = await cinder_lib.get_volumes(volume_id=vol.id)
    assert (stored.status, stored.size, stored.provider_location) == ("available", 1, "moved")

    by_host = await in_thread(lambda: db_api.volume_get_all_by_host(ctx(), "testhost@array"))
    assert [row["id"] for row in by_host] == [vol.id]
    assert await in_thread(lambda: db_api.volume_get_all_by_host(ctx(), "other@array")) == []
    by_pool = await in_thread(lambda: db_api.volume_get_all_by_host(
        ctx(), "testhost@array#array", {"status": ["available", "in-use"]}))
    assert [row["id"] for row in by_pool] == [vol.id]

    with pytest.raises(exception.VolumeNotFound):
        await in_thread(lambda: objects.Volume.get_by_id(ctx(), "0" * 8 + "-0000-4000-8000-"
                                                         + "0" * 12))


async def test_snapshots_and_attachments(
        fake_backend: aiocinder.Backend, cinder_lib: aiocinder.persistence.PersistenceStore
) -> None:
    vol = await fake_backend.create_volume(1)
    first = await vol.create_snapshot(name="first")
    second = await vol.create_snapshot(name="second", metadata={"k": "v"})
    conn = await vol.connect({"host": "node-1", "initiator": "iqn.x"})

    snaps = await in_thread(lambda: objects.SnapshotList.get_all_for_volume(ctx(), vol.id))
    assert {s.id for s in snaps} == {first.id, second.id}
    latest = await in_thread(lambda: objects.Volume.get_by_id(ctx(), vol.id)
                             .get_latest_snapshot())
    assert latest.id == second.id

    def load_snapshot() -> tuple[Any, Any]:
        snapshot = objects.Snapshot.get_by_id(ctx(), second.id)
        return snapshot, snapshot.volume  # a lazy load, through the shim too

    loaded, its_volume = await in_thread(load_snapshot)
    assert loaded.metadata == {"k": "v"}
    assert its_volume.id == vol.id and loaded.volume_type_id == its_volume.volume_type_id

    attachments = await in_thread(
        lambda: objects.VolumeAttachmentList.get_all_by_volume_id(ctx(), vol.id))
    (attachment,) = attachments
    assert (attachment.id, attachment.attached_host, attachment.attach_status) == (
        conn.id, "node-1", "attached")
    assert attachment.connector == {"host": "node-1", "initiator": "iqn.x"}
    assert attachment.connection_info["driver_volume_type"] == "iscsi"
    await conn.disconnect()


async def test_volume_types_and_qos_specs(fake_backend: aiocinder.Backend) -> None:
    gold = await fake_backend.create_volume(1, volume_type_name="gold",
                                            extra_specs={"tier": "1"},
                                            qos_specs={"maxIOPS": "9", "consumer": "both"})
    also_gold = await fake_backend.create_volume(1, volume_type_name="gold",
                                                 extra_specs={"tier": "1"},
                                                 qos_specs={"maxIOPS": "9", "consumer": "both"})
    loaded = await in_thread(lambda: objects.Volume.get_by_id(ctx(), gold.id))
    other = await in_thread(lambda: objects.Volume.get_by_id(ctx(), also_gold.id))
    assert loaded.volume_type_id == other.volume_type_id, "equal types share an id"
    type_id = loaded.volume_type_id
    by_name = await in_thread(lambda: volume_types.get_volume_type_by_name(ctx(), "gold"))
    assert by_name["id"] == type_id and by_name["extra_specs"] == {"tier": "1"}
    qos = (await in_thread(lambda: volume_types.get_volume_type_qos_specs(type_id)))["qos_specs"]
    assert (qos["consumer"], qos["specs"]) == ("both", {"maxIOPS": "9"})
    spec = await in_thread(lambda: objects.QualityOfServiceSpecs.get_by_id(ctx(), qos["id"]))
    assert spec.specs == {"maxIOPS": "9"}
    with pytest.raises(exception.VolumeTypeNotFound):
        await in_thread(lambda: volume_types.get_volume_type(ctx(), "no-such-type"))


async def test_what_a_driver_makes_for_itself_gets_a_record(
        fake_backend: aiocinder.Backend, cinder_lib: aiocinder.persistence.PersistenceStore
) -> None:
    vol = await fake_backend.create_volume(1)

    def temporary_snapshot() -> str:
        snap = objects.Snapshot(context=ctx(), volume_id=vol.id, volume_size=1,
                                status="creating", display_name="tmp-snap")
        snap.create()
        return str(snap.id)

    snap_id = await in_thread(temporary_snapshot)
    (record,) = await cinder_lib.get_snapshots(snapshot_id=snap_id)
    assert (record.name, record.backend_name, record.status) == ("tmp-snap", "array",
                                                                 "creating")
    await in_thread(lambda: objects.Snapshot.get_by_id(ctx(), snap_id).destroy())
    assert await cinder_lib.get_snapshots(snapshot_id=snap_id) == []

    def temporary_volume() -> str:
        temp = objects.Volume(context=ctx(), size=2, host="testhost@array#array",
                              status="creating", display_name="tmp-vol",
                              volume_type_id=objects.Volume.get_by_id(
                                  ctx(), vol.id).volume_type_id)
        temp.create()
        return str(temp.id)

    temp_id = await in_thread(temporary_volume)
    (record,) = await cinder_lib.get_volumes(volume_id=temp_id)
    assert (record.name, record.size, record.backend_name) == ("tmp-vol", 2, "array")
    await in_thread(lambda: objects.Volume.get_by_id(ctx(), temp_id).destroy())
    assert await cinder_lib.get_volumes(volume_id=temp_id) == []


async def test_calls_the_shim_does_not_answer(fake_backend: aiocinder.Backend) -> None:
    with pytest.raises(NotImplementedError, match=r"cinder\.db\.api\.backup_get_all\(\)"):
        await in_thread(lambda: db_api.backup_get_all(ctx()))
    with pytest.raises(NotImplementedError, match="Cluster"):
        await in_thread(lambda: objects.Cluster.get_by_id(ctx(), 1))


async def test_a_call_on_the_event_loop_thread_is_refused(fake_backend: aiocinder.Backend
                                                          ) -> None:
    vol = await fake_backend.create_volume(1)
    with pytest.raises(RuntimeError, match="event loop thread"):
        db_api.volume_get(ctx(), vol.id)
