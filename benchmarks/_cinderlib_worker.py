"""cinderlib 5.2's side of the comparison: run by the cinderlib venv's python.

Usage: ``VENV/bin/python benchmarks/_cinderlib_worker.py N REPEAT WORKDIR``.
Prints one JSON object on the last line of stdout. Imports nothing of
aiocinder (it is not installed in that environment).

It fills cinderlib's ``db`` persistence (SQLite) with N volumes of 2 snapshots
and 1 connection each, through cinderlib's own objects and persistence calls
in one database transaction (not timed), then times cinderlib's documented
tracking loop. A no-op subclass of Cinder's ``VolumeDriver`` stands in for the
array. cinderlib keeps a connection's ``status`` in memory only, so on
connections loaded from the database the loop reads ``attach_status``.
"""

from __future__ import annotations

import json
import os
import sys
import time

# This file's directory must not shadow installed packages.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import cinderlib  # noqa: E402
import sqlalchemy  # noqa: E402
from cinder.db.sqlalchemy import api as sqla_api  # noqa: E402
from cinder.volume import driver as cinder_driver  # noqa: E402
from cinderlib import objects  # noqa: E402

BACKEND = "bench"


class NoopDriver(cinder_driver.VolumeDriver):
    """Does nothing, at once: only cinderlib's own costs are measured."""

    def do_setup(self, context):
        pass

    def check_for_setup_error(self):
        pass

    def get_volume_stats(self, refresh=False):
        return {"volume_backend_name": BACKEND, "vendor_name": "bench",
                "driver_version": "1.0", "storage_protocol": "iSCSI",
                "total_capacity_gb": 100000, "free_capacity_gb": 100000,
                "reserved_percentage": 0}

    def create_volume(self, volume):
        return None

    def delete_volume(self, volume):
        pass

    def create_snapshot(self, snapshot):
        return None

    def delete_snapshot(self, snapshot):
        pass

    def create_export(self, context, volume, connector):
        return None

    def ensure_export(self, context, volume):
        return None

    def remove_export(self, context, volume):
        pass

    def initialize_connection(self, volume, connector):
        return {"driver_volume_type": "iscsi",
                "data": {"target_lun": 0, "volume_id": volume.id}}

    def terminate_connection(self, volume, connector, **kwargs):
        pass


def populate(backend, n):
    """N volumes, 2 snapshots and 1 connection each, in one transaction."""
    persistence = cinderlib.Backend.persistence
    with sqla_api.main_context_manager.writer.using(objects.CONTEXT):
        for i in range(n):
            vol = objects.Volume(backend, size=1, name=f"volume {i}", status="in-use",
                                 metadata={"index": str(i)})
            persistence.set_volume(vol)
            for s in range(2):
                persistence.set_snapshot(objects.Snapshot(
                    vol, name=f"snapshot {i}.{s}", status="available"))
            connector = {"host": f"node-{i % 50}", "ip": f"10.0.{i // 250}.{i % 250}"}
            conn = objects.Connection(
                backend, volume=vol, connector=connector, status="attached",
                connection_info={"conn": {"driver_volume_type": "iscsi",
                                          "data": {"target_lun": 0, "volume_id": vol.id}}},
            )
            conn.connector_info = connector
            persistence.set_connection(conn)


def documented_loop(backend):
    """cinderlib's tracking loop, as its documentation writes it."""
    seen = 0
    backend.refresh()
    for vol in backend.volumes:
        vol.refresh()
        for snap in vol.snapshots:
            seen += snap.volume.id == vol.id and snap.status == "available"
        for conn in vol.connections:
            # conn.status raises AttributeError on a connection loaded from the DB
            seen += (conn.volume.id == vol.id and conn.attach_status is None
                     and bool(conn.connector_info["host"]) and bool(conn.connector_info["ip"]))
    return seen


def main():
    n, repeat, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    db = os.path.join(workdir, "cinderlib.sqlite")
    cinderlib.setup(persistence_config={"storage": "db", "connection": f"sqlite:///{db}"},
                    host="bench", disable_logs=True, file_locks_path=workdir)
    backend = cinderlib.Backend(volume_backend_name=BACKEND,
                                volume_driver="__main__.NoopDriver")
    start = time.perf_counter()
    populate(backend, n)
    populated = time.perf_counter() - start
    statements = []

    def count(*args):
        statements[-1] += 1

    sqlalchemy.event.listen(sqla_api.get_engine(), "before_cursor_execute", count)
    runs = []
    for _ in range(repeat):
        statements.append(0)
        start = time.perf_counter()
        seen = documented_loop(backend)
        runs.append(time.perf_counter() - start)
        if seen != 3 * n:
            raise SystemExit(f"cinderlib loop saw {seen} resources, expected {3 * n}")
    print(json.dumps({"n": n, "populate_seconds": populated, "runs": runs,
                      "seconds": min(runs),
                      "statements": statements[-1], "cinderlib": _version("cinderlib"),
                      "cinder": _version("cinder")}))


def _version(dist):
    from importlib.metadata import version
    return version(dist)


if __name__ == "__main__":
    main()
