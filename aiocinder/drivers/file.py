"""The built-in file driver: volumes are sparse files in one directory.

Layout of ``volumes_dir``::

    volume-<id>      a volume: a sparse file of exactly ``size`` GiB
    snapshot-<id>    a snapshot: a copy of its volume's file

Snapshots and clones are full copies that keep holes: a reflink (``FICLONE``)
where the filesystem can share extents (btrfs, XFS, bcachefs...), otherwise a
copy of the data extents only, found with ``SEEK_DATA``/``SEEK_HOLE``. A copy
is written under a temporary name in the same directory and published under
its final name only once complete and synced, so a crash never leaves a half
copy that looks like a volume; publishing never replaces an existing file.

Connections use os-brick's LOCAL protocol: the "device" is the file itself,
so attaching gives a path that real data can be written to. The driver needs
no root and no hardware.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from ..records import SnapshotRecord, VolumeRecord
from .base import BaseDriver, ModelUpdate

__all__ = ["FileDriver", "FileDriverError"]

GiB: Final = 2**30
#: ``ioctl`` request that makes a file share another file's extents (Linux ``FICLONE``).
FICLONE: Final = 0x40049409
#: Buffer size of the read/write copy when ``copy_file_range`` is not available.
CHUNK_SIZE: Final = 2**20


class FileDriverError(Exception):
    """The file driver could not do what was asked; ``__cause__`` holds any OS error."""


def _reflink(src_fd: int, dst_fd: int) -> None:
    """Make ``dst_fd`` share all of ``src_fd``'s extents (copy-on-write).

    :raises OSError: the filesystem cannot (``EOPNOTSUPP``, ``EXDEV``, ``EINVAL``...).
    """
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` from ``src_fd`` to the same offset of ``dst_fd``."""
    end = offset + length
    copy_file_range = getattr(os, "copy_file_range", None)
    while copy_file_range is not None and offset < end:
        try:
            done = copy_file_range(src_fd, dst_fd, end - offset, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            break  # not between these files: read and write instead
        if done == 0:
            return  # the source shrank under us
        offset += done
    while offset < end:
        data = os.pread(src_fd, min(CHUNK_SIZE, end - offset), offset)
        if not data:
            return
        view = memoryview(data)
        while view:
            written = os.pwrite(dst_fd, view, offset)
            view = view[written:]
            offset += written


def _copy_extents(src_fd: int, dst_fd: int) -> None:
    """Copy the data extents of ``src_fd`` to ``dst_fd``, leaving its holes as holes.

    The destination ends with the source's size.
    """
    size = os.fstat(src_fd).st_size
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            break  # only a hole remains
        end = os.lseek(src_fd, start, os.SEEK_HOLE)
        _copy_range(src_fd, dst_fd, start, end - start)
        offset = end
    os.ftruncate(dst_fd, size)


def _check_id(kind: str, value: object) -> str:
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\x00" in value:
        raise FileDriverError(f"unsafe {kind} id for a file name: {value!r}")
    return value


class FileDriver(BaseDriver):
    """Volumes as sparse files in ``volumes_dir``, attached through os-brick's LOCAL protocol.

    :param backend_name: the backend's ``volume_backend_name``.
    :param volumes_dir: the directory holding the files; stored as an absolute path.
    :param pool_name: the name of the single pool in the stats (default: ``backend_name``).
    """

    vendor_name: Final = "aiocinder"
    driver_version: Final = "1.0"
    storage_protocol: Final = "local"

    def __init__(
        self,
        *,
        backend_name: str,
        volumes_dir: str | os.PathLike[str],
        pool_name: str | None = None,
    ) -> None:
        super().__init__(backend_name=backend_name)
        self.volumes_dir = Path(os.path.abspath(volumes_dir))
        self.pool_name = pool_name or backend_name
        self._stats: dict[str, Any] | None = None

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(backend_name={self.backend_name!r}, volumes_dir={str(self.volumes_dir)!r})"

    # -- setup ---------------------------------------------------------------

    def do_setup(self) -> None:
        """Create ``volumes_dir`` (mode 0700) if it does not exist yet.

        :raises FileDriverError: its parent does not exist, or it cannot be created.
        """
        try:
            self.volumes_dir.mkdir(mode=0o700)
        except FileExistsError:
            pass  # check_for_setup_error says if it is usable
        except FileNotFoundError as exc:
            raise FileDriverError(
                f"cannot create volumes_dir {self.volumes_dir}: "
                f"its parent {self.volumes_dir.parent} does not exist"
            ) from exc
        except OSError as exc:
            raise FileDriverError(
                f"cannot create volumes_dir {self.volumes_dir}: {exc.strerror}"
            ) from exc

    def check_for_setup_error(self) -> None:
        """Check that ``volumes_dir`` is a writable directory.

        :raises FileDriverError: it is missing, not a directory, or not writable.
        """
        path = self.volumes_dir
        if not path.exists():
            raise FileDriverError(f"volumes_dir {path} does not exist")
        if not path.is_dir():
            raise FileDriverError(f"volumes_dir {path} is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise FileDriverError(f"volumes_dir {path} is not writable")

    # -- volumes -------------------------------------------------------------

    def create_volume(self, volume: VolumeRecord) -> ModelUpdate:
        """Create ``volume-<id>``: a sparse file of exactly ``volume.size`` GiB, mode 0600.

        :raises FileDriverError: the file already exists (it is left untouched), or the
            filesystem failed (no partial file is left).
        """
        path = self._volume_path(volume)
        with self._os_errors("create", path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # exactly, whatever the umask
                os.ftruncate(fd, volume.size * GiB)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            os.close(fd)
            self._sync_dir()
        return {"provider_location": str(path)}

    def delete_volume(self, volume: VolumeRecord) -> None:
        """Delete ``volume-<id>``; a missing file is not an error.

        :raises FileDriverError: the file exists but cannot be removed.
        """
        self._unlink(self._volume_path(volume))

    def extend_volume(self, volume: VolumeRecord, new_size: int) -> None:
        """Grow the volume's file to ``new_size`` GiB (the new space is a hole).

        :raises FileDriverError: ``new_size`` is smaller than the file, the file is
            missing, or the filesystem failed.
        """
        path = self._volume_path(volume)
        new_bytes = new_size * GiB
        with self._os_errors("extend", path):
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                current = os.fstat(fd).st_size
                if new_bytes < current:
                    raise FileDriverError(
                        f"cannot shrink {path.name} from {current} to {new_bytes} bytes"
                    )
                os.ftruncate(fd, new_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)

    def create_cloned_volume(self, volume: VolumeRecord, src_vref: VolumeRecord) -> ModelUpdate:
        """Create ``volume`` as a copy of ``src_vref``, grown to ``volume.size`` GiB if larger.

        :raises FileDriverError: the source is missing, the destination exists, or the
            filesystem failed (nothing is left under the destination name).
        """
        path = self._volume_path(volume)
        self._copy(self._volume_path(src_vref), path, min_size=volume.size * GiB)
        return {"provider_location": str(path)}

    def create_volume_from_snapshot(
        self, volume: VolumeRecord, snapshot: SnapshotRecord
    ) -> ModelUpdate:
        """Create ``volume`` as a copy of ``snapshot``, grown to ``volume.size`` GiB if larger.

        :raises FileDriverError: the snapshot is missing, the destination exists, or the
            filesystem failed (nothing is left under the destination name).
        """
        path = self._volume_path(volume)
        self._copy(self._snapshot_path(snapshot), path, min_size=volume.size * GiB)
        return {"provider_location": str(path)}

    # -- snapshots -----------------------------------------------------------

    def create_snapshot(self, snapshot: SnapshotRecord) -> ModelUpdate:
        """Create ``snapshot-<id>`` as a copy of the file of ``snapshot.volume_id``.

        :raises FileDriverError: the volume is missing, the snapshot exists, or the
            filesystem failed (nothing is left under the snapshot name).
        """
        _check_id("volume", snapshot.volume_id)
        path = self._snapshot_path(snapshot)
        self._copy(self.volumes_dir / snapshot.volume_storage_name, path, min_size=0)
        return {"provider_location": str(path)}

    def delete_snapshot(self, snapshot: SnapshotRecord) -> None:
        """Delete ``snapshot-<id>``; a missing file is not an error.

        :raises FileDriverError: the file exists but cannot be removed.
        """
        self._unlink(self._snapshot_path(snapshot))

    # -- connections ---------------------------------------------------------

    def initialize_connection(
        self, volume: VolumeRecord, connector: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Answer os-brick's LOCAL protocol: the device is the volume's file.

        :raises FileDriverError: the volume's file does not exist.
        """
        path = self._volume_path(volume)
        if not path.is_file():
            raise FileDriverError(f"cannot connect {path.name}: {path} does not exist")
        return {
            "driver_volume_type": "local",
            "data": {"device_path": str(path), "access_mode": "rw"},
        }

    def terminate_connection(
        self, volume: VolumeRecord, connector: Mapping[str, Any] | None, force: bool = False
    ) -> None:
        """Nothing to unmap: a local file is not exported."""

    # -- stats ---------------------------------------------------------------

    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        """Capacity of the filesystem holding ``volumes_dir``, in GiB (2 decimals).

        The answer is cached; ``refresh=True`` measures again.

        :raises FileDriverError: the filesystem cannot be queried.
        """
        if self._stats is None or refresh:
            with self._os_errors("get stats of", self.volumes_dir):
                st = os.statvfs(self.volumes_dir)
            total = round(st.f_blocks * st.f_frsize / GiB, 2)
            free = round(st.f_bavail * st.f_frsize / GiB, 2)
            self._stats = {
                "volume_backend_name": self.backend_name,
                "vendor_name": self.vendor_name,
                "driver_version": self.driver_version,
                "storage_protocol": self.storage_protocol,
                "total_capacity_gb": total,
                "free_capacity_gb": free,
                "pools": [
                    {
                        "pool_name": self.pool_name,
                        "total_capacity_gb": total,
                        "free_capacity_gb": free,
                        "thin_provisioning_support": True,
                        "thick_provisioning_support": False,
                        "reserved_percentage": 0,
                        "QoS_support": False,
                    }
                ],
            }
        return copy.deepcopy(self._stats)

    # -- helpers -------------------------------------------------------------

    def _volume_path(self, volume: VolumeRecord) -> Path:
        _check_id("volume", volume.id)
        return self.volumes_dir / volume.storage_name

    def _snapshot_path(self, snapshot: SnapshotRecord) -> Path:
        _check_id("snapshot", snapshot.id)
        return self.volumes_dir / snapshot.storage_name

    @contextlib.contextmanager
    def _os_errors(self, action: str, path: Path) -> Iterator[None]:
        """Turn an :class:`OSError` into a :class:`FileDriverError` naming the action and path."""
        try:
            yield
        except OSError as exc:
            where = f"{path.name} in {path.parent}"
            if exc.errno == errno.ENOSPC:
                message = f"no space left on device for {where} ({action})"
            elif exc.errno == errno.EEXIST:
                message = f"cannot {action} {where}: it already exists"
            elif exc.errno == errno.ENOENT and exc.filename not in (None, str(path)):
                message = f"cannot {action} {where}: {exc.filename} does not exist"
            else:
                message = f"cannot {action} {where}: {exc.strerror or exc}"
            raise FileDriverError(message) from exc

    def _copy(self, src: Path, dst: Path, *, min_size: int) -> None:
        """Copy ``src`` to ``dst`` keeping holes, then grow ``dst`` to ``min_size`` bytes.

        The copy is written to a temporary file in ``volumes_dir``, synced, and only
        then linked under ``dst``, which must not exist.
        """
        action = f"copy {src.name} to"
        with self._os_errors(action, dst):
            if os.path.lexists(dst):  # fail before copying; _publish checks atomically
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
            src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            try:
                tmp_fd, tmp = tempfile.mkstemp(dir=self.volumes_dir, prefix=f".{dst.name}.")
                try:
                    try:
                        _reflink(src_fd, tmp_fd)
                    except OSError:
                        _copy_extents(src_fd, tmp_fd)
                    if os.fstat(tmp_fd).st_size < min_size:
                        os.ftruncate(tmp_fd, min_size)
                    os.fsync(tmp_fd)
                    os.close(tmp_fd)
                    tmp_fd = -1
                    self._publish(Path(tmp), dst)
                finally:
                    if tmp_fd >= 0:
                        os.close(tmp_fd)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            finally:
                os.close(src_fd)
            self._sync_dir()

    @staticmethod
    def _publish(tmp: Path, dst: Path) -> None:
        """Give the complete file ``tmp`` the name ``dst``, never replacing an existing file."""
        try:
            os.link(tmp, dst)  # atomic, and fails with EEXIST where os.replace would overwrite
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # A filesystem without hard links: check, then rename.
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from exc
            os.replace(tmp, dst)

    def _unlink(self, path: Path) -> None:
        with self._os_errors("delete", path):
            path.unlink(missing_ok=True)

    def _sync_dir(self) -> None:
        """Make new names in ``volumes_dir`` durable."""
        fd = os.open(self.volumes_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
