"""Cinder's real NFS driver doing real I/O through aiocinder.

The kernel here may have no NFS client, so the share is "mounted" by a bind
mount of a local directory at the very mount point the driver computes
(``realpath(nfs_mount_point_base)/md5(share)``): os-brick's RemoteFsClient
finds it in /proc/mounts and mounts nothing. From there the driver works on
real files with qemu-img, as on an NFS server.

Needs root (for the bind mount), ``mount.nfs`` (nfs-common, which the driver
checks for) and qemu-img/qemu-io (qemu-utils). Without them the tests skip
and say why; when the environment variable ``CI`` is set they fail instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import aiocinder

pytestmark = pytest.mark.asyncio

GiB = 1 << 30
SHARE = "192.0.2.1:/srv/aiocinder"  # never contacted: its mount point is pre-mounted


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root, to bind-mount the share at the driver's mount point"
    for tool, package in (("mount.nfs", "nfs-common"), ("qemu-img", "qemu-utils"),
                          ("qemu-io", "qemu-utils")):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/sbin:/usr/sbin") is None:
            return f"needs {tool} (Debian: apt-get install {package})"
    return None


@dataclass
class Share:
    export: Path  # the directory that stands for the NFS export
    mount_point: Path
    options: dict[str, Any]


@pytest.fixture
def nfs_share(tmp_path: Path) -> Iterator[Share]:
    """A bind mount of a local directory where the NFS driver expects the share."""
    if (reason := _unavailable()) is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the NFS driver test must run when CI is set: {reason}")
        pytest.skip(reason)
    state = tmp_path / "state"
    export = tmp_path / "export"
    export.mkdir()
    digest = hashlib.md5(SHARE.encode(), usedforsecurity=False).hexdigest()
    mount_point = Path(os.path.realpath(state / "mnt")) / digest
    mount_point.mkdir(parents=True)
    shares = tmp_path / "nfs_shares"
    shares.write_text(SHARE + "\n")
    done = subprocess.run(["mount", "--bind", str(export), str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = f"cannot bind-mount here: {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield Share(export, mount_point, {
            "volume_driver": "cinder.volume.drivers.nfs.NfsDriver",
            "nfs_shares_config": str(shares),
            "nfs_snapshot_support": True,
            # plain files owned by root, as on a share without root squash
            "nas_secure_file_operations": "false",
            "nas_secure_file_permissions": "false",
        })
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest_asyncio.fixture
async def nfs_lib(tmp_path: Path) -> Any:
    store = await aiocinder.setup(
        {"storage": "sqlite", "connection": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        host="testhost", state_path=str(tmp_path / "state"))
    try:
        yield store
    finally:
        await aiocinder.shutdown()


def write(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def qemu_io_write(path: Path, image_format: str, offset: int, pattern: int) -> None:
    subprocess.run(["qemu-io", "-f", image_format, "-c",
                    f"write -P {pattern:#x} {offset} 4096", str(path)],
                   check=True, capture_output=True)


def image_format(path: Path) -> str:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    import json

    return str(json.loads(out)["format"])


async def test_nfs_driver_keeps_the_bytes(nfs_share: Share, nfs_lib: Any,
                                          tmp_path: Path) -> None:
    store = nfs_lib
    backend = await aiocinder.Backend("nfs", **nfs_share.options)
    stats = await backend.stats(refresh=True)
    assert stats["storage_protocol"] == "nfs" and stats["pools"][0]["pool_name"] == "nfs"
    assert stats["total_capacity_gb"] > 0

    vol = await backend.create_volume(1, name="data")
    path = nfs_share.export / f"volume-{vol.id}"
    assert path.stat().st_size == GiB and path.stat().st_blocks * 512 < GiB  # sparse
    assert vol.provider_location == SHARE
    assert dict(vol.admin_metadata) == {"format": "raw"}  # written by the driver
    (stored,) = await store.get_volumes(volume_id=vol.id)
    assert dict(stored.admin_metadata) == {"format": "raw"}
    write(path, 4096, b"before the snapshot")

    snap = await vol.create_snapshot(name="s1")
    assert snap.status == "available"
    # the volume now writes to a qcow2 overlay; the snapshot keeps the old bytes
    overlay = nfs_share.export / f"volume-{vol.id}.{snap.id}"
    assert overlay.is_file() and image_format(overlay) == "qcow2"
    assert (nfs_share.export / f"volume-{vol.id}.info").is_file()
    qemu_io_write(overlay, "qcow2", 8192, 0x5A)

    restored = await snap.create_volume(name="restored")
    restored_path = nfs_share.export / f"volume-{restored.id}"
    assert read(restored_path, 4096, 19) == b"before the snapshot"
    assert read(restored_path, 8192, 4) == b"\0\0\0\0", "a write after the snapshot"

    clone = await vol.clone(name="copy")
    clone_path = nfs_share.export / f"volume-{clone.id}"
    assert read(clone_path, 4096, 19) == b"before the snapshot"
    assert read(clone_path, 8192, 4) == b"\x5a" * 4, "the clone has the volume's latest data"
    # the driver's temporary snapshot of the clone came and went with a record
    assert [s.id for s in await store.get_snapshots(volume_id=vol.id)] == [snap.id]

    await restored.extend(2)
    assert restored_path.stat().st_size == 2 * GiB and restored.size == 2
    assert read(restored_path, 4096, 19) == b"before the snapshot"

    conn = await vol.connect({"host": "node-1", "ip": "10.0.0.5"})
    assert conn.protocol == "nfs"
    assert conn.conn_info["data"]["export"] == SHARE
    assert conn.conn_info["data"]["name"] == overlay.name
    assert conn.conn_info["data"]["format"] == "qcow2"
    await conn.disconnect()

    await backend.refresh()
    assert {v.id for v in await backend.volumes()} == {vol.id, restored.id, clone.id}
    await snap.delete()  # the overlay is merged back into the volume's file
    assert not overlay.exists() and image_format(path) == "raw"
    assert read(path, 4096, 19) == b"before the snapshot"
    assert read(path, 8192, 4) == b"\x5a" * 4
    for volume in (clone, restored, vol):
        await volume.delete()
    assert sorted(os.listdir(nfs_share.export)) == []
    assert await store.get_volumes() == []
