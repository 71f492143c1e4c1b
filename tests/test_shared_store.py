"""Operations on one volume serialise across tasks and processes sharing a store.

Every operation that changes a volume, its snapshots or its connections holds
the store's lock ``volume:<id>`` (:meth:`PersistenceStore.lock`), then reloads
the records and checks them again. The first tests show that in one process;
the others run OS processes against one SQLite file and one PostgreSQL
database, and compare the records with the FileDriver's files afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pgserver
import pytest
import pytest_asyncio
from blockbuster import BlockBuster
from support import ScriptedFileDriver

import aiocinder
from aiocinder.drivers.file import GiB
from aiocinder.persistence.base import PersistenceStore

pytestmark = pytest.mark.asyncio

REPO = Path(aiocinder.__file__).resolve().parent.parent
FILE_DRIVER = "aiocinder.drivers.file.FileDriver"


def volume_key(vol: aiocinder.Volume) -> str:
    return f"volume:{vol.id}"


async def is_locked(store: PersistenceStore, key: str) -> bool:
    """Whether some task holds ``key`` (we cannot take it within 0.2 s)."""
    try:
        async with asyncio.timeout(0.2), store.lock(key):
            return False
    except TimeoutError:
        return True


# -- in one process ------------------------------------------------------------


async def test_an_operation_holds_its_volume_lock_while_it_runs(
    lib: PersistenceStore, tmp_path: Path
) -> None:
    gate = threading.Event()
    backend = await aiocinder.Backend(
        volume_backend_name="gated", volume_driver=ScriptedFileDriver,
        volumes_dir=str(tmp_path / "volumes"),
    )  # fmt: skip
    vol = await backend.create_volume(size=1)
    other = await backend.create_volume(size=1)
    # a second handle on the volume, as another task or process would have
    # (the first one refuses at once: it knows it is extending)
    handle = await aiocinder.Volume.get_by_id(vol.id)
    driver: Any = backend.driver
    driver.gate = gate
    driver.started.clear()
    extending = asyncio.create_task(vol.extend(2))
    try:
        await asyncio.to_thread(driver.started.wait, 10)
        assert await is_locked(lib, volume_key(vol))
        assert not await is_locked(lib, volume_key(other))
        # a snapshot asked for meanwhile waits: nothing of it is stored yet
        snapshotting = asyncio.create_task(handle.create_snapshot(name="after"))
        await asyncio.sleep(0.1)
        assert await lib.get_snapshots(volume_id=vol.id) == []
    finally:
        gate.set()
    await extending
    snap = await snapshotting
    assert snap.volume_size == 2  # taken of the volume as the extend left it
    assert (tmp_path / "volumes" / f"snapshot-{snap.id}").stat().st_size == 2 * GiB
    assert not await is_locked(lib, volume_key(vol))


async def test_an_extend_that_waited_is_refused_if_the_volume_grew_meanwhile(
    lib: PersistenceStore, backend: aiocinder.Backend, tmp_path: Path
) -> None:
    vol = await backend.create_volume(size=1)
    async with lib.lock(volume_key(vol)):
        extending = asyncio.create_task(vol.extend(3))
        await asyncio.sleep(0.05)
        # meanwhile another process grows it to 5 GiB (file and record)
        (stored,) = await lib.get_volumes(volume_id=vol.id)
        grown = await lib.set_volume(stored.replace(size=5))
        os.truncate(tmp_path / "volumes" / f"volume-{vol.id}", 5 * GiB)
    with pytest.raises(aiocinder.InvalidArgument, match="current 5 GiB"):
        await extending
    assert await lib.get_volumes(volume_id=vol.id) == [grown]  # nothing changed
    assert (tmp_path / "volumes" / f"volume-{vol.id}").stat().st_size == 5 * GiB
    assert vol.size == 5


async def test_an_operation_that_waited_sees_the_status_another_process_left(
    lib: PersistenceStore, backend: aiocinder.Backend
) -> None:
    vol = await backend.create_volume(size=1)
    async with lib.lock(volume_key(vol)):
        snapshotting = asyncio.create_task(vol.create_snapshot())
        deleting = asyncio.create_task(vol.delete())
        await asyncio.sleep(0.05)
        (stored,) = await lib.get_volumes(volume_id=vol.id)
        broken = await lib.set_volume(stored.replace(status="error_extending"))
    with pytest.raises(aiocinder.InvalidVolume, match="error_extending"):
        await snapshotting
    await deleting  # error_extending may be deleted
    assert await lib.get_snapshots() == []
    assert await lib.get_volumes(volume_id=vol.id) == []
    assert broken.version == stored.version + 1


async def test_a_clone_follows_a_source_that_grew_while_it_waited(
    lib: PersistenceStore, backend: aiocinder.Backend, tmp_path: Path
) -> None:
    vol = await backend.create_volume(size=1)
    async with lib.lock(volume_key(vol)):
        default = asyncio.create_task(vol.clone())
        asked = asyncio.create_task(vol.clone(size=1))
        await asyncio.sleep(0.05)
        (stored,) = await lib.get_volumes(volume_id=vol.id)
        await lib.set_volume(stored.replace(size=2))
        os.truncate(tmp_path / "volumes" / f"volume-{vol.id}", 2 * GiB)
    clone = await default
    assert clone.size == 2
    assert (tmp_path / "volumes" / f"volume-{clone.id}").stat().st_size == 2 * GiB
    with pytest.raises(aiocinder.InvalidArgument, match="smaller than the source's 2 GiB"):
        await asked
    assert {v.id for v in await lib.get_volumes()} == {vol.id, clone.id}


async def test_a_disconnect_reads_the_volume_again_under_the_lock(
    lib: PersistenceStore, backend: aiocinder.Backend
) -> None:
    vol = await backend.create_volume(size=1)
    stale = await aiocinder.Volume.get_by_id(vol.id)  # "available", as another process saw it
    await vol.connect({"host": "node-1", "ip": "192.0.2.1"})
    (conn,) = await stale.connections()  # reached through the stale volume
    assert stale.status == "available"
    await conn.disconnect()
    # the last connection is gone: the volume, in-use in the store, is available again
    (final,) = await lib.get_volumes(volume_id=vol.id)
    assert final.status == "available"
    assert await lib.get_connections() == []


# -- between OS processes ------------------------------------------------------


@pytest.fixture(autouse=True)
def _asyncpg_may_check_its_files(blockbuster: BlockBuster) -> None:
    pgserver.allow_asyncpg_connect(blockbuster)


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The persistence config of a store several processes can share."""
    if request.param == "sqlite":
        yield {"storage": "sqlite", "connection": f"sqlite:///{tmp_path / 'shared.sqlite'}"}
        return
    async with pgserver.require_server().database() as dsn:
        yield {"storage": "postgresql", "connection": dsn, "max_size": 4}


