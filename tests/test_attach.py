"""Attaching and detaching on this host through os-brick, for real.

The FileDriver answers os-brick's LOCAL protocol, so every attach here runs
os-brick's real LocalConnector (connect_volume, check_valid_device, which
reads the device with ``dd``, and disconnect_volume) in worker threads; no
os-brick code is mocked.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import LOOP_LAGS
from support import ArrayFault, LagMonitor, ScriptedFileDriver

import aiocinder
from aiocinder.connectors import DeviceUnavailable
from aiocinder.persistence import PersistenceStore
from aiocinder.records import VolumeRecord

GiB = 1 << 30
pytestmark = pytest.mark.asyncio


class UnreadableDeviceDriver(ScriptedFileDriver):
    """Connects to a device path that does not exist: os-brick's device check fails."""

    def initialize_connection(self, volume: VolumeRecord, connector: Any) -> dict[str, Any]:
        info = super().initialize_connection(volume, connector)
        info["data"]["device_path"] = str(self.volumes_dir / f"missing-{volume.id}")
        return info


class NoDevicePathDriver(ScriptedFileDriver):
    """Answers LOCAL without a device path: os-brick's connect_volume raises."""

    def initialize_connection(self, volume: VolumeRecord, connector: Any) -> dict[str, Any]:
        info = super().initialize_connection(volume, connector)
        del info["data"]["device_path"]
        return info


class ISCSIInfoDriver(ScriptedFileDriver):
    """Answers with iSCSI connection info (a target this machine does not have)."""

    def initialize_connection(self, volume: VolumeRecord, connector: Any) -> dict[str, Any]:
        return {
            "driver_volume_type": "iscsi",
            "data": {
                "target_portal": "192.0.2.50:3260",
                "target_iqn": f"iqn.2010-10.org.openstack:volume-{volume.id}",
                "target_lun": 1,
                "target_discovered": False,
                "access_mode": "rw",
            },
        }


def volume_file(backend: aiocinder.Backend, volume_id: str) -> Path:
    return Path(backend.config["volumes_dir"]) / f"volume-{volume_id}"


