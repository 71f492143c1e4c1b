"""A Cinder driver class through aiocinder: lifecycle, database calls, config, threads.

The driver is :class:`fake_array.FakeArrayDriver`, a subclass of Cinder's
real ``VolumeDriver`` that calls Cinder's database API as vendor drivers do.
Lifecycle tests run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest

import aiocinder
from aiocinder.drivers.cinder import adapter

from . import fake_array
from .fake_array import ARRAYS, CHAP_SECRET, FAKE_OPTIONS, SEEN, ArrayError

pytestmark = pytest.mark.asyncio

CONNECTOR = {"host": "node-1", "ip": "10.0.0.5", "initiator": "iqn.1993-08.org.debian:01:node1"}


def seen(backend: str, method: str) -> list[dict[str, Any]]:
    return [what for name, what in SEEN[backend] if name == method]


async def scan(backend: aiocinder.Backend) -> list[tuple[Any, ...]]:
    """cinderlib's documented tracking loop, awaited, collecting what it prints."""
    rows: list[tuple[Any, ...]] = []
    await backend.refresh()
    for vol in await backend.volumes():
        await vol.refresh()
        rows.append(("volume", vol.id, vol.size, vol.status, vol.provider_location))
        for snap in await vol.snapshots():
            rows.append(("snapshot", snap.id, (await snap.volume()).id, snap.status))
        for conn in await vol.connections():
            rows.append(("connection", conn.connector_info["host"], conn.connector_info["ip"],
                         (await conn.volume()).id, conn.status, conn.protocol))
    return sorted(rows, key=repr)


async def test_lifecycle(fake_backend: aiocinder.Backend,
                         cinder_lib: aiocinder.persistence.PersistenceStore) -> None:
    store = cinder_lib
    # stats: the driver's legacy report gets the one pool
    stats = await fake_backend.stats(refresh=True)
    assert stats["vendor_name"] == "Fake Arrays Inc."
    assert [p["pool_name"] for p in stats["pools"]] == ["array"]
    assert stats["pools"][0]["total_capacity_gb"] == 1000

    vol = await fake_backend.create_volume(
        1, name="db", volume_type_name="gold", extra_specs={"tier": "ssd"},
        qos_specs={"maxIOPS": "500", "consumer": "back-end"}, metadata={"team": "db"})
    assert vol.status == "available"
    assert vol.provider_location == f"fake://pool-a/volume-{vol.id}"
    assert vol.provider_id == "lun-1"
    assert dict(vol.admin_metadata) == {"fake_lun": "1"}  # saved by the driver itself
    (created,) = seen("array", "create_volume")
    # the driver read the volume back while it was being created, and its type
    assert created["status_seen"] == "creating"
    assert created["host"] == "testhost@array#array"
    assert (created["type_name"], created["extra_specs"]) == ("gold", {"tier": "ssd"})
    assert created["qos"] == created["qos_from_object"] == {"maxIOPS": "500"}
    (stored,) = await store.get_volumes(volume_id=vol.id)
    assert dict(stored.admin_metadata) == {"fake_lun": "1"}
    assert stored.provider_id == "lun-1" and stored.status == "available"

    snap = await vol.create_snapshot(name="s1")
    assert snap.status == "available"
    assert snap.provider_location == f"fake://pool-a/snapshot-{snap.id}"
    (made,) = seen("array", "create_snapshot")
    assert made["volume_status_from_thread"] == "available"  # a driver thread reached the loop

    clone = await vol.clone(name="copy")
    assert clone.source_volid == vol.id and clone.status == "available"
    assert seen("array", "create_cloned_volume")[0]["source_lun"] == "1"
    assert ARRAYS["array"].luns[f"volume-{clone.id}"].source == f"volume-{vol.id}"
    assert dict(clone.admin_metadata) == {"fake_lun": "2"}  # set on the object, returned

    from_snap = await snap.create_volume(size=2, name="restored")
    assert (from_snap.size, from_snap.snapshot_id) == (2, snap.id)
    assert dict(from_snap.admin_metadata) == {"fake_lun": "3"}  # from the model update
    assert seen("array", "create_volume_from_snapshot")[0]["snapshot_volume"] == f"volume-{vol.id}"

    await vol.extend(3)
    assert (vol.size, vol.status) == (3, "available")
    assert seen("array", "extend_volume")[0]["status"] == "extending"
    (stored,) = await store.get_volumes(volume_id=vol.id)
    assert stored.size == 3
    assert dict(stored.admin_metadata) == {"fake_lun": "1", "fake_extended": "3"}

    conn = await vol.connect(CONNECTOR)
    assert (conn.status, conn.protocol, vol.status) == ("attached", "iscsi", "in-use")
    data = conn.conn_info["data"]
    assert data["target_portal"] == "192.0.2.10:3260" and data["target_lun"] == 1
    assert data["auth_method"] == "CHAP" and data["auth_password"] == CHAP_SECRET
    assert data["access_mode"] == "rw"
    # create_export's model update reached initialize_connection, as in Cinder
    (initialized,) = seen("array", "initialize_connection")
    assert initialized["provider_auth"].startswith("CHAP ")
    assert initialized["attachments"] == 1  # the connection being made, from the store
    (stored,) = await store.get_volumes(volume_id=vol.id)
    assert stored.provider_auth == initialized["provider_auth"]
    assert ARRAYS["array"].mappings[f"volume-{vol.id}"] == {CONNECTOR["initiator"]}

    rows = await scan(fake_backend)
    assert ("connection", "node-1", "10.0.0.5", vol.id, "attached", "iscsi") in rows
    assert ("snapshot", snap.id, vol.id, "available") in rows
    assert sum(1 for row in rows if row[0] == "volume") == 3

    await conn.disconnect()
    assert vol.status == "available"
    assert seen("array", "terminate_connection")[0]["attachments"] == 1
    assert f"volume-{vol.id}" not in ARRAYS["array"].exports
    assert not ARRAYS["array"].mappings[f"volume-{vol.id}"]

    await snap.delete()
    for volume in (clone, from_snap, vol):
        await volume.delete()
    assert ARRAYS["array"].luns == {} and ARRAYS["array"].snapshots == {}
    assert await store.get_volumes(backend_name="array") == []
    await fake_backend.refresh()
    assert await fake_backend.volumes() == []


