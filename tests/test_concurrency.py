"""Cancellation, shutdown and threads: the bookkeeping always matches the storage."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import anyio
import pytest
from conftest import LOOP_LAGS
from support import LagMonitor, ScriptedFileDriver, persistence

import aiocinder

GiB = 1 << 30
pytestmark = pytest.mark.asyncio


async def gated_backend(tmp_path: Path, gate: threading.Event, **options: object
                        ) -> aiocinder.Backend:
    return await aiocinder.Backend(
        "gated", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v"),
        gate=gate, **options,
    )


async def wait_started(backend: aiocinder.Backend) -> None:
    driver = backend.driver
    assert isinstance(driver, ScriptedFileDriver)
    await anyio.to_thread.run_sync(driver.started.wait, 10)


async def wait_idle(backend: aiocinder.Backend) -> None:
    with anyio.fail_after(10):
        while backend.statistics().operations:
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("how", ["task.cancel", "asyncio.timeout", "anyio.CancelScope"])
async def test_cancelled_create_still_matches_the_files(
    lib: aiocinder.persistence.PersistenceStore, tmp_path: Path, how: str
) -> None:
    gate = threading.Event()
    backend = await gated_backend(tmp_path, gate)

    if how == "task.cancel":
        task = asyncio.ensure_future(backend.create_volume(1, name="cancelled"))
        await wait_started(backend)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    elif how == "asyncio.timeout":
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await backend.create_volume(1, name="cancelled")
    else:
        with anyio.move_on_after(0.2) as scope:
            await backend.create_volume(1, name="cancelled")
        assert scope.cancelled_caught

    # the caller is gone at once; the driver call is still running
    (record,) = await lib.get_volumes(volume_name="cancelled")
    assert record.status == "creating"
    assert backend.statistics().running_driver_calls == 1
    gate.set()
    await wait_idle(backend)

    (record,) = await lib.get_volumes(volume_name="cancelled")
    assert record.status == "available"
    path = tmp_path / "v" / f"volume-{record.id}"
    assert path.stat().st_size == GiB
    assert record.provider_location == str(path)
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [path.name]


async def test_cancelled_delete_still_matches_the_files(
    lib: aiocinder.persistence.PersistenceStore, tmp_path: Path
) -> None:
    gate = threading.Event()
    gate.set()
    backend = await gated_backend(tmp_path, gate)
    vol = await backend.create_volume(1)
    gate.clear()
    backend.driver.started.clear()  # type: ignore[attr-defined]
    task = asyncio.ensure_future(vol.delete())
    await wait_started(backend)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r.status for r in await lib.get_volumes(volume_id=vol.id)] == ["deleting"]
    gate.set()
    await wait_idle(backend)
    assert await lib.get_volumes(volume_id=vol.id) == []
    assert list((tmp_path / "v").iterdir()) == []


async def test_shutdown_waits_for_operations_in_flight(db_url: str, tmp_path: Path) -> None:
    await aiocinder.setup(persistence(db_url))
    gate = threading.Event()
    backend = await gated_backend(tmp_path, gate)
    task = asyncio.ensure_future(backend.create_volume(1, name="late"))
    await wait_started(backend)
    task.cancel()
    closing = asyncio.ensure_future(aiocinder.shutdown())
    await asyncio.sleep(0.1)
    assert not closing.done(), "shutdown must wait for the driver call"
    with pytest.raises(aiocinder.UsageError, match="shutdown"):
        await backend.create_volume(1)
    gate.set()
    await closing
    await aiocinder.shutdown()  # idempotent

    store = await aiocinder.setup(persistence(db_url))
    try:
        (record,) = await store.get_volumes(volume_name="late")
        assert record.status == "available"
    finally:
        await aiocinder.shutdown()


async def test_limiter_bounds_concurrent_driver_calls(
    lib: aiocinder.persistence.PersistenceStore, tmp_path: Path
) -> None:
    gate = threading.Event()
    backend = await gated_backend(tmp_path, gate, max_concurrent_driver_calls=2)
    tasks = [asyncio.ensure_future(backend.create_volume(1)) for _ in range(6)]
    with anyio.fail_after(10):
        while backend.statistics().waiting_driver_calls < 4:
            await asyncio.sleep(0.01)
    stats = backend.statistics()
    assert (stats.running_driver_calls, stats.waiting_driver_calls, stats.operations) == (2, 4, 6)
    gate.set()
    volumes = await asyncio.gather(*tasks)
    assert {v.status for v in volumes} == {"available"}
    assert backend.statistics().running_driver_calls == 0


async def test_driver_calls_never_block_the_loop(
    lib: aiocinder.persistence.PersistenceStore, tmp_path: Path
) -> None:
    backend = await aiocinder.Backend(
        "slow", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v"), delay=0.2
    )
    async with LagMonitor() as lag:
        volumes = await asyncio.gather(*(backend.create_volume(1) for _ in range(16)))
        await asyncio.gather(*(v.extend(2) for v in volumes))
        await asyncio.gather(*(v.delete() for v in volumes))
    LOOP_LAGS.append(("driver calls", lag.worst))
    assert len(lag.samples) > 200, "the loop kept ticking while the driver slept"
    # Bounds for a loaded 2-core CI machine in debug mode under blockbuster; the
    # 2 ms target is checked by the benchmarks, where nothing else runs.
    assert lag.p99 < 0.03, f"p99 loop lag {lag.p99 * 1000:.1f} ms"
    assert lag.worst < 0.25, f"worst loop lag {lag.worst * 1000:.1f} ms"
    assert await lib.get_volumes() == []


async def test_two_concurrent_awaits_of_a_new_backend_give_one_object(
    lib: aiocinder.persistence.PersistenceStore, tmp_path: Path
) -> None:
    options = {"volume_driver": ScriptedFileDriver, "volumes_dir": str(tmp_path / "v")}
    a, b = await asyncio.gather(
        aiocinder.Backend("same", **options), aiocinder.Backend("same", **options)  # type: ignore[arg-type]
    )
    assert a is b is aiocinder.Backend.backends["same"]
    assert await aiocinder.Backend("same", **options) is a  # type: ignore[arg-type]
    with pytest.raises(aiocinder.BackendConfigConflict, match="'same'"):
        await aiocinder.Backend("same", **{**options, "volumes_dir": str(tmp_path / "w")})  # type: ignore[arg-type]
    assert aiocinder.Backend.backends["same"] is a


async def test_async_with_stops_and_unregisters(
    lib: aiocinder.persistence.PersistenceStore, tmp_path: Path
) -> None:
    async with aiocinder.Backend(
        "scoped", volume_driver=ScriptedFileDriver, volumes_dir=str(tmp_path / "v")
    ) as backend:
        assert aiocinder.Backend.backends["scoped"] is backend
        vol = await backend.create_volume(1)
    assert "scoped" not in aiocinder.Backend.backends
    with pytest.raises(aiocinder.BackendNotInitialised):
        await vol.extend(2)


async def test_shutdown_waits_for_a_backend_still_starting(db_url: str, tmp_path: Path) -> None:
    await aiocinder.setup(persistence(db_url))
    gate = threading.Event()

    class SlowSetup(ScriptedFileDriver):
        def do_setup(self) -> None:
            gate.wait(10)
            super().do_setup()

    starting = asyncio.ensure_future(
        aiocinder.Backend("late", volume_driver=SlowSetup, volumes_dir=str(tmp_path / "v"))
    )
    await asyncio.sleep(0.05)
    closing = asyncio.ensure_future(aiocinder.shutdown())
    await asyncio.sleep(0.05)
    assert not closing.done()
    gate.set()
    await closing
    await starting
    assert aiocinder.Backend.backends == {}, "nothing registered after shutdown"
