"""The persistence contract: every store must pass these tests unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aiocinder.exceptions import (
    AlreadyExists,
    ConflictError,
    ConnectionNotFound,
    InvalidArgument,
    NotFound,
    SnapshotNotFound,
    UsageError,
    VolumeNotFound,
)
from aiocinder.persistence._codec import DECODE_CHUNK
from aiocinder.persistence.base import PersistenceStore
from aiocinder.records import ConnectionRecord, KeyValue, SnapshotRecord, VolumeRecord

from .conftest import take_lock

pytestmark = pytest.mark.asyncio

T0 = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)
HOSTILE = "x'); DROP TABLE volumes; --"
ODD_NAMES = [HOSTILE, "disque-é-数据-💾", 'O\'Brien "quoted" \\ back', "%_ like * ?", ""]


def new_id() -> str:
    return str(uuid.uuid4())


def volume(**changes: Any) -> VolumeRecord:
    fields: dict[str, Any] = {"id": new_id(), "backend_name": "lvm", "size": 1}
    return VolumeRecord(**(fields | changes))


def snapshot(volume_id: str, **changes: Any) -> SnapshotRecord:
    fields: dict[str, Any] = {
        "id": new_id(),
        "volume_id": volume_id,
        "backend_name": "lvm",
        "volume_size": 1,
    }
    return SnapshotRecord(**(fields | changes))


def connection(volume_id: str, **changes: Any) -> ConnectionRecord:
    fields: dict[str, Any] = {"id": new_id(), "volume_id": volume_id, "backend_name": "lvm"}
    return ConnectionRecord(**(fields | changes))


def full_volume() -> VolumeRecord:
    return VolumeRecord(
        id=new_id(),
        backend_name="lvm-é",
        size=42,
        status="available",
        name="naïve 'volume' \"名前\"",
        description=HOSTILE,
        host="host@lvm#pool",
        availability_zone="nova",
        volume_type_name="gold",
        extra_specs={"volume_backend_name": "lvm", "capabilities:thin": "<is> True"},
        qos_specs={"total_iops_sec": "1000"},
        metadata={"k": "v", "ключ": "значение", "": ""},
        admin_metadata={"readonly": "True"},
        provider_location="10.0.0.1:3260,1 iqn.2010-10.org.openstack:volume-1 0",
        provider_auth="CHAP user secret",
        provider_id="p-1",
        source_volid=new_id(),
        snapshot_id=new_id(),
        project_id="project",
        user_id="user",
        bootable=True,
        multiattach=True,
        created_at=T0 + timedelta(microseconds=123456),
        updated_at=T0 + timedelta(days=1),
    )


def full_snapshot(volume_id: str) -> SnapshotRecord:
    return SnapshotRecord(
        id=new_id(),
        volume_id=volume_id,
        backend_name="lvm",
        volume_size=42,
        status="available",
        name="snap 'ü'",
        description="€",
        metadata={"a": "b"},
        provider_location="loc",
        provider_auth="auth",
        provider_id="pid",
        project_id="project",
        user_id="user",
        created_at=T0,
        updated_at=None,
    )


def full_connection(volume_id: str) -> ConnectionRecord:
    return ConnectionRecord(
        id=new_id(),
        volume_id=volume_id,
        backend_name="lvm",
        status="attached",
        connector_info={
            "host": "node-1",
            "ip": "192.0.2.1",
            "initiator": "iqn.1993-08.org.debian:01:abc",
            "multipath": False,
            "wwpns": ["50014380242b9750"],
            "nested": {"deeper": [1, 2.5, None, "ß"]},
        },
        conn_info={
            "driver_volume_type": "iscsi",
            "data": {"target_lun": 0, "target_portals": ["192.0.2.2:3260"], "auth": None},
        },
        device={"path": "/dev/sdb", "type": "block", "scsi_wwn": "36001"},
        attach_mode="ro",
        instance_uuid=new_id(),
        project_id="project",
        user_id="user",
        created_at=T0,
        updated_at=T0 + timedelta(seconds=1),
    )


# -- one description per resource kind, for the tests they all share -------


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable[[], Any]
    set: Callable[[PersistenceStore, Any], Awaitable[Any]]
    get: Callable[[PersistenceStore, str], Awaitable[list[Any]]]
    delete: Callable[[PersistenceStore, str], Awaitable[None]]
    not_found: type[NotFound]


KINDS = [
    Kind(
        "volume",
        volume,
        lambda s, r: s.set_volume(r),
        lambda s, i: s.get_volumes(volume_id=i),
        lambda s, i: s.delete_volume(i),
        VolumeNotFound,
    ),
    Kind(
        "snapshot",
        lambda: snapshot(new_id()),
        lambda s, r: s.set_snapshot(r),
        lambda s, i: s.get_snapshots(snapshot_id=i),
        lambda s, i: s.delete_snapshot(i),
        SnapshotNotFound,
    ),
    Kind(
        "connection",
        lambda: connection(new_id()),
        lambda s, r: s.set_connection(r),
        lambda s, i: s.get_connections(connection_id=i),
        lambda s, i: s.delete_connection(i),
        ConnectionNotFound,
    ),
]
kinds = pytest.mark.parametrize("kind", [pytest.param(k, id=k.name) for k in KINDS])


def ids(records: Collection[Any]) -> list[str]:
    return [r.id for r in records]


# -- writes: insert, compare-and-swap, delete ------------------------------


@kinds
async def test_insert_sets_version_1_and_keeps_everything_else(
    store: PersistenceStore, kind: Kind
) -> None:
    record = kind.make()
    stored = await kind.set(store, record)
    assert stored == record.replace(version=1)
    assert stored.updated_at is None
    assert await kind.get(store, record.id) == [stored]


@kinds
async def test_update_bumps_version_and_sets_updated_at(
    store: PersistenceStore, kind: Kind
) -> None:
    first = await kind.set(store, kind.make())
    before = datetime.now(UTC)
    second = await kind.set(store, first.replace(status="error"))
    assert second.version == 2
    assert second.status == "error"
    assert second.updated_at is not None
    assert before <= second.updated_at <= datetime.now(UTC)
    assert second == first.replace(status="error", version=2, updated_at=second.updated_at)
    third = await kind.set(store, second)
    assert third.version == 3
    assert third.updated_at >= second.updated_at
    assert await kind.get(store, first.id) == [third]


@kinds
async def test_stale_update_raises_conflict_and_changes_nothing(
    store: PersistenceStore, kind: Kind
) -> None:
    first = await kind.set(store, kind.make())
    second = await kind.set(store, first.replace(status="error"))
    with pytest.raises(ConflictError) as caught:
        await kind.set(store, first.replace(status="deleting"))
    assert caught.value.resource.id == first.id
    assert await kind.get(store, first.id) == [second]
    with pytest.raises(ConflictError):  # a version from the future is stale too
        await kind.set(store, second.replace(version=7))
    assert await kind.get(store, first.id) == [second]


@kinds
async def test_concurrent_updates_from_one_version_one_wins(
    store: PersistenceStore, kind: Kind
) -> None:
    base = await kind.set(store, kind.make())
    results = await asyncio.gather(
        *(kind.set(store, base.replace(status=s)) for s in ("error", "deleting", "available")),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, ConflictError) for r in results if r not in winners)
    assert await kind.get(store, base.id) == winners


@kinds
async def test_duplicate_insert_raises_already_exists_and_changes_nothing(
    store: PersistenceStore, kind: Kind
) -> None:
    stored = await kind.set(store, kind.make())
    with pytest.raises(AlreadyExists) as caught:
        await kind.set(store, stored.replace(version=0, status="error"))
    assert isinstance(caught.value, InvalidArgument)
    assert await kind.get(store, stored.id) == [stored]


@kinds
async def test_update_of_deleted_row_raises_not_found(store: PersistenceStore, kind: Kind) -> None:
    stored = await kind.set(store, kind.make())
    await kind.delete(store, stored.id)
    with pytest.raises(kind.not_found):
        await kind.set(store, stored.replace(status="error"))
    assert await kind.get(store, stored.id) == []


@kinds
async def test_update_of_never_stored_row_raises_not_found(
    store: PersistenceStore, kind: Kind
) -> None:
    with pytest.raises(kind.not_found):
        await kind.set(store, kind.make().replace(version=3))


@kinds
async def test_negative_version_is_refused(store: PersistenceStore, kind: Kind) -> None:
    stored = await kind.set(store, kind.make())
    with pytest.raises(InvalidArgument):
        await kind.set(store, stored.replace(version=-1, status="error"))
    assert await kind.get(store, stored.id) == [stored]


@kinds
async def test_delete_is_idempotent_and_touches_only_its_row(
    store: PersistenceStore, kind: Kind
) -> None:
    keep = await kind.set(store, kind.make())
    gone = await kind.set(store, kind.make())
    await kind.delete(store, gone.id)
    await kind.delete(store, gone.id)
    await kind.delete(store, new_id())
    await kind.delete(store, HOSTILE)
    assert await kind.get(store, gone.id) == []
    assert await kind.get(store, keep.id) == [keep]


@kinds
async def test_reinsert_after_delete_starts_at_version_1(
    store: PersistenceStore, kind: Kind
) -> None:
    stored = await kind.set(store, kind.make())
    await kind.delete(store, stored.id)
    again = await kind.set(store, stored.replace(version=0))
    assert again.version == 1


# -- volumes ---------------------------------------------------------------


async def test_volume_round_trip_keeps_every_field(store: PersistenceStore) -> None:
    record = full_volume()
    stored = await store.set_volume(record)
    assert stored == record.replace(version=1)
    (loaded,) = await store.get_volumes(volume_id=record.id)
    assert loaded == stored
    assert loaded.to_dict() == stored.to_dict()
    assert loaded.created_at.tzinfo is not None


async def test_get_volumes_by_each_filter(store: PersistenceStore) -> None:
    a = await store.set_volume(volume(name="a", backend_name="lvm", created_at=T0))
    b = await store.set_volume(volume(name="b", backend_name="lvm", created_at=T0 + timedelta(1)))
    a2 = await store.set_volume(volume(name="a", backend_name="ceph", created_at=T0 + timedelta(2)))
    assert await store.get_volumes() == [a, b, a2]
    assert await store.get_volumes(volume_id=b.id) == [b]
    assert await store.get_volumes(volume_name="a") == [a, a2]
    assert await store.get_volumes(backend_name="lvm") == [a, b]
    assert await store.get_volumes(volume_name="a", backend_name="ceph") == [a2]
    assert await store.get_volumes(volume_id=a.id, backend_name="ceph") == []
    assert await store.get_volumes(volume_id=new_id()) == []
    assert await store.get_volumes(volume_name="missing") == []


async def test_get_volumes_orders_by_created_at_then_id(store: PersistenceStore) -> None:
    later = volume(id="a", created_at=T0 + timedelta(seconds=1))
    tie_b = volume(id="c", created_at=T0)
    tie_a = volume(id="b", created_at=T0)
    earliest = volume(id="z", created_at=T0 - timedelta(microseconds=1))
    other_zone = volume(id="y", created_at=(T0 + timedelta(microseconds=1)).astimezone())
    for record in (later, tie_b, tie_a, earliest, other_zone):
        await store.set_volume(record)
    assert ids(await store.get_volumes()) == ["z", "b", "c", "y", "a"]


async def test_get_volumes_by_ids(store: PersistenceStore) -> None:
    records = [await store.set_volume(volume(created_at=T0 - timedelta(i))) for i in range(5)]
    wanted = [records[0].id, new_id(), records[3].id, records[0].id, records[1].id]
    found = await store.get_volumes_by_ids(wanted)
    assert found == [records[3], records[1], records[0]]
    assert await store.get_volumes_by_ids(set(wanted)) == found
    assert await store.get_volumes_by_ids([]) == []
    assert await store.get_volumes_by_ids([new_id(), HOSTILE]) == []
    with pytest.raises(InvalidArgument):
        await store.get_volumes_by_ids(records[0].id)


async def test_get_volumes_by_many_ids_in_one_call(store: PersistenceStore) -> None:
    stored = [await store.set_volume(volume(id=f"v{i:05d}", created_at=T0)) for i in range(50)]
    wanted = [new_id() for _ in range(2000)] + [r.id for r in stored]
    assert await store.get_volumes_by_ids(wanted) == stored


@pytest.mark.parametrize("name", ODD_NAMES)
async def test_odd_strings_are_stored_verbatim(store: PersistenceStore, name: str) -> None:
    record = await store.set_volume(
        volume(id=name or "empty", name=name, backend_name=name, metadata={name: name})
    )
    assert await store.get_volumes(volume_name=name) == [record]
    assert await store.get_volumes(backend_name=name) == [record]
    assert await store.get_volumes(volume_id=record.id) == [record]
    assert await store.get_volumes_by_ids([record.id]) == [record]
    assert [v async for v in store.iter_volumes(name, volume_name=name)] == [record]
    snap = await store.set_snapshot(snapshot(record.id, name=name, backend_name=name))
    assert await store.get_snapshots(snapshot_name=name, volume_id=record.id) == [snap]
    assert await store.get_snapshots_by_volume_ids([record.id]) == [snap]
    await store.set_key_value(KeyValue(name, name))
    assert await store.get_key_values(name) == [KeyValue(name, name)]
    assert await store.get_volumes() == [record]  # the table is still there


async def test_volumes_named_alike_are_not_matched_by_pattern(store: PersistenceStore) -> None:
    await store.set_volume(volume(name="abc"))
    assert await store.get_volumes(volume_name="a%") == []
    assert await store.get_volumes(volume_name="ABC") == []


# -- iter_volumes ----------------------------------------------------------


async def collect(store: PersistenceStore, **kwargs: Any) -> list[VolumeRecord]:
    return [v async for v in store.iter_volumes(**kwargs)]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 10, 11, 500])
async def test_iter_volumes_crosses_page_boundaries(
    store: PersistenceStore, batch_size: int
) -> None:
    # Three volumes share each timestamp, so pages split inside ties.
    expected = []
    for i in range(10):
        expected.append(
            await store.set_volume(volume(id=f"v{i:02d}", created_at=T0 + timedelta(i // 3)))
        )
    await store.set_volume(volume(id="late-but-first-id", created_at=T0 + timedelta(days=9)))
    expected.append((await store.get_volumes(volume_id="late-but-first-id"))[0])
    assert await collect(store, batch_size=batch_size) == expected
    assert await store.get_volumes() == expected


async def test_iter_volumes_filters(store: PersistenceStore) -> None:
    made = []
    for i in range(12):
        made.append(
            await store.set_volume(
                volume(
                    id=f"v{i:02d}",
                    backend_name=("lvm", "ceph")[i % 2],
                    status=("available", "error", "in-use")[i % 3],
                    name=f"n{i % 4}",
                    created_at=T0,
                )
            )
        )
    for batch_size in (1, 2, 5, 100):
        assert await collect(store, backend_name="lvm", batch_size=batch_size) == made[::2]
        assert await collect(store, status="error", batch_size=batch_size) == made[1::3]
        assert await collect(store, volume_name="n1", batch_size=batch_size) == made[1::4]
        assert await collect(
            store, backend_name="ceph", status="available", batch_size=batch_size
        ) == [made[3], made[9]]
        assert await collect(
            store, backend_name="lvm", status="error", volume_name="n0", batch_size=batch_size
        ) == [made[4]]
    assert await collect(store, backend_name="nfs") == []


async def test_iter_volumes_on_empty_store(store: PersistenceStore) -> None:
    assert await collect(store, batch_size=1) == []


async def test_iter_volumes_sees_changes_between_pages(store: PersistenceStore) -> None:
    records = [
        await store.set_volume(volume(id=f"v{i}", created_at=T0 + timedelta(i))) for i in range(6)
    ]
    seen = []
    async for record in store.iter_volumes(batch_size=2):
        seen.append(record.id)
        if record.id == "v1":
            await store.delete_volume("v4")
            await store.set_volume(volume(id="v9", created_at=T0 + timedelta(days=99)))
    assert seen == ["v0", "v1", "v2", "v3", "v5", "v9"]
    assert len(records) == 6


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "10"])
async def test_iter_volumes_refuses_bad_batch_size(
    store: PersistenceStore, batch_size: Any
) -> None:
    with pytest.raises(InvalidArgument):
        store.iter_volumes(batch_size=batch_size)


# -- snapshots -------------------------------------------------------------


async def test_snapshot_round_trip_keeps_every_field(store: PersistenceStore) -> None:
    record = full_snapshot(new_id())
    stored = await store.set_snapshot(record)
    assert stored == record.replace(version=1)
    assert await store.get_snapshots(snapshot_id=record.id) == [stored]


async def test_get_snapshots_by_each_filter(store: PersistenceStore) -> None:
    v1, v2 = new_id(), new_id()
    s1 = await store.set_snapshot(snapshot(v1, name="s", created_at=T0))
    s2 = await store.set_snapshot(snapshot(v1, name="t", backend_name="ceph", created_at=T0))
    s3 = await store.set_snapshot(snapshot(v2, name="s", created_at=T0 - timedelta(1)))
    assert await store.get_snapshots() == [s3, *sorted([s1, s2], key=lambda s: s.id)]
    assert await store.get_snapshots(snapshot_id=s2.id) == [s2]
    assert await store.get_snapshots(snapshot_name="s") == [s3, s1]
    assert await store.get_snapshots(volume_id=v1) == sorted([s1, s2], key=lambda s: s.id)
    assert await store.get_snapshots(backend_name="ceph") == [s2]
    assert await store.get_snapshots(snapshot_name="s", volume_id=v2, backend_name="lvm") == [s3]
    assert await store.get_snapshots(snapshot_name="s", backend_name="ceph") == []
    assert await store.get_snapshots(volume_id=new_id()) == []


async def test_get_snapshots_by_volume_ids(store: PersistenceStore) -> None:
    v1, v2, v3 = new_id(), new_id(), new_id()
    s1 = await store.set_snapshot(snapshot(v1, created_at=T0 + timedelta(2)))
    s2 = await store.set_snapshot(snapshot(v2, created_at=T0 + timedelta(1)))
    s3 = await store.set_snapshot(snapshot(v1, created_at=T0))
    await store.set_snapshot(snapshot(v3))
    assert await store.get_snapshots_by_volume_ids([v1, v2, new_id(), v1]) == [s3, s2, s1]
    assert await store.get_snapshots_by_volume_ids([]) == []
    assert await store.get_snapshots_by_volume_ids([new_id()]) == []
    with pytest.raises(InvalidArgument):
        await store.get_snapshots_by_volume_ids(v1)


# -- connections -----------------------------------------------------------


async def test_connection_round_trip_keeps_nested_mappings(store: PersistenceStore) -> None:
    record = full_connection(new_id())
    stored = await store.set_connection(record)
    assert stored == record.replace(version=1)
    (loaded,) = await store.get_connections(connection_id=record.id)
    assert loaded == stored
    assert loaded.connector_info["nested"] == {"deeper": [1, 2.5, None, "ß"]}
    assert loaded.protocol == "iscsi"
    assert loaded.path == "/dev/sdb"


async def test_get_connections_by_each_filter(store: PersistenceStore) -> None:
    v1, v2 = new_id(), new_id()
    c1 = await store.set_connection(connection(v1, created_at=T0))
    c2 = await store.set_connection(
        connection(v1, backend_name="ceph", created_at=T0 + timedelta(1))
    )
    c3 = await store.set_connection(connection(v2, created_at=T0 - timedelta(1)))
    assert await store.get_connections() == [c3, c1, c2]
    assert await store.get_connections(connection_id=c2.id) == [c2]
    assert await store.get_connections(volume_id=v1) == [c1, c2]
    assert await store.get_connections(backend_name="lvm") == [c3, c1]
    assert await store.get_connections(volume_id=v1, backend_name="ceph") == [c2]
    assert await store.get_connections(connection_id=c1.id, volume_id=v2) == []


async def test_get_connections_by_volume_ids(store: PersistenceStore) -> None:
    v1, v2 = new_id(), new_id()
    c1 = await store.set_connection(connection(v1, created_at=T0 + timedelta(1)))
    c2 = await store.set_connection(connection(v2, created_at=T0))
    await store.set_connection(connection(new_id()))
    assert await store.get_connections_by_volume_ids((v1, v2)) == [c2, c1]
    assert await store.get_connections_by_volume_ids({v1}) == [c1]
    assert await store.get_connections_by_volume_ids([]) == []
    with pytest.raises(InvalidArgument):
        await store.get_connections_by_volume_ids(v1)


@pytest.mark.parametrize("kind", ["snapshots", "connections"])
async def test_lists_by_volume_follow_updates_and_deletes(
    store: PersistenceStore, kind: str
) -> None:
    methods: dict[str, tuple[Any, ...]] = {
        "snapshots": (snapshot, store.set_snapshot, store.get_snapshots,
                      store.get_snapshots_by_volume_ids, store.delete_snapshot),
        "connections": (connection, store.set_connection, store.get_connections,
                        store.get_connections_by_volume_ids, store.delete_connection),
    }
    make, put, get, by_ids, delete = methods[kind]
    v1, v2 = new_id(), new_id()
    first = await put(make(v1, created_at=T0))
    moved = await put(first.replace(volume_id=v2))
    assert await get(volume_id=v1) == [] and await get(volume_id=v2) == [moved]
    assert await by_ids([v1, v2]) == [moved]
    await delete(moved.id)
    assert await get(volume_id=v2) == [] and await by_ids([v1, v2]) == []
    again = await put(make(v2, created_at=T0))
    assert await get(volume_id=v2) == [again]


# -- big reads: many rows, without holding the event loop -------------------

#: Volumes in the big reads (a couple of dozen chunks of DECODE_CHUNK rows), and
#: snapshots and connections (a few chunks: they share the code of volumes).
BIG = 3000
BIG_CHILDREN = 1000


@dataclass
class Ticker:
    """A task that counts its own turns of the event loop, and the longest
    stretch of records decoded between two of its turns (each record class's
    ``from_stored``, the stores' decoder, is wrapped to count)."""

    ticks: int = 0
    decoded: int = 0
    longest_stretch: int = 0
    _seen: int = 0

    def count(self, build: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def counting(data: Any) -> Any:
            self.decoded += 1
            return build(data)

        return counting

    def tick(self) -> None:
        self.ticks += 1
        self.longest_stretch = max(self.longest_stretch, self.decoded - self._seen)
        self._seen = self.decoded

    async def during(self, read: Awaitable[list[Any]]) -> list[Any]:
        """Await ``read`` with the ticker running beside it (counts reset first)."""
        self.ticks = self.decoded = self.longest_stretch = self._seen = 0

        async def run() -> None:
            while True:
                self.tick()
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(run())
        try:
            return await read
        finally:
            self.tick()  # the stretch since the ticker's last turn; not a turn itself
            self.ticks -= 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
def ticker(monkeypatch: pytest.MonkeyPatch) -> Ticker:
    counter = Ticker()
    for cls in (VolumeRecord, SnapshotRecord, ConnectionRecord):
        monkeypatch.setattr(cls, "from_stored", staticmethod(counter.count(cls.from_stored)))
    return counter


async def store_all(store: PersistenceStore, records: list[Any]) -> list[Any]:
    """Store ``records`` (50 writes at a time), returned in store order."""
    setters = {
        VolumeRecord: store.set_volume,
        SnapshotRecord: store.set_snapshot,
        ConnectionRecord: store.set_connection,
    }
    stored: list[Any] = []
    # The loop's debug mode (the suite's default) records a stack for every
    # future, which makes these thousands of writes four times slower; they
    # are not what the test is about.
    loop = asyncio.get_running_loop()
    debug = loop.get_debug()
    loop.set_debug(False)
    try:
        for start in range(0, len(records), 50):
            batch = records[start : start + 50]
            stored += await asyncio.gather(*(setters[type(r)](r) for r in batch))
    finally:
        loop.set_debug(debug)
    return sorted(stored, key=lambda r: (r.created_at, r.id))


async def test_big_reads_give_the_event_loop_a_turn_every_chunk(
    store: PersistenceStore, ticker: Ticker
) -> None:
    # Several rows share each timestamp, so pages split inside ties.
    vols = await store_all(store, [
        volume(backend_name=("lvm", "ceph")[i % 2], created_at=T0 + timedelta(i % 7))
        for i in range(BIG)
    ])  # fmt: skip
    vol_ids = [v.id for v in vols]
    five = vol_ids[:5]
    snaps = await store_all(store, [
        snapshot(five[i % 5], created_at=T0 + timedelta(i % 3)) for i in range(BIG_CHILDREN)
    ])  # fmt: skip
    conns = await store_all(store, [
        connection(five[i % 5], created_at=T0) for i in range(BIG_CHILDREN)
    ])  # fmt: skip
    reads: list[tuple[str, Callable[[], Awaitable[list[Any]]], list[Any]]] = [
        ("get_volumes()", lambda: store.get_volumes(), vols),
        ("get_volumes(backend_name)", lambda: store.get_volumes(backend_name="lvm"),
         [v for v in vols if v.backend_name == "lvm"]),
        ("get_volumes_by_ids", lambda: store.get_volumes_by_ids(vol_ids), vols),
        ("iter_volumes()", lambda: collect(store), vols),
        ("iter_volumes(batch_size=1000)", lambda: collect(store, batch_size=1000), vols),
        ("get_snapshots()", lambda: store.get_snapshots(), snaps),
        ("get_snapshots(volume_id)", lambda: store.get_snapshots(volume_id=five[0]),
         [s for s in snaps if s.volume_id == five[0]]),
        ("get_snapshots_by_volume_ids", lambda: store.get_snapshots_by_volume_ids(five), snaps),
        ("get_connections()", lambda: store.get_connections(), conns),
        ("get_connections_by_volume_ids",
         lambda: store.get_connections_by_volume_ids(vol_ids), conns),
    ]  # fmt: skip
    for name, read, expected in reads:
        assert await ticker.during(read()) == expected, name
        if store.name == "memory":  # it returns the records it keeps: nothing to decode
            assert ticker.decoded == 0, name
            continue
        assert ticker.decoded == len(expected), name
        assert ticker.longest_stretch <= DECODE_CHUNK, name
        assert ticker.ticks >= len(expected) // DECODE_CHUNK, name


# -- key-value store -------------------------------------------------------


async def test_key_values(store: PersistenceStore) -> None:
    assert await store.get_key_values() == []
    assert await store.get_key_values("node-1") == []
    await store.set_key_value(KeyValue("node-2", '{"host": "node-2"}'))
    await store.set_key_value(KeyValue("node-1", "v1"))
    await store.set_key_value(KeyValue("empty"))
    assert await store.get_key_values("node-1") == [KeyValue("node-1", "v1")]
    assert await store.get_key_values("empty") == [KeyValue("empty", None)]
    assert await store.get_key_values() == [
        KeyValue("empty", None),
        KeyValue("node-1", "v1"),
        KeyValue("node-2", '{"host": "node-2"}'),
    ]
    await store.set_key_value(KeyValue("node-1", "v2"))
    assert await store.get_key_values("node-1") == [KeyValue("node-1", "v2")]
    assert len(await store.get_key_values()) == 3
    await store.delete_key_value("node-1")
    await store.delete_key_value("node-1")
    await store.delete_key_value("never")
    assert await store.get_key_values("node-1") == []
    assert [kv.key for kv in await store.get_key_values()] == ["empty", "node-2"]


# -- locks -----------------------------------------------------------------


async def test_a_lock_admits_one_task_at_a_time(store: PersistenceStore) -> None:
    inside, most, done = 0, 0, []

    async def worker(i: int) -> None:
        nonlocal inside, most
        async with store.lock("volume:a"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
            done.append(i)
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(10))), 30)
    assert most == 1
    assert sorted(done) == list(range(10))


