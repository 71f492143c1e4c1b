"""The row format the SQL stores share.

Each resource table has the columns a query filters on (``id``,
``backend_name``, ``name``, ``status``, ``volume_id``, ``created_at``) and the
compare-and-swap ``version``; the whole record (but ``version``) is kept as
JSON in ``data``. Decoding a row is one ``json.loads`` and
:meth:`~aiocinder.records.VolumeRecord.from_stored`, the records' fast path for
rows we wrote ourselves: the data column is our own :func:`encode` output, and
the schema version check refuses databases we did not make.

A read of many rows decodes them with :func:`decode_rows`, which gives the
event loop a turn between chunks of :data:`DECODE_CHUNK` rows: 10,000 volume
rows take some 70 ms to decode, far too long to hold the loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, Final, Protocol, TypeVar

from ..records import ConnectionRecord, SnapshotRecord, VolumeRecord

__all__ = ["DECODE_CHUNK", "SCHEMA_VERSION", "Row", "decode", "decode_rows", "encode"]

#: The schema version this code writes. Stores refuse a database that is newer.
SCHEMA_VERSION: Final = 1

#: Rows decoded in one turn of the event loop. Decoding a volume row in a
#: big read takes 7-11 us here, so a chunk takes about 1 ms: well within an
#: event-loop lag of 2 ms, for the cost of a ``sleep(0)`` per chunk (0.5%).
DECODE_CHUNK: Final = 128

R = TypeVar("R", VolumeRecord, SnapshotRecord, ConnectionRecord)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


def encode(record: VolumeRecord | SnapshotRecord | ConnectionRecord) -> str:
    """The JSON ``data`` column for ``record`` (its ``version`` is a column of its own)."""
    data = record.to_dict()
    del data["version"]
    return _dumps(data)


def decode(cls: type[R], data: str | bytes | dict[str, Any], version: int) -> R:
    """Rebuild a record from its ``data`` column and ``version``."""
    fields = json.loads(data) if isinstance(data, str | bytes) else dict(data)
    fields["version"] = version
    return cls.from_stored(fields)


class Row(Protocol):
    """A fetched row: ``row[0]`` is the ``data`` column, ``row[1]`` the ``version``."""

    def __getitem__(self, index: int, /) -> Any: ...


async def decode_rows(cls: type[R], rows: Sequence[Row]) -> list[R]:
    """Decode ``(data, version, ...)`` rows in order, :data:`DECODE_CHUNK` per
    turn of the event loop.

    When there is more than one chunk, each is followed by ``asyncio.sleep(0)``
    (the last one too, so that what the caller does next starts a turn of its
    own): other tasks run while a big read is decoded. A small read does not
    wait at all.
    """
    records: list[R] = []
    chunked = len(rows) > DECODE_CHUNK
    for start in range(0, len(rows), DECODE_CHUNK):
        records += [decode(cls, row[0], row[1]) for row in rows[start : start + DECODE_CHUNK]]
        if chunked:
            await asyncio.sleep(0)
    return records
