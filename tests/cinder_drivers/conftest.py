"""Fixtures for the tests of Cinder's drivers through aiocinder.

These tests need Cinder (the extra ``aiocinder[cinder]``). Without it only
``test_requirements.py`` is collected: it skips, saying why, except when the
environment variable ``CI`` is set: then it fails, so a CI run cannot pass
by skipping the Cinder tests.

Cinder and the libraries it imports emit warnings of their own when imported
(the suite turns warnings into errors). They are imported here once, with
exactly those warnings ignored, so the tests see Cinder as it runs.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from blockbuster import BlockBuster

import aiocinder

#: Warnings Cinder's dependencies emit when imported: (message regex, category).
IMPORT_WARNINGS: list[tuple[str, type[Warning]]] = [
    # cinder/__init__.py imports eventlet, which announces its own deprecation
    (r"\s*Eventlet is deprecated", Warning),
    # webob (imported through oslo.middleware) still imports the cgi module
    (r"'cgi' is deprecated", DeprecationWarning),
    # oslo.utils and oslo.service modules Cinder imports are deprecated upstream
    (r"eventletutils module is deprecated", DeprecationWarning),
    (r"The 'oslo_service\.\w+' module usage is deprecated", DeprecationWarning),
    # oslo.policy: some of Cinder's policies are deprecated without a reason
    (r".* deprecated without deprecated_reason or deprecated_since", DeprecationWarning),
]
#: Warnings Cinder emits while it runs: (message regex, category).
RUNTIME_WARNINGS: list[tuple[str, type[Warning]]] = [
    # eventlet warns (from an os.register_at_fork hook) on every fork: each
    # command Cinder and os-brick run through oslo.concurrency's processutils
    (r"Using fork\(\) is a bad idea", DeprecationWarning),
    # Cinder's objects still pass item_cls to oslo.versionedobjects' obj_make_list
    (r"Passing item_cls to obj_make_list\(\) is deprecated", DeprecationWarning),
]


def _import_cinder() -> str | None:
    """Import Cinder and the modules the tests use; the reason if that fails."""
    with warnings.catch_warnings():
        for message, category in IMPORT_WARNINGS + RUNTIME_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        try:
            if importlib.util.find_spec("cinder.volume.driver") is None:
                raise ImportError("no module named cinder.volume.driver")
        except ImportError as exc:
            return f"Cinder is not installed (pip install -e '.[cinder]'): {exc}"
        from aiocinder.drivers import cinder as cinder_drivers

        cinder_drivers.import_adapter()
        import cinder.volume.drivers.nfs  # noqa: F401  (the real-I/O tests' driver)
        import tooz.drivers.file  # noqa: F401  (Cinder's coordinator, started per backend)

        from . import fake_array  # noqa: F401
    return None


#: Why the Cinder tests cannot run here (None: they can).
CINDER_MISSING = _import_cinder()

if CINDER_MISSING is None:
    from . import fake_array


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    """Without Cinder, collect only test_requirements.py, which skips saying why
    (or fails when CI is set); the other modules import Cinder."""
    if CINDER_MISSING is not None and collection_path.suffix == ".py":
        return collection_path.name.startswith("test_") and (
            collection_path.name != "test_requirements.py")
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            for message, category in RUNTIME_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(
                    f"ignore:{message}:{category.__module__}.{category.__qualname__}"))


@pytest.fixture(autouse=True)
def _clean_fake_arrays() -> Iterator[None]:
    """Every test starts with empty fake arrays."""
    if CINDER_MISSING is not None:
        yield
        return
    fake_array.ARRAYS.clear()
    fake_array.SEEN.clear()
    yield
    fake_array.ARRAYS.clear()
    fake_array.SEEN.clear()


@pytest.fixture(autouse=True)
def _cinder_setup_undone() -> Iterator[None]:
    """After each test, nothing of the Cinder process setup is left in place."""
    yield
    adapter = sys.modules.get("aiocinder.drivers.cinder.adapter")
    assert adapter is None or not adapter.PROCESS.active, "a Cinder backend was left running"


@pytest.fixture(params=["sqlite", "postgresql"])
def persistence_config(request: pytest.FixtureRequest, tmp_path: Path,
                       blockbuster: BlockBuster) -> Iterator[dict[str, Any]]:
    """A persistence config per store kind (PostgreSQL: skipped without a server,
    failing under CI)."""
    if request.param == "sqlite":
        yield {"storage": "sqlite", "connection": f"sqlite:///{tmp_path / 'db.sqlite'}"}
        return
    import pgserver

    pgserver.allow_asyncpg_connect(blockbuster)
    yield {"storage": "postgresql", "pg_server": pgserver.require_server()}


@pytest_asyncio.fixture
async def cinder_lib(persistence_config: dict[str, Any], tmp_path: Path
                     ) -> AsyncIterator[aiocinder.persistence.PersistenceStore]:
    """aiocinder set up on each store, Cinder's state under the test's directory."""
    config = dict(persistence_config)
    server = config.pop("pg_server", None)
    if server is None:
        store = await aiocinder.setup(config, host="testhost",
                                      state_path=str(tmp_path / "cinder-state"))
        try:
            yield store
        finally:
            await aiocinder.shutdown()
        return
    async with server.database() as dsn:
        store = await aiocinder.setup({"storage": "postgresql", "connection": dsn},
                                      host="testhost", state_path=str(tmp_path / "cinder-state"))
        try:
            yield store
        finally:
            await aiocinder.shutdown()


@pytest_asyncio.fixture
async def fake_backend(cinder_lib: object) -> aiocinder.Backend:
    """A backend on the fake Cinder array driver."""
    return await aiocinder.Backend("array", **fake_array.FAKE_OPTIONS)
