"""aiocinder: manage block storage from asyncio through storage drivers.

Backends, volumes, snapshots and connections, tracked in an async metadata
store (memory, SQLite or PostgreSQL), with driver calls run in worker threads.
"""

from ._setup import setup as setup
from ._setup import shutdown as shutdown
from .connectors import get_connector_properties as get_connector_properties
from .drivers.cinder import list_supported_drivers as list_supported_drivers
from .exceptions import AiocinderError as AiocinderError
from .exceptions import AlreadyExists as AlreadyExists
from .exceptions import AttachError as AttachError
from .exceptions import BackendConfigConflict as BackendConfigConflict
from .exceptions import BackendNotInitialised as BackendNotInitialised
from .exceptions import ConflictError as ConflictError
from .exceptions import ConnectionNotFound as ConnectionNotFound
from .exceptions import DriverError as DriverError
from .exceptions import InvalidArgument as InvalidArgument
from .exceptions import InvalidConnection as InvalidConnection
from .exceptions import InvalidSnapshot as InvalidSnapshot
from .exceptions import InvalidState as InvalidState
from .exceptions import InvalidVolume as InvalidVolume
from .exceptions import NotFound as NotFound
from .exceptions import PersistenceError as PersistenceError
from .exceptions import SchemaError as SchemaError
from .exceptions import SnapshotNotFound as SnapshotNotFound
from .exceptions import UsageError as UsageError
from .exceptions import VolumeNotFound as VolumeNotFound
from .importer import import_cinderlib as import_cinderlib
from .records import KeyValue as KeyValue
from .resources import Backend as Backend
from .resources import BackendStatistics as BackendStatistics
from .resources import Connection as Connection
from .resources import Snapshot as Snapshot
from .resources import Volume as Volume
from .resources import VolumeType as VolumeType
from .serialization import dump as dump
from .serialization import dumps as dumps
from .serialization import load as load

__version__ = "0.1.0"

__all__ = [
    "AiocinderError",
    "AlreadyExists",
    "AttachError",
    "Backend",
    "BackendConfigConflict",
    "BackendNotInitialised",
    "BackendStatistics",
    "ConflictError",
    "Connection",
    "ConnectionNotFound",
    "DriverError",
    "InvalidArgument",
    "InvalidConnection",
    "InvalidSnapshot",
    "InvalidState",
    "InvalidVolume",
    "KeyValue",
    "NotFound",
    "PersistenceError",
    "SchemaError",
    "Snapshot",
    "SnapshotNotFound",
    "UsageError",
    "Volume",
    "VolumeNotFound",
    "VolumeType",
    "dump",
    "dumps",
    "get_connector_properties",
    "import_cinderlib",
    "list_supported_drivers",
    "load",
    "setup",
    "shutdown",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("aiocinder."):
        _obj.__module__ = "aiocinder"
del _name, _obj
