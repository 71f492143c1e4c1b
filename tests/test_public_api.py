"""The public surface: ``aiocinder.__all__`` is the documented API, and it is typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiocinder

DOCUMENTED = {
    # lifecycle
    "setup", "shutdown",
    # this host (os-brick)
    "get_connector_properties",
    # serialization
    "dump", "dumps", "load",
    # the way off cinderlib
    "import_cinderlib",
    # Cinder's drivers
    "list_supported_drivers",
    # resources
    "Backend", "BackendStatistics", "Volume", "VolumeType", "Snapshot", "Connection",
    "KeyValue",
    # errors
    "AiocinderError", "InvalidArgument", "AlreadyExists", "BackendConfigConflict",
    "NotFound", "VolumeNotFound", "SnapshotNotFound", "ConnectionNotFound",
    "InvalidState", "InvalidVolume", "InvalidSnapshot", "InvalidConnection",
    "DriverError", "AttachError", "BackendNotInitialised", "PersistenceError", "ConflictError",
    "SchemaError", "UsageError",
}


def test_all_is_the_documented_api() -> None:
    assert set(aiocinder.__all__) == DOCUMENTED
    assert aiocinder.__all__ == sorted(aiocinder.__all__, key=lambda n: (n[0].islower(), n))


def test_exported_members_belong_to_the_package() -> None:
    for name in aiocinder.__all__:
        member = getattr(aiocinder, name)
        assert member.__module__ == "aiocinder", name


def test_package_is_typed() -> None:
    assert (Path(aiocinder.__file__).parent / "py.typed").is_file()


def test_import_is_light() -> None:
    code = (
        "import sys, aiocinder; "
        "heavy = [m for m in ('os_brick', 'asyncpg', 'cinder', 'eventlet', 'oslo_config') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_import_changes_no_logging_configuration() -> None:
    code = (
        "import logging; before = (logging.root.level, list(logging.root.handlers), "
        "logging.getLogger('aiocinder').handlers); import aiocinder; "
        "after = (logging.root.level, list(logging.root.handlers), "
        "logging.getLogger('aiocinder').handlers); print(before == after)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True"