async def test_locks_on_other_keys_do_not_wait(store: PersistenceStore) -> None:
    async with store.lock("volume:a"):
        assert not await take_lock(store, "volume:a", within=0.2), "held: must wait"
        assert await take_lock(store, "volume:b", within=10)
        assert await take_lock(store, HOSTILE, within=10)
    assert await take_lock(store, "volume:a", within=10)


async def test_a_cancelled_waiter_leaves_the_lock_free(store: PersistenceStore) -> None:
    held, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with store.lock("volume:a"):
            held.set()
            await release.wait()

    async def waiter() -> None:
        async with store.lock("volume:a"):
            raise AssertionError("the waiter got the lock while it was held")

    holding = asyncio.create_task(holder())
    await held.wait()
    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await holding
    assert await take_lock(store, "volume:a", within=10)


async def test_a_lock_is_let_go_when_its_block_raises(store: PersistenceStore) -> None:
    with pytest.raises(KeyError):
        async with store.lock("volume:a"):
            raise KeyError("boom")
    assert await take_lock(store, "volume:a", within=10)


async def test_a_lock_key_must_be_a_str(store: PersistenceStore) -> None:
    with pytest.raises(InvalidArgument):
        store.lock(42)  # type: ignore[arg-type]


# -- lifecycle -------------------------------------------------------------


