"""FileDriver against real files in a temporary directory."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from aiocinder.drivers import file as file_mod
from aiocinder.drivers.base import BaseDriver, VolumeDriver
from aiocinder.drivers.file import FileDriver, FileDriverError, GiB
from aiocinder.records import SnapshotRecord, VolumeRecord

MiB = 2**20
#: Offsets of the markers written into a 1 GiB volume: start, 700 MiB, end.
OFFSETS = (0, 700 * MiB, GiB - 16)
MARK = b"aiocinder-mark!!"  # 16 bytes


def vol(vid: str, size: int = 1) -> VolumeRecord:
    return VolumeRecord(id=vid, backend_name="file", size=size)


def snap(sid: str, vid: str, size: int = 1) -> SnapshotRecord:
    return SnapshotRecord(id=sid, volume_id=vid, backend_name="file", volume_size=size)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def read_at(path: Path, offset: int, length: int = len(MARK)) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def write_at(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def leftovers(directory: Path) -> list[str]:
    """Names in ``directory`` that are not volumes or snapshots (temporary copies)."""
    return sorted(
        p.name for p in directory.iterdir() if not p.name.startswith(("volume-", "snapshot-"))
    )


@pytest.fixture
def driver(tmp_path: Path) -> FileDriver:
    d = FileDriver(backend_name="file", volumes_dir=tmp_path / "volumes")
    d.do_setup()
    d.check_for_setup_error()
    return d


@pytest.fixture
def no_reflink(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Make reflinks unsupported, as on ext4; records the attempts."""
    calls: list[tuple[int, int]] = []

    def refuse(src_fd: int, dst_fd: int) -> None:
        calls.append((src_fd, dst_fd))
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(file_mod, "_reflink", refuse)
    return calls


# -- construction and setup -------------------------------------------------


def test_is_a_driver(driver: FileDriver) -> None:
    assert isinstance(driver, BaseDriver)
    assert isinstance(driver, VolumeDriver)


