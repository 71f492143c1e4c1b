"""The row format the SQL stores share.

Each resource table has the columns a query filters on (``id``,
``backend_name``, ``name``, ``status``, ``volume_id``, ``created_at``) and the
compare-and-swap ``version``; the whole record (but ``version``) is kept as
JSON in ``data``. Decoding a row is one ``json.loads`` and
:meth:`~aiocinder.records.VolumeRecord.from_stored`, the records' fast path for
rows we wrote ourselves: the data column is our own :func:`encode` output, and
the schema version check refuses databases we did not make.
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar

from ..records import ConnectionRecord, SnapshotRecord, VolumeRecord

__all__ = ["SCHEMA_VERSION", "decode", "encode"]

#: The schema version this code writes. Stores refuse a database that is newer.
SCHEMA_VERSION: Final = 1

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