async def test_open_is_idempotent(store: PersistenceStore) -> None:
    stored = await store.set_volume(volume())
    await store.open()
    assert await store.get_volumes() == [stored]


CALLS: list[Callable[[PersistenceStore], Awaitable[Any]]] = [
    lambda s: s.get_volumes(),
    lambda s: s.get_volumes_by_ids(["x"]),
    lambda s: s.set_volume(volume()),
    lambda s: s.delete_volume("x"),
    lambda s: s.get_snapshots(),
    lambda s: s.get_snapshots_by_volume_ids(["x"]),
    lambda s: s.set_snapshot(snapshot("x")),
    lambda s: s.delete_snapshot("x"),
    lambda s: s.get_connections(),
    lambda s: s.get_connections_by_volume_ids(["x"]),
    lambda s: s.set_connection(connection("x")),
    lambda s: s.delete_connection("x"),
    lambda s: s.get_key_values(),
    lambda s: s.set_key_value(KeyValue("k", "v")),
    lambda s: s.delete_key_value("k"),
    lambda s: take_lock(s, "k"),
]


async def test_use_after_close_raises_usage_error_naming_the_method(
    store: PersistenceStore,
) -> None:
    await store.close()
    await store.close()
    for call in CALLS:
        with pytest.raises(UsageError, match=r"\.\w+\(\) called after close\(\)"):
            await call(store)
    with pytest.raises(UsageError, match=r"iter_volumes\(\) called after close\(\)"):
        store.iter_volumes()
    with pytest.raises(UsageError, match=r"get_volumes\(\) called after close\(\)"):
        await store.get_volumes()
    with pytest.raises(UsageError):
        await store.open()


async def test_iteration_stops_with_usage_error_when_closed_midway(
    store: PersistenceStore,
) -> None:
    for i in range(4):
        await store.set_volume(volume(id=f"v{i}", created_at=T0))
    seen = []

    async def consume() -> None:
        async for record in store.iter_volumes(batch_size=2):
            seen.append(record.id)
            if len(seen) == 2:
                await store.close()

    with pytest.raises(UsageError):
        await consume()
    assert seen == ["v0", "v1"]
