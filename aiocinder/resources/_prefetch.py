"""Prefetch: fill many volumes' lazy snapshot and connection lists at once.

One batched query per kind, whatever the number of volumes, instead of one
query per volume and kind. Lists already loaded are left as they are.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Final

from ..exceptions import InvalidArgument
from ._batch import in_chunks
from ._runtime import group_by_volume, runtime
from .connection import Connection
from .snapshot import Snapshot
from .volume import Volume

__all__ = ["PREFETCHABLE", "check_prefetch", "prefetch_lists"]

#: What ``prefetch=`` accepts.
PREFETCHABLE: Final = ("snapshots", "connections")


def check_prefetch(prefetch: Collection[str]) -> tuple[str, ...]:
    """The requested lazy lists, checked.

    :raises InvalidArgument: an unknown name, or a bare string.
    """
    if isinstance(prefetch, str):
        raise InvalidArgument(f"prefetch takes a collection of names, not the str {prefetch!r}")
    unknown = set(prefetch) - set(PREFETCHABLE)
    if unknown:
        raise InvalidArgument(
            f"cannot prefetch {', '.join(sorted(map(str, unknown)))}: "
            f"choose from {', '.join(PREFETCHABLE)}"
        )
    return tuple(name for name in PREFETCHABLE if name in prefetch)


async def prefetch_lists(volumes: Sequence[Volume], wanted: Collection[str]) -> None:
    """Load the ``wanted`` lazy lists of every volume, one query per kind."""
    store = runtime.store("prefetch")
    kinds: tuple[tuple[str, Any, type[Snapshot] | type[Connection]], ...] = (
        ("snapshots", store.get_snapshots_by_volume_ids, Snapshot),
        ("connections", store.get_connections_by_volume_ids, Connection),
    )
    for name, fetch, cls in kinds:
        if name not in wanted:
            continue
        todo = [v for v in volumes if not getattr(v, f"_{name}").loaded]
        if not todo:
            continue
        groups = group_by_volume(await fetch([v.id for v in todo]))
        async for chunk in in_chunks(todo):
            for vol in chunk:
                getattr(vol, f"_{name}").set([cls(r, volume=vol) for r in groups.get(vol.id, ())])
