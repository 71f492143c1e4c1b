"""The row codec: ``from_stored``, the fast path for rows a store wrote itself,
must build exactly what ``from_dict`` builds."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from aiocinder.persistence._codec import decode, encode
from aiocinder.records import ConnectionRecord, SnapshotRecord, VolumeRecord

T0 = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)

Record = VolumeRecord | SnapshotRecord | ConnectionRecord

FULL: list[Record] = [
    VolumeRecord(
        id="v1", backend_name="lvm", size=3, status="available", name="disk",
        description="d", host="h@lvm#p", availability_zone="nova", volume_type_name="gold",
        extra_specs={"a": "b"}, qos_specs={"iops": "10"}, metadata={"k": "v", "": ""},
        admin_metadata={"readonly": "True"}, provider_location="loc", provider_auth="auth",
        provider_id="pid", source_volid="v0", snapshot_id="s0", project_id="p", user_id="u",
        bootable=True, multiattach=True, created_at=T0, updated_at=T0, version=7,
    ),
    SnapshotRecord(
        id="s1", volume_id="v1", backend_name="lvm", volume_size=3, status="available",
        name="snap", description="d", metadata={"k": "v"}, provider_location="loc",
        provider_auth="auth", provider_id="pid", project_id="p", user_id="u",
        created_at=T0, updated_at=T0, version=2,
    ),
    ConnectionRecord(
        id="c1", volume_id="v1", backend_name="lvm", status="attached",
        connector_info={"host": "n1", "multipath": False, "wwpns": ["a", "b"]},
        conn_info={"driver_volume_type": "iscsi", "data": {"target_lun": 1}},
        device={"path": "/dev/sdb"}, attach_mode="ro", instance_uuid="i",
        project_id="p", user_id="u", created_at=T0, updated_at=T0, version=1,
    ),
]  # fmt: skip

#: The fields a record cannot do without.
REQUIRED = {
    VolumeRecord: ("id", "backend_name", "size"),
    SnapshotRecord: ("id", "volume_id", "backend_name", "volume_size"),
    ConnectionRecord: ("id", "volume_id", "backend_name"),
}


def stored_dict(record: Record) -> dict[str, Any]:
    """The dict a store reads back: the JSON it wrote, parsed, with the version."""
    data: dict[str, Any] = json.loads(encode(record))
    data["version"] = record.version
    return data


def assert_same(built: Record, expected: Record) -> None:
    assert built == expected
    assert type(built) is type(expected)
    for f in dataclasses.fields(built):
        value = getattr(built, f.name)
        assert value == getattr(expected, f.name), f.name
        if isinstance(value, dict | list):
            assert type(value) is type(getattr(expected, f.name)), f.name


@pytest.mark.parametrize("record", FULL, ids=lambda r: type(r).__name__)
def test_a_full_row_builds_what_from_dict_builds(record: Record) -> None:
    data = stored_dict(record)
    built = type(record).from_stored(data)
    assert_same(built, type(record).from_dict(data))
    assert built == record
    assert decode(type(record), encode(record), record.version) == record


@pytest.mark.parametrize("record", FULL, ids=lambda r: type(r).__name__)
def test_a_row_missing_optional_fields_gets_the_defaults(record: Record) -> None:
    cls = type(record)
    data = {name: stored_dict(record)[name] for name in REQUIRED[cls]}
    built = cls.from_stored(data)
    expected = cls.from_dict(data)
    # created_at defaults to "now": compare everything else.
    assert built.created_at.tzinfo is UTC
    assert_same(built.replace(created_at=T0), expected.replace(created_at=T0))
    assert built.replace(created_at=T0) == cls(**data, created_at=T0)
    # One optional field missing at a time, the others present.
    full = stored_dict(record)
    for name in full.keys() - set(REQUIRED[cls]) - {"created_at"}:
        partial = {k: v for k, v in full.items() if k != name}
        assert_same(cls.from_stored(partial), cls.from_dict(partial))


@pytest.mark.parametrize("record", FULL, ids=lambda r: type(r).__name__)
def test_unknown_keys_are_ignored(record: Record) -> None:
    data = stored_dict(record) | {"added_in_a_newer_version": {"x": 1}, "zz": None}
    built = type(record).from_stored(data)
    assert_same(built, type(record).from_dict(data))
    assert built == record


@pytest.mark.parametrize("record", FULL, ids=lambda r: type(r).__name__)
def test_a_missing_required_field_raises_as_from_dict(record: Record) -> None:
    cls = type(record)
    for name in REQUIRED[cls]:
        data = stored_dict(record)
        del data[name]
        with pytest.raises(TypeError, match=name):
            cls.from_stored(data)


def test_datetimes_are_parsed_as_from_dict_does() -> None:
    base = stored_dict(FULL[0])
    for created, updated in [
        ("2024-05-17T12:00:00+00:00", None),
        ("2024-05-17T12:00:00", "2024-05-18T01:02:03.456789"),  # naive: read as UTC
        ("2024-05-17T14:00:00+02:00", "2024-05-17T12:00:00Z"),
    ]:
        data = base | {"created_at": created, "updated_at": updated}
        built = VolumeRecord.from_stored(data)
        assert_same(built, VolumeRecord.from_dict(data))
        assert built.created_at.tzinfo is not None
        assert built.updated_at is None or built.updated_at.tzinfo is not None


def test_a_subclass_that_is_not_all_slots_uses_from_dict() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Tagged(VolumeRecord):
        tag: str = "t"

    data = stored_dict(FULL[0]) | {"tag": "x"}
    built = Tagged.from_stored(data)
    assert built == Tagged.from_dict(data)
    assert built.tag == "x"


def test_mappings_are_the_rows_plain_dicts_and_records_stay_frozen() -> None:
    data = stored_dict(FULL[0])
    built = VolumeRecord.from_stored(data)
    assert type(built.metadata) is dict
    assert built.metadata is data["metadata"]  # as from_dict: not copied again
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.size = 4  # type: ignore[misc]
