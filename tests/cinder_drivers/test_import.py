"""Cinder stays out of the process until a Cinder backend starts; listing its drivers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

import aiocinder


def run_python(code: str) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=env, timeout=300)
    return done.stdout.strip()


def test_importing_aiocinder_imports_no_cinder() -> None:
    out = run_python(
        "import sys, aiocinder, aiocinder.drivers.cinder; "
        "print(sorted(m for m in ('cinder', 'oslo_config', 'eventlet', 'os_brick') "
        "if m in sys.modules))"
    )
    assert out == "[]"


def test_importing_cinder_adds_no_root_handler() -> None:
    out = run_python(
        "import logging; root = logging.getLogger(); before = list(root.handlers); "
        "from aiocinder.drivers.cinder import import_adapter; import_adapter(); "
        "print(list(root.handlers) == before, logging.root.level)"
    )
    assert out.split() == ["True", str(logging.WARNING)]


def test_a_thread_that_imported_cinder_does_not_block_exit() -> None:
    # eventlet's first import breaks the importing thread's end-of-thread lock;
    # aiocinder imports in a daemon thread, so a worker thread and the exit are fine
    out = run_python(
        "import threading; from aiocinder.drivers.cinder import import_adapter; "
        "t = threading.Thread(target=import_adapter); t.start(); t.join(60); "
        "print(t.is_alive())"
    )
    assert out == "False"


@pytest.mark.asyncio
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_list_supported_drivers() -> None:
    v1 = await aiocinder.list_supported_drivers()
    assert "cinder" not in sys.modules or "cinder.volume.drivers.pure" not in sys.modules, (
        "the listing imported Cinder's drivers in this process")
    assert len(v1) > 90
    nfs = v1["NfsDriver"]
    assert nfs["class_fqn"] == "cinder.volume.drivers.nfs.NfsDriver"
    assert {"version", "ci_wiki_name", "supported", "desc"} <= nfs.keys()
    shares = next(o for o in nfs["driver_options"] if o["name"] == "nfs_shares_config")
    assert shares["type"] == "String" and shares["secret"] == "False"
    assert all(isinstance(v, str) for v in shares.values())
    # Nexenta's two generations share class names: both are kept, by full path
    assert "cinder.volume.drivers.nexenta.nfs.NexentaNfsDriver" in v1
    assert "cinder.volume.drivers.nexenta.ns5.nfs.NexentaNfsDriver" in v1

    v2 = await aiocinder.list_supported_drivers(output_version=2)
    assert v2.keys() == v1.keys()
    shares = next(o for o in v2["NfsDriver"]["driver_options"]
                  if o["name"] == "nfs_shares_config")
    assert shares["secret"] is False and shares["default"] == "/etc/cinder/nfs_shares"
    assert shares["type"]["type_class"] == "String"
    json.dumps(v2)  # JSON data throughout


@pytest.mark.asyncio
@pytest.mark.parametrize("version", [0, 3, "1", 1.0, True])
async def test_list_supported_drivers_versions(version: object) -> None:
    with pytest.raises(aiocinder.InvalidArgument, match="output_version"):
        await aiocinder.list_supported_drivers(output_version=version)  # type: ignore[arg-type]
