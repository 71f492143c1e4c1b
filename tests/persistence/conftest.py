"""Fixtures for the persistence tests: one fresh, opened store per test.

To run the contract suite against another store, add its factory to
``STORE_FACTORIES``: an async context manager that yields the opened store
and closes it afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pgserver
import pytest
import pytest_asyncio

from aiocinder.persistence.base import PersistenceStore
from aiocinder.persistence.memory import MemoryStore
from aiocinder.persistence.postgresql import PostgreSQLStore
from aiocinder.persistence.sqlite import SQLiteStore


@asynccontextmanager
async def memory_store(tmp_path: Path) -> AsyncIterator[PersistenceStore]:
    async with MemoryStore() as store:
        yield store


@asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[PersistenceStore]:
    async with SQLiteStore(f"sqlite:///{tmp_path / 'contract.sqlite'}") as store:
        yield store


@asynccontextmanager
async def postgresql_store(tmp_path: Path) -> AsyncIterator[PersistenceStore]:
    # A new database per test on the session's server; skips without one, fails under CI.
    async with pgserver.require_server().database() as dsn, PostgreSQLStore(dsn) as store:
        yield store


#: Store factories by test id; each gets the test's ``tmp_path``.
STORE_FACTORIES: dict[str, Callable[[Path], AbstractAsyncContextManager[PersistenceStore]]] = {
    "memory": memory_store,
    "sqlite": sqlite_store,
    "postgresql": postgresql_store,
}


@pytest_asyncio.fixture(params=[pytest.param(name, id=name) for name in STORE_FACTORIES])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PersistenceStore]:
    """A new, opened store of each kind; closed after the test."""
    async with STORE_FACTORIES[request.param](tmp_path) as opened:
        yield opened


@pytest.fixture(scope="session")
def pg_server() -> pgserver.PostgresServer:
    """The session's PostgreSQL server (skips without one; fails when CI is set)."""
    return pgserver.require_server()


@pytest_asyncio.fixture
async def pg_dsn(pg_server: pgserver.PostgresServer) -> AsyncIterator[str]:
    """The DSN of a new, empty database, dropped after the test."""
    async with pg_server.database() as dsn:
        yield dsn


async def take_lock(store: PersistenceStore, key: str, *, within: float | None = None) -> bool:
    """Take ``key``'s lock and let it go at once: True when that happened, False
    when it took longer than ``within`` seconds (no limit with None)."""
    try:
        async with asyncio.timeout(within), store.lock(key):
            return True
    except TimeoutError:
        return False