async def test_tracking_loop_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    state = str(tmp_path / "state")

    async def start() -> aiocinder.Backend:
        await aiocinder.setup({"storage": "sqlite", "connection": url}, state_path=state)
        return await aiocinder.Backend("array", **FAKE_OPTIONS)

    backend = await start()
    try:
        for i in range(3):
            vol = await backend.create_volume(1, name=f"v{i}")
            await vol.create_snapshot()
            await vol.connect({**CONNECTOR, "host": f"node-{i}", "ip": f"10.0.0.{i}"})
        before = await scan(backend)
    finally:
        await aiocinder.shutdown()
    assert not adapter.PROCESS.active
    assert len([row for row in before if row[0] == "connection"]) == 3

    backend = await start()
    try:
        assert await scan(backend) == before
    finally:
        await aiocinder.shutdown()


async def test_a_limiter_of_one_does_not_deadlock(cinder_lib: object) -> None:
    """Driver calls hold the backend's only slot while their database calls
    (and a thread of the driver's own) go back to the event loop."""
    backend = await aiocinder.Backend("array", max_concurrent_driver_calls=1,
                                      fake_array_delay=0.05, **FAKE_OPTIONS)
    assert backend.statistics().max_concurrent_driver_calls == 1
    async with asyncio.timeout(60):
        volumes = await asyncio.gather(*(backend.create_volume(1) for _ in range(4)))
        snapshots = await asyncio.gather(*(v.create_snapshot() for v in volumes))
        await asyncio.gather(*(v.extend(2) for v in volumes))
    assert {v.status for v in volumes} == {"available"}
    assert {s.status for s in snapshots} == {"available"}
    assert {w["status_seen"] for w in seen("array", "create_volume")} == {"creating"}


async def test_a_failing_driver_call_is_a_driver_error(
        cinder_lib: aiocinder.persistence.PersistenceStore) -> None:
    backend = await aiocinder.Backend("array", fake_array_fail=["create_volume"],
                                      **FAKE_OPTIONS)
    with pytest.raises(aiocinder.DriverError) as info:
        await backend.create_volume(1, name="doomed")
    vol = info.value.resource
    assert isinstance(vol, aiocinder.Volume) and vol.status == "error"
    assert isinstance(info.value.__cause__, ArrayError)
    assert "array refused create_volume" in str(info.value)
    (stored,) = await cinder_lib.get_volumes(volume_name="doomed")
    assert stored.status == "error"
    await vol.delete()  # an errored volume can be cleaned up
    assert await cinder_lib.get_volumes(volume_name="doomed") == []


async def test_an_extend_failure_is_recorded(
        cinder_lib: aiocinder.persistence.PersistenceStore) -> None:
    backend = await aiocinder.Backend("array", fake_array_fail=["extend_volume"],
                                      **FAKE_OPTIONS)
    vol = await backend.create_volume(1)
    with pytest.raises(aiocinder.DriverError) as info:
        await vol.extend(2)
    assert info.value.resource is vol and vol.status == "error_extending"
    (stored,) = await cinder_lib.get_volumes(volume_id=vol.id)
    assert (stored.status, stored.size) == ("error_extending", 1)


