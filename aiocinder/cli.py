"""The ``aiocinder`` command.

``aiocinder demo`` runs the whole resource model on the embedded default (a
SQLite file and a FileDriver directory it creates) and prints the tracking
scan; ``aiocinder list`` prints the same scan for any store;
``aiocinder import-cinderlib`` brings a cinderlib database or JSON dump into
a store, and ``aiocinder copy`` copies one store into another.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from ._setup import setup, shutdown
from .exceptions import AiocinderError, InvalidArgument
from .importer import ImportTally, import_cinderlib
from .persistence.base import PersistenceStore, create_store
from .persistence.copy import copy_store
from .resources._prefetch import PREFETCHABLE, prefetch_lists
from .resources.backend import Backend
from .resources.volume import Volume, load_volume

__all__ = ["main"]

DEMO_BACKEND = "demo"


async def print_scan(volumes: Sequence[Volume]) -> tuple[int, int, int]:
    """Print the resource-tracking scan of ``volumes``; return the numbers of
    volumes, snapshots and connections seen."""
    await prefetch_lists(volumes, PREFETCHABLE)  # one query per kind, not per volume
    snapshots = connections = 0
    for vol in volumes:
        print(f"volume {vol.id}  {vol.name or '-':<14} {vol.size:>3} GiB  {vol.status:<10} "
              f"backend={vol.backend_name}")
        for snap in await vol.snapshots():
            snapshots += 1
            print(f"  snapshot   {snap.id}  {snap.name or '-':<14} {snap.status} "
                  f"(of {(await snap.volume()).id[:8]})")
        for conn in await vol.connections():
            connections += 1
            info = conn.connector_info
            device = conn.path or conn.conn_info.get("data", {}).get("device_path", "-")
            print(f"  connection {conn.id}  host={info.get('host', '-')} "
                  f"ip={info.get('ip', '-')} {conn.protocol} {conn.status} -> {device}")
    return len(volumes), snapshots, connections


async def demo(directory: Path) -> None:
    """Create volumes, snapshots, a clone and a connection in ``directory`` (an
    absolute path), then scan."""
    db = directory / "aiocinder.sqlite"
    volumes_dir = directory / "volumes"
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    await setup({"storage": "sqlite", "connection": f"sqlite:///{db}"})
    try:
        backend = await Backend(
            DEMO_BACKEND,
            volume_driver="aiocinder.drivers.file.FileDriver",
            volumes_dir=str(volumes_dir),
        )
        print(f"backend {backend.name!r}: pools {', '.join(backend.pool_names)}")
        disk = await backend.create_volume(size=1, name="disk", metadata={"made-by": "demo"})
        print(f"created {disk.name} ({disk.id}), {disk.size} GiB, {disk.status}")
        await disk.extend(2)
        print(f"extended {disk.name} to {disk.size} GiB")
        snap = await disk.create_snapshot(name="disk-snap")
        print(f"snapshotted {disk.name} as {snap.name}")
        clone = await disk.clone(name="disk-clone")
        print(f"cloned {disk.name} as {clone.name}")
        restored = await snap.create_volume(name="disk-restored")
        print(f"created {restored.name} from {snap.name}")
        conn = await disk.connect({"host": "demo-node", "ip": "127.0.0.1", "multipath": False})
        print(f"connected {disk.name} to demo-node over {conn.protocol}: "
              f"{conn.conn_info['data']['device_path']}")
        print("\nTracking scan of every volume in the store:")
        await backend.refresh()
        counts = await print_scan(await backend.volumes())
        print(f"\n{counts[0]} volumes, {counts[1]} snapshots, {counts[2]} connections")
        print(f"metadata: {db}\nvolume files: {volumes_dir}")
        print("run `aiocinder demo` again to add more; `aiocinder list "
              f"--connection sqlite:///{db}` to scan without changing anything")
    finally:
        await shutdown()


async def list_store(connection: str) -> None:
    """Print the tracking scan of every volume in a store."""
    storage = "postgresql" if connection.startswith("postgres") else "sqlite"
    await setup({"storage": storage, "connection": connection}, fail_on_missing_backend=False)
    try:
        store = Backend.persistence
        assert store is not None
        counts = await print_scan([load_volume(r) for r in await store.get_volumes()])
        print(f"{counts[0]} volumes, {counts[1]} snapshots, {counts[2]} connections")
    finally:
        await shutdown()


def _tally(what: str, tally: ImportTally) -> str:
    line = f"{what:<12} {tally.created:>6} created, {tally.already_present:>6} already present"
    return line + (f", {tally.replaced} replaced" if tally.replaced else "")


def _store_at(url: str) -> PersistenceStore:
    """The (unopened) store a ``sqlite:///`` URL or ``postgresql://`` DSN names."""
    storage = "postgresql" if url.startswith("postgres") else "sqlite"
    return create_store({"storage": storage, "connection": url})


