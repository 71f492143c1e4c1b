"""Live resources: backends, volumes, snapshots and connections."""

from .backend import Backend, BackendStatistics
from .connection import Connection
from .snapshot import Snapshot
from .volume import Volume, VolumeType

__all__ = ["Backend", "BackendStatistics", "Connection", "Snapshot", "Volume", "VolumeType"]