async def test_setup_failure_leaves_nothing_running(cinder_lib: object) -> None:
    options = {k: v for k, v in FAKE_OPTIONS.items() if k != "fake_array_password"}
    with pytest.raises(aiocinder.DriverError, match="fake_array_password is required"):
        await aiocinder.Backend("array", **options)
    assert "array" not in aiocinder.Backend.backends
    assert not adapter.PROCESS.active


async def test_driver_named_by_path(cinder_lib: object) -> None:
    backend = await aiocinder.Backend(
        "bypath", volume_driver="cinder_drivers.fake_array.FakeArrayDriver",
        fake_array_password="pw")
    assert type(backend.driver).__name__ == "FakeArrayDriver"
    assert isinstance(backend.driver.driver, fake_array.FakeArrayDriver)
    vol = await backend.create_volume(1)
    await vol.delete()


async def test_unknown_cinder_driver(cinder_lib: object) -> None:
    with pytest.raises(aiocinder.InvalidArgument, match="cannot import Cinder driver"):
        await aiocinder.Backend("nope", volume_driver="cinder.volume.drivers.nope.NopeDriver")
    with pytest.raises(aiocinder.InvalidArgument, match="is not a Cinder volume driver"):
        await aiocinder.Backend("nope", volume_driver="cinder.volume.configuration.Configuration")
    assert not adapter.PROCESS.active


@pytest.mark.parametrize("name", ["backend_defaults", "DEFAULT", "coordination", "host"])
async def test_backend_names_that_clash_with_cinder_config(cinder_lib: object, name: str) -> None:
    with pytest.raises(aiocinder.InvalidArgument, match="Cinder's configuration"):
        await aiocinder.Backend(name, **FAKE_OPTIONS)
    assert not adapter.PROCESS.active


# -- configuration -----------------------------------------------------------------


async def test_templates_and_default_section(tmp_path: Path) -> None:
    await aiocinder.setup(state_path=str(tmp_path / "state"), my_ip="192.0.2.44")
    try:
        backend = await aiocinder.Backend(
            "tmpl", fake_array_portal_ip="$my_ip", fake_array_pool="${volume_backend_name}-p$$",
            **FAKE_OPTIONS)
        conf = backend.driver.driver.configuration
        assert conf.fake_array_pool == "tmpl-p$"
        assert conf.fake_array_portal_ip == "192.0.2.44"
        from oslo_config import cfg

        assert cfg.CONF.my_ip == "192.0.2.44"
        assert cfg.CONF.state_path == str(tmp_path / "state")
        assert cfg.CONF.oslo_concurrency.lock_path == str(tmp_path / "state" / "lock")
        vol = await backend.create_volume(1)
        conn = await vol.connect(CONNECTOR)
        assert conn.conn_info["data"]["target_portal"] == "192.0.2.44:3260"
        assert vol.provider_location == f"fake://tmpl-p$/volume-{vol.id}"
        await conn.disconnect()
        await vol.delete()
    finally:
        await aiocinder.shutdown()
    from oslo_config import cfg

    assert cfg.CONF.my_ip != "192.0.2.44", "[DEFAULT] is as it was once Cinder backends stop"


async def test_invalid_values_are_refused_naming_the_option(cinder_lib: object) -> None:
    with pytest.raises(aiocinder.InvalidArgument, match=r"\[bad\] fake_array_delay.*'soon'"):
        await aiocinder.Backend("bad", fake_array_delay="soon", **FAKE_OPTIONS)
    with pytest.raises(aiocinder.InvalidArgument, match="fake_array_portal_ip"):
        await aiocinder.Backend("bad", fake_array_portal_ip="not-an-ip", **FAKE_OPTIONS)
    with pytest.raises(aiocinder.InvalidArgument, match="which is no option"):
        await aiocinder.Backend("bad", fake_array_pool="$no_such_option", **FAKE_OPTIONS)
    assert "bad" not in aiocinder.Backend.backends
    assert not adapter.PROCESS.active


