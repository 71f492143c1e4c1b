"""The errors aiocinder raises.

Every error derives from :class:`AiocinderError`::

    AiocinderError
    ├── InvalidArgument (also ValueError)       a bad argument; nothing was changed
    │   ├── AlreadyExists                        a caller-supplied id is taken
    │   └── BackendConfigConflict                a backend name reused with another config
    ├── NotFound (also LookupError)
    │   ├── VolumeNotFound
    │   ├── SnapshotNotFound
    │   └── ConnectionNotFound
    ├── InvalidState                             the resource's state forbids the operation
    │   ├── InvalidVolume
    │   ├── InvalidSnapshot
    │   └── InvalidConnection
    ├── DriverError                              the storage driver failed; ``.resource``
    │   └── AttachError                          os-brick failed on this host (attach, detach,
    │                                            rescan); ``.resource``
    ├── BackendNotInitialised                    the resource's backend is not set up here
    ├── PersistenceError                         the metadata store failed
    │   ├── ConflictError                        a stale update lost a compare-and-swap
    │   └── SchemaError                          the database schema is not one we know
    └── UsageError (also RuntimeError)           misuse: not set up, used after shutdown

Errors that concern one resource carry it as ``resource``; a driver failure is
raised ``from`` the driver's own exception, so ``__cause__`` holds it.
Importing this module imports nothing else of aiocinder, and never Cinder.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AiocinderError",
    "AlreadyExists",
    "AttachError",
    "BackendConfigConflict",
    "BackendNotInitialised",
    "ConflictError",
    "ConnectionNotFound",
    "DriverError",
    "InvalidArgument",
    "InvalidConnection",
    "InvalidSnapshot",
    "InvalidState",
    "InvalidVolume",
    "NotFound",
    "PersistenceError",
    "SchemaError",
    "SnapshotNotFound",
    "UsageError",
    "VolumeNotFound",
]


class AiocinderError(Exception):
    """Base class of every error aiocinder raises.

    :param message: what went wrong, for a person to read.
    :param resource: the volume, snapshot or connection concerned, if any.
    """

    def __init__(self, message: str, *, resource: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.resource = resource


class InvalidArgument(AiocinderError, ValueError):
    """An argument is invalid. Raised before anything is persisted."""


class AlreadyExists(InvalidArgument):
    """A resource with the caller-supplied id already exists; nothing was created."""


class BackendConfigConflict(InvalidArgument):
    """A backend name is already initialised with a different configuration."""


class NotFound(AiocinderError, LookupError):
    """A lookup found nothing."""


class VolumeNotFound(NotFound):
    """No volume has the requested id."""


class SnapshotNotFound(NotFound):
    """No snapshot has the requested id."""


class ConnectionNotFound(NotFound):
    """No connection has the requested id."""


class InvalidState(AiocinderError):
    """The resource's current state forbids the operation."""


class InvalidVolume(InvalidState):
    """The volume's state forbids the operation (for example, it has snapshots)."""


class InvalidSnapshot(InvalidState):
    """The snapshot's state forbids the operation."""


class InvalidConnection(InvalidState):
    """The connection's state forbids the operation."""


class DriverError(AiocinderError):
    """The storage driver failed.

    ``resource`` is the resource the operation concerned, already carrying the
    error status that was persisted; ``__cause__`` is the driver's exception.
    """


class AttachError(DriverError):
    """Attaching, detaching or rescanning a volume on this host (os-brick) failed.

    The message names the step that failed; ``resource`` is the volume (for
    :meth:`Volume.attach() <aiocinder.Volume.attach>` and
    :meth:`Volume.detach() <aiocinder.Volume.detach>`) or the connection; ``__cause__`` is
    os-brick's exception. After a failed attach, what the attach had done is
    undone first.
    """


class BackendNotInitialised(AiocinderError):
    """The resource belongs to a backend that is not initialised in this process."""


class PersistenceError(AiocinderError):
    """The metadata store failed."""


class ConflictError(PersistenceError):
    """An update was based on a stale version of the record (lost compare-and-swap)."""


class SchemaError(PersistenceError):
    """The database's schema version is unknown to this version of aiocinder."""


class UsageError(AiocinderError, RuntimeError):
    """aiocinder was used the wrong way: before ``setup()``, after ``shutdown()``..."""