def _child_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


async def run_processes(script: str, argvs: list[list[str]]) -> list[Any]:
    """Start one process per argv, let them all go at once, return their JSON outputs."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_child_env(),
        )
        for argv in argvs
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line != b"ready\n":
                _, err = await proc.communicate()
                raise AssertionError(f"a worker did not start: {line!r}\n{err.decode()}")
        talks = [asyncio.create_task(p.communicate(b"go\n")) for p in procs]
        _, late = await asyncio.wait(talks, timeout=100)  # within pytest's timeout
        for proc in procs if late else ():
            if proc.returncode is None:
                proc.kill()  # its output so far still comes back, to show below
        results = [await talk for talk in talks]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    outputs = []
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, f"a worker failed ({proc.returncode}):\n{err.decode()}"
        outputs.append(json.loads(out))
    return outputs


_WORKER_PRELUDE = """
import asyncio, json, sys
import aiocinder

async def start():
    config, volumes_dir, volume_id = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    await aiocinder.setup(config)
    await aiocinder.Backend(volume_backend_name="files", volumes_dir=volumes_dir,
                            volume_driver="aiocinder.drivers.file.FileDriver")
    vol = await aiocinder.Volume.get_by_id(volume_id)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # "go", sent to every worker at once
    return vol

async def main():
    try:
        print(json.dumps(await work(await start())))
    finally:
        await aiocinder.shutdown()  # else aiosqlite's thread keeps the process alive