async def test_invalid_secret_values_are_not_shown(cinder_lib: object,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    secret = "x" * 40 + "-hunter2"  # longer than the option allows
    options = {**FAKE_OPTIONS, "fake_array_password": secret}
    with caplog.at_level(logging.DEBUG), pytest.raises(aiocinder.InvalidArgument) as info:
        await aiocinder.Backend("bad", **options)
    assert "fake_array_password" in str(info.value)
    assert "secret and not shown" in str(info.value)
    assert "hunter2" not in str(info.value) and "hunter2" not in caplog.text


async def test_unknown_options_warn_by_name(cinder_lib: object,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aiocinder"):
        backend = await aiocinder.Backend("array", not_an_option="value-417",
                                          **FAKE_OPTIONS)
    assert "not_an_option" in caplog.text and "value-417" not in caplog.text
    assert backend.driver.driver.configuration.safe_get("not_an_option") is None


async def test_unknown_default_options_warn(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    await aiocinder.setup(state_path=str(tmp_path / "s"), not_a_cinder_option=1)
    try:
        with caplog.at_level(logging.WARNING, logger="aiocinder"):
            await aiocinder.Backend("array", **FAKE_OPTIONS)
        assert "not_a_cinder_option" in caplog.text and "[DEFAULT]" in caplog.text
    finally:
        await aiocinder.shutdown()


async def test_secrets_stay_out_of_logs(cinder_lib: object,
                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        backend = await aiocinder.Backend("array", **FAKE_OPTIONS)
        vol = await backend.create_volume(1)
        conn = await vol.connect(CONNECTOR)
        await conn.disconnect()
        await vol.delete()
        await aiocinder.shutdown()
    assert caplog.records, "Cinder and aiocinder log at debug level"
    assert FAKE_OPTIONS["fake_array_password"] not in caplog.text
    assert FAKE_OPTIONS["fake_array_password"] not in repr(backend)


# -- what the adapter does to the process ----------------------------------------------


async def test_patches_live_only_while_cinder_backends_run(tmp_path: Path) -> None:
    from cinder import privsep
    from cinder import utils as cinder_utils
    from cinder.db import api as db_api

    original_get = db_api.volume_get
    original_root_helper = cinder_utils.get_root_helper
    mode = privsep.sys_admin_pctxt.client_mode
    await aiocinder.setup(state_path=str(tmp_path / "s"))
    try:
        assert db_api.volume_get is original_get, "nothing is patched before a backend starts"
        first = await aiocinder.Backend("one", **FAKE_OPTIONS)
        second = await aiocinder.Backend("two", **FAKE_OPTIONS)
        assert db_api.volume_get is not original_get
        if os.geteuid() == 0:
            assert privsep.sys_admin_pctxt.client_mode is False  # privsep in this process
        else:
            assert cinder_utils.get_root_helper() == "sudo"
        with pytest.raises(NotImplementedError, match="backup_get"):
            db_api.backup_get(None, "id")
        await first.close()
        assert db_api.volume_get is not original_get, "the second backend still runs"
        await second.close()
        assert db_api.volume_get is original_get
        assert cinder_utils.get_root_helper is original_root_helper
        assert privsep.sys_admin_pctxt.client_mode is mode
    finally:
        await aiocinder.shutdown()


async def test_no_eventlet_monkeypatching_and_logging_untouched(cinder_lib: object) -> None:
    import eventlet.patcher

    root = logging.getLogger()
    before = (root.level, list(root.handlers), root.manager.disable)
    backend = await aiocinder.Backend("array", **FAKE_OPTIONS)
    vol = await backend.create_volume(1)
    await vol.delete()
    assert (root.level, list(root.handlers), root.manager.disable) == before
    assert not logging.getLogger("cinder").disabled
    for module in ("thread", "socket", "time", "select", "os"):
        assert not eventlet.patcher.is_monkey_patched(module), module


async def test_objects_of_a_backend_not_configured_here(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    await aiocinder.setup({"storage": "sqlite", "connection": url},
                          state_path=str(tmp_path / "s"))
    try:
        backend = await aiocinder.Backend("array", **FAKE_OPTIONS)
        vol = await backend.create_volume(1, name="kept")
        snap = await vol.create_snapshot()
    finally:
        await aiocinder.shutdown()

    await aiocinder.setup({"storage": "sqlite", "connection": url})
    try:
        with pytest.raises(aiocinder.BackendNotInitialised):
            await aiocinder.Volume.get_by_id(vol.id)
    finally:
        await aiocinder.shutdown()

    await aiocinder.setup({"storage": "sqlite", "connection": url},
                          fail_on_missing_backend=False)
    try:
        loaded = await aiocinder.Volume.get_by_id(vol.id)
        assert (loaded.name, loaded.provider_location) == ("kept", vol.provider_location)
        assert [s.id for s in await loaded.snapshots()] == [snap.id]
        with pytest.raises(aiocinder.BackendNotInitialised):
            await loaded.extend(2)
        assert not adapter.PROCESS.active, "loading records starts no Cinder driver"
    finally:
        await aiocinder.shutdown()
