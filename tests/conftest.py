"""Test hygiene for the whole suite.

* every asyncio test runs on a loop in debug mode whose exception handler
  records what reaches it; a test fails if anything did;
* blockbuster fails any blocking call made on the event loop thread from
  aiocinder's own code;
* loop lag measured by the tests is gathered and the worst figure printed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pgserver
import pytest
import pytest_asyncio
from blockbuster import BlockBuster, blockbuster_ctx
from support import ScriptedFileDriver, persistence

import aiocinder

_loop_errors: list[dict[str, Any]] = []
#: Loop lag figures (seconds) the tests measured, for the closing summary.
LOOP_LAGS: list[tuple[str, float]] = []


def _record_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    _loop_errors.append(context)
    loop.default_exception_handler(context)


def _debug_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.25  # debug mode logs callbacks slower than this
    loop.set_exception_handler(_record_loop_error)
    return loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"debug": _debug_loop}


@pytest.fixture(autouse=True)
def no_loop_errors() -> Iterator[None]:
    """Fail the test if any exception reached an event loop's exception handler."""
    _loop_errors.clear()
    yield
    errors, _loop_errors[:] = list(_loop_errors), []
    assert not errors, f"exceptions reached the event loop's handler: {errors}"


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any blocking call aiocinder makes on the event loop thread."""
    with blockbuster_ctx(["aiocinder"]) as bb:
        # asyncpg stats ~/.pgpass and ~/.postgresql/* on the loop for each new
        # connection (not each query): its own doing, bounded by the pool size.
        pgserver.allow_asyncpg_connect(bb)
        yield bb


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if LOOP_LAGS:
        name, worst = max(LOOP_LAGS, key=lambda item: item[1])
        terminalreporter.write_line(
            f"worst event-loop lag measured: {worst * 1000:.2f} ms ({name}; "
            f"{len(LOOP_LAGS)} measurements)"
        )


# -- fixtures shared by the resource tests ------------------------------------

@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A SQLite URL for a new database file in the test's directory."""
    return f"sqlite:///{tmp_path / 'aiocinder.sqlite'}"


@pytest_asyncio.fixture
async def lib(db_url: str) -> AsyncIterator[aiocinder.persistence.PersistenceStore]:
    """aiocinder set up on a SQLite file; shut down afterwards."""
    store = await aiocinder.setup(persistence(db_url), host="testhost")
    try:
        yield store
    finally:
        await aiocinder.shutdown()


@pytest_asyncio.fixture
async def backend(lib: object, tmp_path: Path) -> aiocinder.Backend:
    """A backend on the real FileDriver (with latency and faults available)."""
    return await aiocinder.Backend(
        volume_backend_name="files",
        volume_driver=ScriptedFileDriver,
        volumes_dir=str(tmp_path / "volumes"),
    )
