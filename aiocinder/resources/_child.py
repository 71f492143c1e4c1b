"""What snapshots and connections share: they belong to one volume."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from ..lazy import Lazy
from ..records import ConnectionRecord, SnapshotRecord
from ._base import Resource

if TYPE_CHECKING:
    from .volume import Volume

__all__ = ["VolumeChild"]

C = TypeVar("C", SnapshotRecord, ConnectionRecord)

class VolumeChild(Resource[C]):
    """A resource of one volume, reached lazily with :meth:`volume`.

    :param volume: the volume object it was reached from, if any: ``volume()``
        then answers with that very object.
    """

    __slots__ = ("_volume",)

    def __init__(self, record: C, *, volume: Volume | None = None) -> None:
        super().__init__(record)  # type: ignore[arg-type]  # mypy: constrained TypeVar
        self._volume: Lazy[Volume] = Lazy(VolumeChild._load_volume)
        if volume is not None:
            self._volume.set(volume)

    async def volume(self) -> Volume:
        """The volume (lazy; the very object this resource was reached from).

        :raises VolumeNotFound: the volume is gone.
        """
        self._store("volume")
        return await self._volume.get(self)

    async def _load_volume(self) -> Volume:
        from .volume import Volume

        return await Volume.get_by_id(self._record.volume_id)

    def _reset_caches(self) -> None:
        self._volume.reset()

    def _volume_cache(self) -> Volume | None:
        """The volume if it is loaded already, without loading it."""
        from .volume import Volume

        cached = self._volume.peek()
        return cached if isinstance(cached, Volume) else None
