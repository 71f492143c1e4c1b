"""copy_store(): every record of one store into another, for every pair of stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiocinder.exceptions import InvalidArgument
from aiocinder.persistence.base import PersistenceStore
from aiocinder.persistence.copy import CopyCounts, copy_store
from aiocinder.persistence.memory import MemoryStore
from aiocinder.persistence.sqlite import SQLiteStore
from aiocinder.records import KeyValue

from .conftest import STORE_FACTORIES
from .test_contract import ODD_NAMES, full_connection, full_snapshot, full_volume

ROOT = Path(__file__).resolve().parents[2]


async def populate(store: PersistenceStore, volumes: int = 7) -> None:
    """Volumes with and without snapshots and connections, updated ones, key values."""
    for n in range(volumes):
        vol = await store.set_volume(full_volume().replace(
            name=ODD_NAMES[n % len(ODD_NAMES)], size=n + 1))
        if n % 2 == 0:
            await store.set_snapshot(full_snapshot(vol.id))
            await store.set_snapshot(full_snapshot(vol.id))
        if n % 3 == 0:
            conn = await store.set_connection(full_connection(vol.id))
            await store.set_connection(conn.replace(status="attached"))
        if n == 1:
            await store.set_volume(vol.replace(status="in-use"))  # version 2, updated_at
    for key in ("node-1", "node-é", "empty"):
        await store.set_key_value(KeyValue(key, None if key == "empty" else f"{{{key}}}"))


async def contents(store: PersistenceStore) -> tuple[list[Any], ...]:
    """Every record, versions aside (each store counts its own)."""
    def plain(records: list[Any]) -> list[Any]:
        return sorted((r.replace(version=0) for r in records), key=lambda r: r.id)

    return (plain(await store.get_volumes()), plain(await store.get_snapshots()),
            plain(await store.get_connections()),
            sorted(await store.get_key_values(), key=lambda kv: kv.key))


@pytest.mark.asyncio
@pytest.mark.parametrize("target_kind", list(STORE_FACTORIES))
@pytest.mark.parametrize("source_kind", list(STORE_FACTORIES))
async def test_copy_between_every_pair_of_stores(source_kind: str, target_kind: str,
                                                 tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    (tmp_path / "target").mkdir()
    async with STORE_FACTORIES[source_kind](tmp_path / "source") as source, \
            STORE_FACTORIES[target_kind](tmp_path / "target") as target:
        await populate(source)
        expected = await contents(source)
        counts = await copy_store(source, target, batch_size=3)
        assert counts == CopyCounts(volumes=7, snapshots=8, connections=3, key_values=3)
        assert await contents(target) == expected
        assert any(v.updated_at is not None for v in expected[0])

        # Again: nothing changes, nothing is duplicated.
        assert await copy_store(source, target, batch_size=2) == counts
        assert await contents(target) == expected

        # After a change in the source: replaced (the update's time is the copy's).
        [first, *_] = await source.get_volumes()
        renamed = await source.set_volume(first.replace(name="renamed"))
        assert await copy_store(source, target) == counts
        [copied] = await target.get_volumes(volume_id=first.id)
        assert copied.name == "renamed"
        assert copied.updated_at is not None and renamed.updated_at is not None
        assert copied.updated_at >= renamed.updated_at
        expected = await contents(source)
        got = await contents(target)
        assert got[1:] == expected[1:]
        assert [v.replace(updated_at=None) for v in got[0]] == [
            v.replace(updated_at=None) for v in expected[0]]
        assert [v for v in got[0] if v.id != first.id] == [
            v for v in expected[0] if v.id != first.id]


@pytest.mark.asyncio
async def test_records_only_the_target_has_are_kept() -> None:
    async with MemoryStore() as source, MemoryStore() as target:
        await populate(source, volumes=2)
        await populate(target, volumes=1)
        before = await contents(target)
        await copy_store(source, target)
        after = await contents(target)
        assert [v for v in after[0] if v.id in {b.id for b in before[0]}] == before[0]
        assert len(after[0]) == 3


@pytest.mark.asyncio
async def test_empty_source_and_bad_arguments() -> None:
    async with MemoryStore() as source, MemoryStore() as target:
        assert await copy_store(source, target) == CopyCounts()
        with pytest.raises(InvalidArgument, match="same store"):
            await copy_store(source, source)
        for bad in (0, -1, True, 2.5):
            with pytest.raises(InvalidArgument, match="batch_size"):
                await copy_store(source, target, batch_size=bad)  # type: ignore[arg-type]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-m", "aiocinder.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.asyncio
async def test_copy_command(tmp_path: Path) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    target_url = f"sqlite:///{tmp_path / 'target.sqlite'}"
    async with SQLiteStore(source_url) as source:
        await populate(source)
        expected = await contents(source)
    result = run("copy", "--from", source_url, "--to", target_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "7 volumes, 8 snapshots, 3 connections, 3 key values")
    async with SQLiteStore(target_url) as target:
        assert await contents(target) == expected

    missing = run("copy", "--from", f"sqlite:///{tmp_path / 'typo.sqlite'}",
                  "--to", target_url, cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith("aiocinder: InvalidArgument: no SQLite database")
    assert not (tmp_path / "typo.sqlite").exists()
