"""The synchronous driver protocol.

A driver is a plain synchronous object with Cinder's volume driver method
shapes, minus Cinder's request context. Methods receive records
(:mod:`aiocinder.records`, attribute access) and return a dict of model
updates (fields of the record to change, for example ``provider_location``)
or ``None``. aiocinder calls them in worker threads, never on the event loop,
so they may block for as long as the storage takes.

Storage names derive from ids (``volume.storage_name`` is ``volume-<id>``),
never from the user's ``name``.

Drivers are named by import path in ``Backend(volume_driver=...)`` and built
as ``cls(backend_name=..., **options)`` with the backend's other options.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, Protocol, TypeAlias, runtime_checkable

from ..records import SnapshotRecord, VolumeRecord

__all__ = ["BaseDriver", "ModelUpdate", "VolumeDriver"]

#: Fields to change on the record, as a driver returns them.
ModelUpdate: TypeAlias = dict[str, Any]


@runtime_checkable
class VolumeDriver(Protocol):
    """What aiocinder calls on a driver (all synchronous, all run in threads)."""

    def do_setup(self) -> None: ...
    def check_for_setup_error(self) -> None: ...
    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]: ...
    def create_volume(self, volume: VolumeRecord) -> ModelUpdate | None: ...
    def delete_volume(self, volume: VolumeRecord) -> None: ...
    def create_snapshot(self, snapshot: SnapshotRecord) -> ModelUpdate | None: ...
    def delete_snapshot(self, snapshot: SnapshotRecord) -> None: ...
    def create_cloned_volume(
        self, volume: VolumeRecord, src_vref: VolumeRecord
    ) -> ModelUpdate | None: ...
    def create_volume_from_snapshot(
        self, volume: VolumeRecord, snapshot: SnapshotRecord
    ) -> ModelUpdate | None: ...
    def extend_volume(self, volume: VolumeRecord, new_size: int) -> None: ...
    def create_export(
        self, volume: VolumeRecord, connector: Mapping[str, Any]
    ) -> ModelUpdate | None: ...
    def remove_export(self, volume: VolumeRecord) -> None: ...
    def initialize_connection(
        self, volume: VolumeRecord, connector: Mapping[str, Any]
    ) -> dict[str, Any]: ...
    def terminate_connection(
        self, volume: VolumeRecord, connector: Mapping[str, Any] | None, force: bool = False
    ) -> None: ...
    def validate_connector(self, connector: Mapping[str, Any]) -> None: ...
    def stop(self) -> None: ...


class BaseDriver(abc.ABC):
    """A convenient base for native drivers: optional methods do nothing.

    Subclasses implement the abstract methods; ``do_setup``,
    ``check_for_setup_error``, exports, ``validate_connector`` and ``stop``
    default to no-ops.
    """

    def __init__(self, *, backend_name: str) -> None:
        self.backend_name = backend_name

    def do_setup(self) -> None:
        """Prepare the driver (connect to the array...). Called once, in a thread."""

    def check_for_setup_error(self) -> None:
        """Raise if the driver cannot work. Called once after :meth:`do_setup`."""

    @abc.abstractmethod
    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        """Cinder's stats dict (``total_capacity_gb``, ``free_capacity_gb``, ``pools``...)."""

    @abc.abstractmethod
    def create_volume(self, volume: VolumeRecord) -> ModelUpdate | None:
        """Create ``volume.size`` GiB of storage for the volume."""

    @abc.abstractmethod
    def delete_volume(self, volume: VolumeRecord) -> None:
        """Delete the volume's storage; a volume already gone is not an error."""

    @abc.abstractmethod
    def create_snapshot(self, snapshot: SnapshotRecord) -> ModelUpdate | None:
        """Snapshot the volume ``snapshot.volume_id``."""

    @abc.abstractmethod
    def delete_snapshot(self, snapshot: SnapshotRecord) -> None:
        """Delete the snapshot; one already gone is not an error."""

    @abc.abstractmethod
    def create_cloned_volume(
        self, volume: VolumeRecord, src_vref: VolumeRecord
    ) -> ModelUpdate | None:
        """Create ``volume`` as a copy of ``src_vref`` (``volume.size`` may be larger)."""

    @abc.abstractmethod
    def create_volume_from_snapshot(
        self, volume: VolumeRecord, snapshot: SnapshotRecord
    ) -> ModelUpdate | None:
        """Create ``volume`` from ``snapshot`` (``volume.size`` may be larger)."""

    @abc.abstractmethod
    def extend_volume(self, volume: VolumeRecord, new_size: int) -> None:
        """Grow the volume to ``new_size`` GiB."""

    def create_export(
        self, volume: VolumeRecord, connector: Mapping[str, Any]
    ) -> ModelUpdate | None:
        """Export the volume for ``connector``'s host."""
        return None

    def remove_export(self, volume: VolumeRecord) -> None:
        """Remove the volume's export."""

    @abc.abstractmethod
    def initialize_connection(
        self, volume: VolumeRecord, connector: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Map the volume to the host; return ``{"driver_volume_type": ..., "data": {...}}``."""

    @abc.abstractmethod
    def terminate_connection(
        self, volume: VolumeRecord, connector: Mapping[str, Any] | None, force: bool = False
    ) -> None:
        """Unmap the volume from the host (from every host when ``connector`` is None)."""

    def validate_connector(self, connector: Mapping[str, Any]) -> None:
        """Raise if ``connector`` lacks what this driver needs."""

    def stop(self) -> None:
        """Release what :meth:`do_setup` took. Called once when the backend closes."""
