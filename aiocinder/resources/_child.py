"""What snapshots and connections share: they belong to one volume."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, TypeVar

from ..lazy import Lazy, cache_hit
from ..records import ConnectionRecord, SnapshotRecord
from ._base import Resource

if TYPE_CHECKING:
    from .volume import Volume

__all__ = ["VolumeChild"]

C = TypeVar("C", SnapshotRecord, ConnectionRecord)

class VolumeChild(Resource[C]):
    """A resource of one volume, reached lazily with :meth:`volume`.

    :param volume: the volume object it was reached from, if any: ``volume()``
        then answers with that very object for as long as it lives. The link
        is weak: a volume's cached lists hold its snapshots and connections,
        and a strong link back would make every such volume a reference cycle
        that only the garbage collector frees (long pauses in bulk scans).
    """

    __slots__ = ("_parent", "_volume")

    def __init__(self, record: C, *, volume: Volume | None = None) -> None:
        super().__init__(record)  # type: ignore[arg-type]  # mypy: constrained TypeVar
        self._parent: weakref.ref[Volume] | None = (
            None if volume is None else weakref.ref(volume)
        )
        #: Loads the volume when there is no live parent (made on first use).
        self._volume: Lazy[Volume] | None = None

    async def volume(self) -> Volume:
        """The volume (lazy; the very object this resource was reached from).

        :raises VolumeNotFound: the volume is gone.
        """
        self._store("volume")
        parent = self._parent() if self._parent is not None else None
        if parent is not None:
            await cache_hit()
            return parent
        if self._volume is None:
            self._volume = Lazy(VolumeChild._load_volume)
        return await self._volume.get(self)

    async def _load_volume(self) -> Volume:
        from .volume import Volume

        return await Volume.get_by_id(self._record.volume_id)

    def _reset_caches(self) -> None:
        self._parent = None
        self._volume = None

    def _volume_cache(self) -> Volume | None:
        """The volume if it is loaded already (and alive), without loading it."""
        from .volume import Volume

        if self._parent is not None and (parent := self._parent()) is not None:
            return parent
        cached = None if self._volume is None else self._volume.peek()
        return cached if isinstance(cached, Volume) else None