"""

EXTEND_AND_SNAPSHOT = _WORKER_PRELUDE + textwrap.dedent(
    """
    async def work(vol):
        who, rounds = int(sys.argv[4]), int(sys.argv[5])
        extended, refused, snapshots = [], [], []
        for i in range(rounds):
            size = 2 + 2 * i + who  # worker 0 asks 2, 4, 6...; worker 1 asks 3, 5, 7...
            try:
                await vol.extend(size)
                extended.append(size)
            except aiocinder.InvalidArgument:  # the other one grew it further first
                refused.append(size)
            snap = await vol.create_snapshot(name=f"{who}-{i}")
            snapshots.append(snap.id)
        return {"extended": extended, "refused": refused, "snapshots": snapshots}

    asyncio.run(main())
    """
)

COUNTER = _WORKER_PRELUDE + textwrap.dedent(
    """
    async def work(vol):
        rounds, done, conflicts = int(sys.argv[4]), 0, 0
        while done < rounds:
            count = int(vol.metadata.get("counter", "0"))
            vol.metadata = {**vol.metadata, "counter": str(count + 1)}
            try:
                await vol.save()
            except aiocinder.ConflictError:
                conflicts += 1
                await vol.refresh()  # someone else's increment: read it, then add ours
                continue
            done += 1
        return {"done": done, "conflicts": conflicts}

    asyncio.run(main())
    """
)


async def _new_volume(config: dict[str, Any], volumes_dir: Path) -> str:
    await aiocinder.setup(config)
    try:
        backend = await aiocinder.Backend(
            volume_backend_name="files", volume_driver=FILE_DRIVER, volumes_dir=str(volumes_dir)
        )
        return (await backend.create_volume(size=1, name="shared")).id
    finally:
        await aiocinder.shutdown()


@pytest.mark.slow
async def test_two_processes_extend_and_snapshot_one_volume(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    rounds = 20
    volumes = tmp_path / "volumes"
    vid = await _new_volume(shared, volumes)
    began = time.perf_counter()
    outputs = await run_processes(
        EXTEND_AND_SNAPSHOT,
        [[json.dumps(shared), str(volumes), vid, str(who), str(rounds)] for who in (0, 1)],
    )
    elapsed = time.perf_counter() - began

    extended = [size for out in outputs for size in out["extended"]]
    made = {sid for out in outputs for sid in out["snapshots"]}
    assert len(made) == 2 * rounds
    assert max(extended) == 2 + 2 * (rounds - 1) + 1  # the largest extend asked for
    assert sorted(extended + [s for out in outputs for s in out["refused"]]) == list(
        range(2, 2 * rounds + 2)
    )

    store = await aiocinder.setup(shared)
    try:
        (record,) = await store.get_volumes(volume_id=vid)
        snapshots = await store.get_snapshots(volume_id=vid)
        assert (record.status, record.size) == ("available", max(extended))
        assert {s.id for s in snapshots} == made
        assert {s.status for s in snapshots} == {"available"}
        # the files say the same: the volume's size, one file per snapshot,
        # each as large as the volume was when its record says it was taken
        files = {p.name: p.stat().st_size for p in volumes.iterdir()}
        expected = {f"volume-{vid}": record.size * GiB}
        expected |= {f"snapshot-{s.id}": s.volume_size * GiB for s in snapshots}
        assert files == expected
        # each snapshot saw a size the volume really had
        assert {s.volume_size for s in snapshots} <= {1, *extended}
    finally:
        await aiocinder.shutdown()
    print(f"\n{shared['storage']}: 2 processes x {rounds} rounds in {elapsed:.2f} s")


@pytest.mark.slow
async def test_two_processes_lose_no_update(shared: dict[str, Any], tmp_path: Path) -> None:
    rounds = 200
    volumes = tmp_path / "volumes"
    vid = await _new_volume(shared, volumes)
    began = time.perf_counter()
    outputs = await run_processes(
        COUNTER, [[json.dumps(shared), str(volumes), vid, str(rounds)] for _ in range(2)]
    )
    elapsed = time.perf_counter() - began
    assert [out["done"] for out in outputs] == [rounds, rounds]
    store = await aiocinder.setup(shared)
    try:
        (record,) = await store.get_volumes(volume_id=vid)
    finally:
        await aiocinder.shutdown()
    assert record.metadata["counter"] == str(2 * rounds)
    conflicts = sum(out["conflicts"] for out in outputs)
    assert conflicts > 0, "the processes never raced: the test proved nothing"
    print(
        f"\n{shared['storage']}: 2 processes x {rounds} saves in {elapsed:.2f} s, "
        f"{conflicts} conflicts retried"
    )


# -- PostgreSQL stopped and started again ----------------------------------------


async def _checkpoint(dsn: str) -> None:
    """Write everything to disk, so that even a crash of the test server keeps it."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _wait_for_calls(driver: Any, count: int) -> None:
    async with asyncio.timeout(30):
        while sum(driver.calls.values()) < count:
            await asyncio.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_operations_live_through_a_postgresql_outage(mode: str, tmp_path: Path) -> None:
    volumes = tmp_path / "volumes"
    async with pgserver.own_server() as server:
        store = await aiocinder.setup(
            {"storage": "postgresql", "connection": server.dsn, "connect_timeout": 5}
        )
        try:
            gate = threading.Event()
            gate.set()
            backend = await aiocinder.Backend(
                volume_backend_name="files", volume_driver=ScriptedFileDriver,
                volumes_dir=str(volumes), gate=gate,
            )  # fmt: skip
            base = [await backend.create_volume(size=1, name=f"base-{i}") for i in range(4)]
            driver: Any = backend.driver

            # Operations in flight: each is in its driver call when the server stops.
            gate.clear()
            before = sum(driver.calls.values())
            in_flight = [
                asyncio.create_task(backend.create_volume(size=1, name="new-0")),
                asyncio.create_task(backend.create_volume(size=1, name="new-1")),
                asyncio.create_task(base[0].extend(2)),
                asyncio.create_task(base[1].create_snapshot(name="snap")),
                asyncio.create_task(base[2].clone(name="clone")),
            ]
            await _wait_for_calls(driver, before + len(in_flight))
            await _checkpoint(server.dsn)  # the test server does not wait for its disk
            await asyncio.to_thread(server.halt, mode)
            gate.set()
            done, late = await asyncio.wait(in_flight, timeout=60)
            assert not late, "operations in flight hang after the outage"
            failures = [task.exception() for task in done if task.exception() is not None]
            for error in failures:
                assert isinstance(error, aiocinder.PersistenceError | aiocinder.DriverError), error
            assert failures, "the outage went unnoticed"

            # Operations started while the server is down fail at once, typed.
            with pytest.raises(aiocinder.PersistenceError):
                await backend.create_volume(size=1)
            with pytest.raises(aiocinder.PersistenceError):
                await base[3].extend(2)
            with pytest.raises(aiocinder.PersistenceError):
                await aiocinder.Volume.get_by_id(base[3].id)

            # Back up: the same setup works, nothing is set up again.
            await asyncio.to_thread(server.resume)
            await base[3].extend(2)
            assert (await aiocinder.Volume.get_by_id(base[3].id)).size == 2
            vol = await backend.create_volume(size=1, name="after")
            await vol.extend(3)
            snap = await vol.create_snapshot()
            copy = await snap.create_volume()
            await snap.delete()
            await copy.delete()
            await vol.delete()

            # Nothing the driver made is without a record (some say what was in
            # flight when the server went away: that is their job).
            stored = {f"volume-{v.id}" for v in await store.get_volumes()}
            stored |= {f"snapshot-{s.id}" for s in await store.get_snapshots()}
            assert {p.name for p in volumes.iterdir()} <= stored
        finally:
            await aiocinder.shutdown()