def write_at(path: str | Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_at(path: str | Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def comparable(record: Any) -> dict[str, Any]:
    """A record without what every write changes (its version and updated_at)."""
    data: dict[str, Any] = record.to_dict()
    data.pop("version")
    data.pop("updated_at")
    return data


async def snapshot_state(store: PersistenceStore, files: Path) -> tuple[Any, ...]:
    return (
        sorted((comparable(r) for r in await store.get_volumes()), key=lambda d: d["id"]),
        [comparable(r) for r in await store.get_snapshots()],
        [comparable(r) for r in await store.get_connections()],
        sorted((p.name, p.stat().st_size) for p in files.iterdir()),
    )


async def other_backend(tmp_path: Path, driver: type[ScriptedFileDriver],
                        **options: Any) -> aiocinder.Backend:
    return await aiocinder.Backend(
        f"b-{driver.__name__.lower()}", volume_driver=driver,
        volumes_dir=str(tmp_path / driver.__name__), **options,
    )


# -- the data path -------------------------------------------------------------------


async def test_attach_write_detach_then_copies_read_the_same_bytes(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await backend.create_volume(1, name="data")
    path = volume_file(backend, vol.id)
    payload = os.urandom(4096)

    conn = await vol.attach()
    assert conn.path == str(path)
    assert conn.protocol == "local" and conn.connected and conn.attached
    assert conn.device == {"type": "local", "path": str(path)}
    assert conn.connector_info["host"] == "testhost"
    assert (conn.attach_mode, conn.conn_info["data"]["access_mode"]) == ("rw", "rw")
    assert vol.status == "in-use" and vol.local_attach is conn
    assert (await aiocinder.Volume.get_by_id(vol.id)).local_attach is conn
    (stored,) = await lib.get_connections(volume_id=vol.id)
    assert (stored.status, stored.device) == ("attached", conn.device)

    await anyio.to_thread.run_sync(write_at, conn.path, 3 * 4096, payload)
    assert read_at(path, 3 * 4096, 4096) == payload  # it landed in the volume's file

    await vol.detach()
    assert vol.local_attach is None and conn.status == "detached"
    assert (await aiocinder.Volume.get_by_id(vol.id)).local_attach is None
    assert await lib.get_connections(volume_id=vol.id) == []
    assert vol.status == "available"
    assert [v.status for v in await lib.get_volumes(volume_id=vol.id)] == ["available"]

    clone = await vol.clone(name="copy")
    snap = await vol.create_snapshot(name="s")
    from_snap = await snap.create_volume(size=2)
    for copy in (clone, from_snap):
        attached = await copy.attach()
        assert attached.path == str(volume_file(backend, copy.id))
        data = await anyio.to_thread.run_sync(read_at, attached.path, 3 * 4096, 4096)
        assert data == payload
        await copy.detach()
        assert copy.status == "available" and copy.local_attach is None
    assert await lib.get_connections() == []


async def test_extend_while_attached_shows_through_the_path(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await backend.create_volume(1)
    conn = await vol.attach()
    assert conn.path is not None
    await anyio.to_thread.run_sync(write_at, conn.path, GiB - 5, b"edge!")

    await vol.extend(3)  # the driver grows the file, then the host is rescanned
    assert (vol.size, vol.status) == (3, "in-use")
    assert os.stat(conn.path).st_size == 3 * GiB
    assert await conn.extend() == 3 * GiB  # LOCAL: nothing to rescan, the size is read
    await anyio.to_thread.run_sync(write_at, conn.path, 3 * GiB - 4, b"tail")
    assert read_at(conn.path, GiB - 5, 5) == b"edge!"
    (stored,) = await lib.get_volumes(volume_id=vol.id)
    assert (stored.size, stored.status) == (3, "in-use")
    await vol.detach()
    assert read_at(volume_file(backend, vol.id), 3 * GiB - 4, 4) == b"tail"


async def test_attach_is_idempotent_and_reuses_the_host_connection(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await backend.create_volume(1)
    props = await aiocinder.get_connector_properties()
    connected = await vol.connect(props)
    assert not connected.attached
    attached = await vol.attach()
    assert attached.id == connected.id and attached is connected
    assert await vol.attach() is attached
    assert len(await lib.get_connections(volume_id=vol.id)) == 1
    driver = backend.driver
    assert isinstance(driver, ScriptedFileDriver)
    assert driver.calls["initialize_connection"] == 1  # reused, not refreshed
    await vol.detach()
    assert await lib.get_connections(volume_id=vol.id) == []


async def test_connection_attach_and_detach_are_the_local_half(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await backend.create_volume(1)
    conn = await vol.connect(await aiocinder.get_connector_properties())
    assert conn.path is None and vol.local_attach is None

    assert await conn.attach() is conn
    assert conn.path == str(volume_file(backend, vol.id)) and vol.local_attach is conn
    assert await conn.attach() is conn  # attached already: nothing to do
    (stored,) = await lib.get_connections(volume_id=vol.id)
    assert stored.device == conn.device and stored.status == "attached"

    await conn.detach()
    assert conn.device is None and conn.path is None and not conn.attached
    assert conn.connected and conn.status == "attached"  # still exported and mapped
    assert vol.local_attach is None and vol.status == "in-use"
    (stored,) = await lib.get_connections(volume_id=vol.id)
    assert (stored.device, stored.status) == (None, "attached")
    await conn.detach()  # nothing attached: nothing to do

    with pytest.raises(aiocinder.InvalidVolume, match="not attached"):
        await vol.detach()
    await conn.disconnect()
    assert vol.status == "available"


async def test_a_second_handle_detaches_what_the_first_attached(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await backend.create_volume(1)
    conn = await vol.attach()
    other = await aiocinder.Connection.get_by_id(conn.id)
    assert other is not conn and other.attached
    await other.detach()
    assert vol.local_attach is None
    assert other.device is None and conn.device is None


async def test_disconnect_detaches_locally_first(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await backend.create_volume(1)
    conn = await vol.attach()
    await conn.disconnect()
    assert vol.local_attach is None and vol.status == "available"
    assert await lib.get_connections() == []


async def test_device_attached_records_a_device_attached_elsewhere(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await backend.create_volume(1)
    conn = await vol.connect({"host": "node-7", "ip": "192.0.2.7"})
    device = {"type": "block", "path": "/dev/sdx", "scsi_wwn": "3600"}
    await conn.device_attached(device)
    assert conn.device == device and conn.path == "/dev/sdx" and conn.attached
    assert vol.local_attach is None  # attached elsewhere, not here
    (stored,) = await lib.get_connections(volume_id=vol.id)
    assert stored.device == device
    for bad in ("/dev/sdx", {"path": object()}, {}):
        with pytest.raises(aiocinder.InvalidArgument):
            await conn.device_attached(bad)  # type: ignore[arg-type]
    (stored,) = await lib.get_connections(volume_id=vol.id)
    assert stored.device == device


async def test_cleanup_detaches_and_disconnects_this_host_only(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await backend.create_volume(1)
    attached = await vol.attach()
    props = dict(attached.connector_info)
    # a second connection for this host, attached by a process that is gone
    orphan = await vol.connect(props, new=True)
    await orphan.device_attached({"type": "local", "path": attached.path})
    remote = await vol.connect({"host": "node-2", "ip": "192.0.2.2"})
    assert len(await lib.get_connections(volume_id=vol.id)) == 3

    await vol.cleanup()
    assert vol.local_attach is None
    assert [c.id for c in await lib.get_connections(volume_id=vol.id)] == [remote.id]
    assert vol.status == "in-use"  # node-2 still has it
    await remote.disconnect()
    assert vol.status == "available"
    await vol.cleanup()  # nothing left: nothing to do


# -- connect is idempotent per host ----------------------------------------------------


async def test_connect_is_idempotent_per_host_unless_new(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await backend.create_volume(1)
    first = await vol.connect({"host": "node-1", "ip": "192.0.2.1"})
    again = await vol.connect({"host": "node-1", "ip": "192.0.2.99"})
    assert again.id == first.id and again.connector_info["ip"] == "192.0.2.1"
    another = await vol.connect({"host": "node-1"}, new=True)
    assert another.id != first.id
    hostless = [await vol.connect({"ip": "192.0.2.3"}) for _ in range(2)]
    assert hostless[0].id != hostless[1].id
    assert len(await lib.get_connections(volume_id=vol.id)) == 4

    before = await lib.get_connections(volume_id=vol.id)
    with pytest.raises(aiocinder.InvalidVolume, match="new=True"):
        await vol.connect({"host": "node-1"}, attach_mode="ro")
    with pytest.raises(aiocinder.InvalidArgument, match="new"):
        await vol.connect({"host": "node-1"}, new="yes")  # type: ignore[arg-type]
    assert await lib.get_connections(volume_id=vol.id) == before

    ro = await vol.connect({"host": "node-2"}, attach_mode="ro")
    assert (ro.attach_mode, ro.conn_info["data"]["access_mode"]) == ("ro", "ro")
    assert (await vol.connect({"host": "node-2"}, attach_mode="ro")).id == ro.id


async def test_concurrent_connects_for_one_host_make_one_connection(
    backend: aiocinder.Backend, lib: PersistenceStore
) -> None:
    vol = await backend.create_volume(1)
    found = await asyncio.gather(*(vol.connect({"host": "node-1"}) for _ in range(8)))
    assert len({c.id for c in found}) == 1
    assert len(await lib.get_connections(volume_id=vol.id)) == 1


# -- failures roll back ------------------------------------------------------------------


async def test_attach_rolls_back_when_initialize_connection_fails(
    lib: PersistenceStore, tmp_path: Path
) -> None:
    backend = await other_backend(tmp_path, ScriptedFileDriver, fail={"initialize_connection"})
    vol = await backend.create_volume(1)
    write_at(volume_file(backend, vol.id), 0, b"keep me")
    before = await snapshot_state(lib, tmp_path / "ScriptedFileDriver")
    loaded = await vol.connections()

    with pytest.raises(aiocinder.DriverError) as info:
        await vol.attach()
    assert info.value.resource is vol
    assert isinstance(info.value.__cause__, ArrayFault)
    assert await snapshot_state(lib, tmp_path / "ScriptedFileDriver") == before
    assert [r.version for r in await lib.get_volumes()] == [vol.record.version]
    assert vol.status == "available" and vol.local_attach is None
    assert await vol.connections() == loaded == []
    assert read_at(volume_file(backend, vol.id), 0, 7) == b"keep me"


@pytest.mark.parametrize(
    ("driver", "step", "cause"),
    [
        (UnreadableDeviceDriver, "the device check", DeviceUnavailable),
        (NoDevicePathDriver, "os-brick connect_volume", ValueError),
    ],
)
async def test_attach_rolls_back_when_the_local_step_fails(
    lib: PersistenceStore, tmp_path: Path, driver: type[ScriptedFileDriver], step: str,
    cause: type[Exception],
) -> None:
    backend = await other_backend(tmp_path, driver)
    keep = await backend.create_volume(1, name="other")
    await keep.connect({"host": "node-9"})  # another volume's connection stays as it is
    vol = await backend.create_volume(1, name="target")
    write_at(volume_file(backend, vol.id), 512, b"intact")
    files = tmp_path / driver.__name__
    before = await snapshot_state(lib, files)

    with pytest.raises(aiocinder.AttachError) as info:
        await vol.attach()
    error = info.value
    assert isinstance(error, aiocinder.DriverError)
    assert error.resource is vol and isinstance(error.__cause__, cause)
    assert step in str(error) and vol.id in str(error)

    assert await snapshot_state(lib, files) == before
    assert vol.status == "available" and vol.local_attach is None
    assert await vol.connections() == []
    assert read_at(volume_file(backend, vol.id), 512, 6) == b"intact"
    calls = backend.driver.calls  # type: ignore[attr-defined]
    assert calls["initialize_connection"] == calls["terminate_connection"] + 1  # keep's


async def test_failed_attach_keeps_a_connection_that_was_there(
    lib: PersistenceStore, tmp_path: Path
) -> None:
    backend = await other_backend(tmp_path, UnreadableDeviceDriver)
    vol = await backend.create_volume(1)
    conn = await vol.connect(await aiocinder.get_connector_properties())
    before = await snapshot_state(lib, tmp_path / "UnreadableDeviceDriver")
    with pytest.raises(aiocinder.AttachError, match="device check") as info:
        await vol.attach()
    assert info.value.resource is vol
    assert await snapshot_state(lib, tmp_path / "UnreadableDeviceDriver") == before
    with pytest.raises(aiocinder.AttachError, match="device check") as info:
        await conn.attach()
    assert info.value.resource is conn
    assert (conn.status, conn.device, vol.status) == ("attached", None, "in-use")
    assert await snapshot_state(lib, tmp_path / "UnreadableDeviceDriver") == before


async def test_refused_attach_and_detach_change_nothing(
    backend: aiocinder.Backend, lib: PersistenceStore, tmp_path: Path
) -> None:
    vol = await backend.create_volume(1)
    before = await snapshot_state(lib, tmp_path / "volumes")
    with pytest.raises(aiocinder.InvalidVolume):
        await vol.detach()
    conn = await vol.connect({"host": "elsewhere"})
    with pytest.raises(aiocinder.InvalidConnection, match="no device"):
        await conn.extend()
    await conn.disconnect()
    assert await snapshot_state(lib, tmp_path / "volumes") == before


# -- operations: statuses, cancellation, the event loop ---------------------------------


async def test_cancelled_attach_still_finishes_its_bookkeeping(
    lib: PersistenceStore, tmp_path: Path
) -> None:
    gate = threading.Event()
    gate.set()
    backend = await other_backend(tmp_path, ScriptedFileDriver, gate=gate)
    vol = await backend.create_volume(1)
    driver = backend.driver
    assert isinstance(driver, ScriptedFileDriver)
    gate.clear()
    driver.started.clear()
    task = asyncio.ensure_future(vol.attach())
    await anyio.to_thread.run_sync(driver.started.wait, 10)
    (record,) = await lib.get_connections(volume_id=vol.id)
    assert record.status == "attaching"  # stored before the driver ran
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    with anyio.fail_after(10):
        while backend.statistics().operations:
            await asyncio.sleep(0.01)
    (record,) = await lib.get_connections(volume_id=vol.id)
    assert record.status == "attached" and record.path == str(volume_file(backend, vol.id))
    conn = vol.local_attach
    assert conn is not None and conn.id == record.id
    await vol.detach()
    assert await lib.get_connections() == []


async def test_attach_and_detach_never_block_the_loop(
    lib: PersistenceStore, tmp_path: Path
) -> None:
    backend = await other_backend(tmp_path, ScriptedFileDriver, delay=0.05)
    volumes = await asyncio.gather(*(backend.create_volume(1) for _ in range(8)))
    await (await volumes[0].attach()).detach()  # os-brick is loaded before measuring
    await volumes[0].disconnect((await volumes[0].connections())[0])
    async with LagMonitor() as lag:
        for _ in range(2):
            conns = await asyncio.gather(*(v.attach() for v in volumes))
            assert {c.status for c in conns} == {"attached"}
            await asyncio.gather(*(v.detach() for v in volumes))
    LOOP_LAGS.append(("attach/detach", lag.worst))
    assert len(lag.samples) > 100, "the loop kept ticking while os-brick worked"
    # Looser than for driver calls: each command os-brick runs (dd here) is a
    # fork() with a preexec_fn, which holds the GIL while the process is copied.
    # A blocking os-brick call on the loop would show as whole seconds.
    assert lag.p99 < 0.05, f"p99 loop lag {lag.p99 * 1000:.1f} ms"
    assert lag.worst < 0.25, f"worst loop lag {lag.worst * 1000:.1f} ms"
    assert await lib.get_connections() == []
    assert {v.status for v in volumes} == {"available"}


# -- this host's connector properties; other protocols' connection info -------------------


async def test_connector_properties(lib: PersistenceStore) -> None:
    props = await aiocinder.get_connector_properties(root_helper="", my_ip="192.0.2.44")
    assert (props["host"], props["ip"], props["multipath"]) == ("testhost", "192.0.2.44", False)
    assert props["os_type"] == "linux" and "platform" in props
    default = await aiocinder.get_connector_properties()
    assert default["ip"] and default["ip"] != "192.0.2.44"
    assert default["host"] == "testhost"


async def test_other_protocols_pass_through_their_connection_info(
    lib: PersistenceStore, tmp_path: Path
) -> None:
    backend = await other_backend(tmp_path, ISCSIInfoDriver)
    vol = await backend.create_volume(1)
    conn = await vol.connect({"host": "node-3", "initiator": "iqn.1994-05.com.example:n3"})
    assert conn.protocol == "iscsi" and conn.conn_info["data"]["target_lun"] == 1
    stored = await aiocinder.Connection.get_by_id(conn.id)
    connector = stored.host_connector()
    assert (connector.protocol, connector.use_multipath) == ("iscsi", False)
    await anyio.to_thread.run_sync(connector.build)  # os-brick's own connector class
    built: Mapping[str, Any] = {"class": type(connector._brick).__name__}
    assert built == {"class": "ISCSIConnector"}
    await conn.disconnect()