def test_unknown_option_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        FileDriver(backend_name="file", volumes_dir=tmp_path, volume_group="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        FileDriver("file", tmp_path)  # type: ignore[call-arg]


def test_volumes_dir_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d = FileDriver(backend_name="file", volumes_dir="vols")
    assert d.volumes_dir == tmp_path / "vols"
    assert d.volumes_dir.is_absolute()


def test_do_setup_creates_dir_0700(tmp_path: Path) -> None:
    d = FileDriver(backend_name="file", volumes_dir=tmp_path / "v")
    d.do_setup()
    assert stat.S_IMODE((tmp_path / "v").stat().st_mode) == 0o700
    d.do_setup()  # already there: fine
    d.check_for_setup_error()


def test_do_setup_needs_the_parent(tmp_path: Path) -> None:
    d = FileDriver(backend_name="file", volumes_dir=tmp_path / "missing" / "v")
    with pytest.raises(FileDriverError, match=r"parent .* does not exist"):
        d.do_setup()
    assert not (tmp_path / "missing").exists()


def test_check_for_setup_error_missing_dir(tmp_path: Path) -> None:
    d = FileDriver(backend_name="file", volumes_dir=tmp_path / "nope")
    with pytest.raises(FileDriverError, match="does not exist"):
        d.check_for_setup_error()


def test_check_for_setup_error_not_a_dir(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    d = FileDriver(backend_name="file", volumes_dir=tmp_path / "f")
    with pytest.raises(FileDriverError, match="not a directory"):
        d.check_for_setup_error()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_for_setup_error_read_only(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(FileDriverError, match="not writable"):
            FileDriver(backend_name="file", volumes_dir=ro).check_for_setup_error()
    finally:
        ro.chmod(0o700)


def test_check_for_setup_error_not_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    d = FileDriver(backend_name="file", volumes_dir=tmp_path)
    with pytest.raises(FileDriverError, match="not writable"):
        d.check_for_setup_error()


@pytest.mark.parametrize("bad", ["", ".", "..", "../etc", "a/b", "x\x00y"])
def test_unsafe_ids_are_refused(driver: FileDriver, bad: str) -> None:
    driver.create_volume(vol("good"))
    with pytest.raises(FileDriverError, match="unsafe"):
        driver.create_volume(vol(bad))
    with pytest.raises(FileDriverError, match="unsafe"):
        driver.delete_volume(vol(bad))
    with pytest.raises(FileDriverError, match="unsafe"):
        driver.create_snapshot(snap(bad, "good"))
    with pytest.raises(FileDriverError, match="unsafe"):
        driver.create_snapshot(snap("s", bad))
    with pytest.raises(FileDriverError, match="unsafe"):
        driver.create_cloned_volume(vol("c"), vol(bad))
    with pytest.raises(FileDriverError, match="unsafe"):
        driver.initialize_connection(vol(bad), {})
    assert sorted(p.name for p in driver.volumes_dir.iterdir()) == ["volume-good"]


# -- volumes ----------------------------------------------------------------


def test_create_volume_is_sparse_exact_and_private(driver: FileDriver) -> None:
    update = driver.create_volume(vol("v1", size=2))
    path = driver.volumes_dir / "volume-v1"
    assert update == {"provider_location": str(path)}
    st = path.stat()
    assert st.st_size == 2 * GiB
    assert st.st_blocks * 512 < MiB
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_ISREG(st.st_mode)


def test_create_volume_twice_keeps_the_first(driver: FileDriver) -> None:
    driver.create_volume(vol("v1"))
    path = driver.volumes_dir / "volume-v1"
    write_at(path, 0, MARK)
    with pytest.raises(FileDriverError, match="already exists"):
        driver.create_volume(vol("v1", size=2))
    assert read_at(path, 0) == MARK
    assert path.stat().st_size == GiB


def test_extend_grows_and_refuses_shrinking(driver: FileDriver) -> None:
    driver.create_volume(vol("v1"))
    path = driver.volumes_dir / "volume-v1"
    write_at(path, 5, MARK)
    driver.extend_volume(vol("v1"), 3)
    assert path.stat().st_size == 3 * GiB
    assert allocated(path) < MiB
    assert read_at(path, 5) == MARK
    with pytest.raises(FileDriverError, match="shrink"):
        driver.extend_volume(vol("v1", 3), 2)
    assert path.stat().st_size == 3 * GiB
    driver.extend_volume(vol("v1", 3), 3)  # same size: nothing to do
    assert path.stat().st_size == 3 * GiB


def test_extend_missing_volume(driver: FileDriver) -> None:
    with pytest.raises(FileDriverError, match="volume-ghost"):
        driver.extend_volume(vol("ghost"), 2)
    assert not (driver.volumes_dir / "volume-ghost").exists()


def test_delete_is_idempotent(driver: FileDriver) -> None:
    driver.create_volume(vol("v1"))
    driver.create_snapshot(snap("s1", "v1"))
    driver.delete_snapshot(snap("s1", "v1"))
    driver.delete_snapshot(snap("s1", "v1"))
    driver.delete_volume(vol("v1"))
    driver.delete_volume(vol("v1"))
    assert list(driver.volumes_dir.iterdir()) == []


def test_delete_failure_is_wrapped(driver: FileDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    driver.create_volume(vol("v1"))

    def fail(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "unlink", fail)
    with pytest.raises(FileDriverError, match="cannot delete volume-v1") as info:
        driver.delete_volume(vol("v1"))
    assert isinstance(info.value.__cause__, PermissionError)


# -- copies -----------------------------------------------------------------


@pytest.fixture
def marked(driver: FileDriver) -> Path:
    """volume-src: 1 GiB with MARK at OFFSETS, otherwise holes."""
    driver.create_volume(vol("src"))
    path = driver.volumes_dir / "volume-src"
    for offset in OFFSETS:
        write_at(path, offset, MARK)
    return path


def assert_copy(path: Path, size: int) -> None:
    assert path.stat().st_size == size
    assert allocated(path) < MiB
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for offset in OFFSETS:
        assert read_at(path, offset) == MARK
    assert read_at(path, 4096, 64) == bytes(64)


def test_snapshot_clone_and_volume_from_snapshot(driver: FileDriver, marked: Path) -> None:
    d = driver.volumes_dir
    assert driver.create_snapshot(snap("s1", "src")) == {
        "provider_location": str(d / "snapshot-s1")
    }
    assert driver.create_cloned_volume(vol("clone"), vol("src")) == {
        "provider_location": str(d / "volume-clone")
    }
    assert driver.create_volume_from_snapshot(vol("big", size=2), snap("s1", "src")) == {
        "provider_location": str(d / "volume-big")
    }
    assert_copy(d / "snapshot-s1", GiB)
    assert_copy(d / "volume-clone", GiB)
    assert_copy(d / "volume-big", 2 * GiB)
    assert read_at(d / "volume-big", GiB, 64) == bytes(64)

    # The copies are independent of their source.
    write_at(marked, 0, b"CHANGED")
    assert read_at(d / "snapshot-s1", 0) == MARK
    assert read_at(d / "volume-clone", 0) == MARK
    write_at(d / "volume-clone", 700 * MiB, b"CLONE")
    assert read_at(marked, 700 * MiB) == MARK
    assert leftovers(d) == []


def test_clone_grows_to_the_new_size(driver: FileDriver, marked: Path) -> None:
    driver.create_cloned_volume(vol("clone", size=3), vol("src"))
    assert_copy(driver.volumes_dir / "volume-clone", 3 * GiB)


def test_copy_of_sparse_gib_is_fast(driver: FileDriver) -> None:
    driver.create_volume(vol("empty"))
    start = time.monotonic()
    driver.create_snapshot(snap("s", "empty"))
    assert time.monotonic() - start < 0.5
    path = driver.volumes_dir / "snapshot-s"
    assert path.stat().st_size == GiB
    assert allocated(path) == 0


def test_reflink_is_tried_first(driver: FileDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    driver.create_volume(vol("src"))
    calls: list[tuple[int, int]] = []

    def fake_reflink(src_fd: int, dst_fd: int) -> None:  # stands in for a FICLONE that works
        calls.append((src_fd, dst_fd))
        os.ftruncate(dst_fd, os.fstat(src_fd).st_size)

    def no_extents(src_fd: int, dst_fd: int) -> None:
        raise AssertionError("sparse copy used although the reflink worked")

    monkeypatch.setattr(file_mod, "_reflink", fake_reflink)
    monkeypatch.setattr(file_mod, "_copy_extents", no_extents)
    driver.create_cloned_volume(vol("clone", size=2), vol("src"))
    assert len(calls) == 1
    assert (driver.volumes_dir / "volume-clone").stat().st_size == 2 * GiB


def test_reflink_ioctl_is_ficlone(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int, int]] = []
    monkeypatch.setattr(fcntl, "ioctl", lambda fd, req, arg: seen.append((fd, req, arg)))
    file_mod._reflink(3, 4)
    assert seen == [(4, 0x40049409, 3)]


def test_fallback_keeps_holes_and_bytes(
    driver: FileDriver, marked: Path, no_reflink: list[tuple[int, int]]
) -> None:
    driver.create_snapshot(snap("s1", "src"))
    driver.create_volume_from_snapshot(vol("big", size=2), snap("s1", "src"))
    assert len(no_reflink) == 2
    assert_copy(driver.volumes_dir / "snapshot-s1", GiB)
    assert_copy(driver.volumes_dir / "volume-big", 2 * GiB)


def make_extents(path: Path) -> bytes:
    """A 10 MiB file with data extents of various sizes and alignments between holes."""
    size = 10 * MiB
    extents = {
        0: b"A" * 4096,
        MiB: os.urandom(64 * 1024),
        3 * MiB + 123: os.urandom(3 * MiB + 5),  # longer than a read/write chunk
        8 * MiB: b"Z" * 10,
    }
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in extents.items():
            f.seek(offset)
            f.write(data)
    return path.read_bytes()


@pytest.mark.parametrize("mode", ["copy_file_range", "copy_file_range refused", "read/write"])
def test_copy_extents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    expected = make_extents(src)
    if mode == "copy_file_range refused":

        def refuse(*args: Any) -> int:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    elif mode == "read/write":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    with src.open("rb") as s, dst.open("wb") as d:
        file_mod._copy_extents(s.fileno(), d.fileno())
    assert dst.read_bytes() == expected
    # Holes stay holes: no more blocks than the source (filesystem rounding aside).
    assert allocated(dst) <= allocated(src) + 64 * 1024
    assert allocated(dst) < 5 * MiB


@pytest.mark.parametrize(
    "content", [b"", b"dense" * 1000, None], ids=["empty", "dense", "data-at-end"]
)
def test_copy_extents_edges(tmp_path: Path, content: bytes | None) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    if content is None:
        with src.open("wb") as f:
            f.seek(4 * MiB)
            f.write(b"tail")
    else:
        src.write_bytes(content)
    with src.open("rb") as s, dst.open("wb") as d:
        file_mod._copy_extents(s.fileno(), d.fileno())
    assert dst.read_bytes() == src.read_bytes()


def test_copy_publishes_only_when_complete(
    driver: FileDriver,
    marked: Path,
    no_reflink: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = driver.volumes_dir / "volume-clone"
    real = file_mod._copy_extents
    seen: list[str] = []

    def watch(src_fd: int, dst_fd: int) -> None:
        assert not final.exists()
        seen.extend(leftovers(driver.volumes_dir))
        real(src_fd, dst_fd)

    monkeypatch.setattr(file_mod, "_copy_extents", watch)
    driver.create_cloned_volume(vol("clone"), vol("src"))
    assert len(seen) == 1
    assert seen[0].startswith(".volume-clone.")
    assert_copy(final, GiB)
    assert leftovers(driver.volumes_dir) == []


def test_copy_never_overwrites(driver: FileDriver, marked: Path) -> None:
    driver.create_volume(vol("dst"))
    dst = driver.volumes_dir / "volume-dst"
    write_at(dst, 0, b"precious")
    with pytest.raises(FileDriverError, match="already exists"):
        driver.create_cloned_volume(vol("dst"), vol("src"))
    assert read_at(dst, 0, 8) == b"precious"
    assert leftovers(driver.volumes_dir) == []


def test_copy_never_overwrites_a_racing_file(
    driver: FileDriver,
    marked: Path,
    no_reflink: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dst = driver.volumes_dir / "volume-dst"
    real = file_mod._copy_extents

    def racing(src_fd: int, dst_fd: int) -> None:
        dst.write_bytes(b"appeared meanwhile")
        real(src_fd, dst_fd)

    monkeypatch.setattr(file_mod, "_copy_extents", racing)
    with pytest.raises(FileDriverError, match="already exists"):
        driver.create_cloned_volume(vol("dst"), vol("src"))
    assert dst.read_bytes() == b"appeared meanwhile"
    assert leftovers(driver.volumes_dir) == []


def test_copy_of_missing_source(driver: FileDriver) -> None:
    with pytest.raises(FileDriverError, match="volume-ghost"):
        driver.create_snapshot(snap("s1", "ghost"))
    with pytest.raises(FileDriverError, match="snapshot-ghost"):
        driver.create_volume_from_snapshot(vol("v"), snap("ghost", "v0"))
    assert list(driver.volumes_dir.iterdir()) == []


# -- full disk --------------------------------------------------------------


def enospc(*args: Any) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_enospc_on_create(driver: FileDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "ftruncate", enospc)
    with pytest.raises(FileDriverError, match="no space left on device for volume-v1 in ") as info:
        driver.create_volume(vol("v1"))
    assert str(driver.volumes_dir) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert list(driver.volumes_dir.iterdir()) == []


@pytest.mark.parametrize("where", ["copy_file_range", "pwrite"])
def test_enospc_on_copy(
    driver: FileDriver,
    marked: Path,
    no_reflink: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    if where == "pwrite":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    monkeypatch.setattr(os, where, enospc, raising=False)
    with pytest.raises(FileDriverError, match="no space left on device for snapshot-s1 in "):
        driver.create_snapshot(snap("s1", "src"))
    assert sorted(p.name for p in driver.volumes_dir.iterdir()) == ["volume-src"]


def test_enospc_on_grow_after_copy(
    driver: FileDriver, marked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.ftruncate

    def fail_big(fd: int, length: int) -> None:
        if length > GiB:
            enospc()
        real(fd, length)

    monkeypatch.setattr(os, "ftruncate", fail_big)
    with pytest.raises(FileDriverError, match="no space left on device for volume-big"):
        driver.create_cloned_volume(vol("big", size=2), vol("src"))
    assert sorted(p.name for p in driver.volumes_dir.iterdir()) == ["volume-src"]


# -- connections and stats --------------------------------------------------


def test_initialize_connection_is_local(driver: FileDriver) -> None:
    driver.create_volume(vol("v1"))
    info = driver.initialize_connection(vol("v1"), {"host": "h", "ip": "127.0.0.1"})
    path = driver.volumes_dir / "volume-v1"
    assert info == {
        "driver_volume_type": "local",
        "data": {"device_path": str(path), "access_mode": "rw"},
    }
    assert os.path.isabs(info["data"]["device_path"])
    assert driver.create_export(vol("v1"), {}) is None
    driver.terminate_connection(vol("v1"), None)
    driver.remove_export(vol("v1"))
    assert path.exists()


def test_initialize_connection_missing_volume(driver: FileDriver) -> None:
    with pytest.raises(FileDriverError, match="volume-ghost"):
        driver.initialize_connection(vol("ghost"), {})


def test_stats_match_statvfs(tmp_path: Path) -> None:
    d = FileDriver(backend_name="file", volumes_dir=tmp_path, pool_name="pool0")
    stats = d.get_volume_stats()
    st = os.statvfs(tmp_path)
    total = round(st.f_blocks * st.f_frsize / GiB, 2)
    free = round(st.f_bavail * st.f_frsize / GiB, 2)
    assert stats["volume_backend_name"] == "file"
    assert stats["vendor_name"] == "aiocinder"
    assert stats["driver_version"] == "1.0"
    assert stats["storage_protocol"] == "local"
    assert stats["total_capacity_gb"] == total > 0
    assert stats["free_capacity_gb"] == pytest.approx(free, abs=0.5)
    assert stats["free_capacity_gb"] > 0
    [pool] = stats["pools"]
    assert pool == {
        "pool_name": "pool0",
        "total_capacity_gb": stats["total_capacity_gb"],
        "free_capacity_gb": stats["free_capacity_gb"],
        "thin_provisioning_support": True,
        "thick_provisioning_support": False,
        "reserved_percentage": 0,
        "QoS_support": False,
    }
    assert (
        FileDriver(backend_name="b", volumes_dir=tmp_path).get_volume_stats()["pools"][0][
            "pool_name"
        ]
        == "b"
    )


def test_stats_are_cached_until_refresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = FileDriver(backend_name="file", volumes_dir=tmp_path)
    calls: list[object] = []
    real = os.statvfs

    def counting(path: Any) -> os.statvfs_result:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(os, "statvfs", counting)
    first = d.get_volume_stats()
    first["pools"].clear()  # the caller's copy, not the cache
    assert d.get_volume_stats()["pools"]
    assert len(calls) == 1
    d.get_volume_stats(refresh=True)
    assert len(calls) == 2


def test_stats_of_missing_dir(tmp_path: Path) -> None:
    d = FileDriver(backend_name="file", volumes_dir=tmp_path / "nope")
    with pytest.raises(FileDriverError, match="nope"):
        d.get_volume_stats()


def test_copy_without_hard_links(
    driver: FileDriver, marked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link)
    driver.create_cloned_volume(vol("clone"), vol("src"))
    assert_copy(driver.volumes_dir / "volume-clone", GiB)
    with pytest.raises(FileDriverError, match="already exists"):
        driver.create_cloned_volume(vol("clone"), vol("src"))
    assert leftovers(driver.volumes_dir) == []