async def import_command(source: str, target: str, replace: bool) -> None:
    """Import a cinderlib database or JSON dump into the store at ``target``;
    print the counts (never a value of the data: it holds credentials)."""
    async with _store_at(target) as store:
        counts = await import_cinderlib(source, store=store, replace=replace)
        print(f"imported {counts.source} into {store!r}")
    print(f"backends     {', '.join(counts.backends) or '-'}")
    for what, tally in (("volumes", counts.volumes), ("snapshots", counts.snapshots),
                        ("connections", counts.connections),
                        ("key values", counts.key_values)):
        print(_tally(what, tally))
    print(f"left out     {counts.deleted} deleted, {counts.orphaned} orphaned")


async def copy_command(source_url: str, target_url: str) -> None:
    """Copy every record of one store into another; print the counts."""
    source = _store_at(source_url)
    database = getattr(source, "database", None)
    if isinstance(database, str) and not await asyncio.to_thread(Path(database).is_file):
        raise InvalidArgument(f"no SQLite database at {database} to copy from")
    async with source, _store_at(target_url) as target:
        counts = await copy_store(source, target)
        print(f"copied {source!r} into {target!r}")
    print(f"{counts.volumes} volumes, {counts.snapshots} snapshots, "
          f"{counts.connections} connections, {counts.key_values} key values")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    parser = argparse.ArgumentParser(prog="aiocinder", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aiocinder {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_cmd = commands.add_parser(
        "demo", help="run volumes, snapshots, a clone and a connection on SQLite + files"
    )
    demo_cmd.add_argument("--dir", type=Path, default=Path("aiocinder-demo"),
                          help="where the SQLite file and volume files go "
                               "(default: ./aiocinder-demo)")
    list_cmd = commands.add_parser("list", help="print the tracking scan of a store")
    list_cmd.add_argument("--connection", required=True,
                          help="sqlite:///path.db or a postgresql:// DSN")
    import_cmd = commands.add_parser(
        "import-cinderlib",
        help="import a cinderlib database or JSON dump (volumes, snapshots, connections, "
             "key values) into a store",
    )
    import_cmd.add_argument("source",
                            help="a cinderlib SQLite database (path or sqlite:/// URL), a "
                                 "postgresql:// DSN, or a file of cinderlib JSON")
    import_cmd.add_argument("--to", required=True, metavar="URL",
                            help="the aiocinder store: sqlite:///path.db or a postgresql:// DSN")
    import_cmd.add_argument("--replace", action="store_true",
                            help="overwrite records already in the store (default: keep them)")
    copy_cmd = commands.add_parser("copy", help="copy every record of one store into another")
    copy_cmd.add_argument("--from", required=True, dest="source", metavar="URL",
                          help="the store to read: sqlite:///path.db or a postgresql:// DSN")
    copy_cmd.add_argument("--to", required=True, dest="target", metavar="URL",
                          help="the store to write: sqlite:///path.db or a postgresql:// DSN")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            asyncio.run(demo(args.dir.absolute()))
        elif args.command == "import-cinderlib":
            asyncio.run(import_command(args.source, args.to, args.replace))
        elif args.command == "copy":
            asyncio.run(copy_command(args.source, args.target))
        else:
            asyncio.run(list_store(args.connection))
    except AiocinderError as exc:
        print(f"aiocinder: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
