"""cinderlib 5.2 and aiocinder on the same tracking work, side by side.

N volumes with 2 snapshots and 1 connection each, in SQLite, read with the
tracking loop as each library documents it. cinderlib runs in a virtual
environment of its own (its pins conflict with aiocinder's dependencies),
built on first use under ``.bench-venvs/cinderlib`` from
``shared/peers/cinderlib-requirements.txt``, in a subprocess with that
environment's python (see ``_cinderlib_worker.py``). aiocinder runs here, on
the same records as the tracking benchmark, written straight into its SQLite
rows. Figures are ratios to cinderlib's documented loop measured in the same
run.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiocinder

from . import tracking
from ._common import CACHE, REPO, LagMonitor, RecordCollector, create_sqlite_schema, print_table
from ._common import write_rows as _write_rows

#: Where the pins usually are: ``shared/`` beside the repository.
REQUIREMENTS = REPO.parent / "shared" / "peers" / "cinderlib-requirements.txt"
VENV = CACHE / "cinderlib"
WORKER = Path(__file__).with_name("_cinderlib_worker.py")


def _python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        raise SystemExit("the cinderlib benchmark needs python3.11 to build its venv")
    return found


def ensure_venv(venv: Path = VENV, requirements: Path = REQUIREMENTS) -> Path:
    """The cinderlib venv's python, building the venv first if needed.

    A venv given by the user (it has no ``.bench-pins`` marker) is used as it is.
    Ours is rebuilt when the pins change.
    """
    python = venv / "bin" / "python"
    marker = venv / ".bench-pins"
    if python.exists() and (venv != VENV or not requirements.exists()):
        return python
    if not requirements.exists():
        raise SystemExit(f"no cinderlib pins at {requirements}: pass --cinderlib-requirements "
                         "or --cinderlib-venv")
    pins = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and marker.exists() and marker.read_text() == pins:
        return python
    print(f"building the cinderlib venv in {venv} (once) ...", flush=True)
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([_python311(), "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(python), "-m", "pip", "install", "-r", str(requirements)],
                         capture_output=True, text=True)
    if pip.returncode:
        print(pip.stdout[-5000:], pip.stderr[-5000:], sep="\n")
        raise SystemExit(f"could not install cinderlib's pins into {venv}")
    marker.write_text(pins)
    return python


def run_cinderlib(python: Path, n: int, repeat: int) -> dict[str, Any]:
    """cinderlib's documented loop over N volumes, timed in its own process."""
    # cinderlib rewrites rootwrap paths under $VIRTUAL_ENV (nox sets it to its
    # own venv, where cinderlib then fails): leave it out.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([str(python), str(WORKER), str(n), str(repeat), tmp],
                             capture_output=True, text=True, env=env)
    if out.returncode:
        print(out.stderr[-5000:])
        raise SystemExit(f"the cinderlib worker failed (exit status {out.returncode})")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def run_aiocinder(n: int, repeat: int) -> list[dict[str, Any]]:
    """aiocinder's ways to read the same resources, best of ``repeat``, with loop lag."""
    collector = RecordCollector()
    await tracking.populate(collector, n)  # type: ignore[arg-type]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        await create_sqlite_schema(db)
        _write_rows(db, collector.volumes, collector.snapshots, collector.connections)
        await aiocinder.setup({"storage": "sqlite", "connection": f"sqlite:///{db}"})
        try:
            backend = await aiocinder.Backend(
                tracking.BACKEND, volume_driver="aiocinder.drivers.file.FileDriver",
                volumes_dir=str(Path(tmp) / "volumes"),
            )
            ways: list[tuple[str, Callable[[], Awaitable[int]]]] = [
                ("documented loop", lambda: tracking.documented_loop(backend)),
                ("concurrent scan", lambda: tracking.concurrent_scan(backend)),
                ("prefetched scan", lambda: tracking.prefetched_scan(backend)),
            ]
            for name, fn in ways:
                gc.collect()  # the garbage of the way before is not this one's cost
                best = float("inf")
                async with LagMonitor() as lag:
                    for _ in range(repeat):
                        start = time.perf_counter()
                        seen = await fn()
                        best = min(best, time.perf_counter() - start)
                        assert seen == 3 * n, (name, seen)
                results.append({"name": f"aiocinder {name}", "seconds": best,
                                **lag.result().as_ms()})
        finally:
            await aiocinder.shutdown()
    return results


def run(n: int, repeat: int, cinderlib_repeat: int, python: Path) -> list[dict[str, Any]]:
    """Both sides at N; rows with ratios to cinderlib's documented loop."""
    theirs = run_cinderlib(python, n, cinderlib_repeat)
    ours = asyncio.run(run_aiocinder(n, repeat))
    base = theirs["seconds"]
    rows = [{"benchmark": "cinderlib", "name": "cinderlib documented loop", "n": n,
             "seconds": base, "speedup": 1.0, "statements": theirs["statements"],
             "versions": f"cinderlib {theirs['cinderlib']}, cinder {theirs['cinder']}",
             "populate_seconds": theirs["populate_seconds"]}]
    for r in ours:
        rows.append({"benchmark": "cinderlib", "n": n, **r, "speedup": base / r["seconds"]})
    report(rows)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    n = rows[0]["n"]
    print_table(
        f"cinderlib vs aiocinder, tracking on SQLite, N = {n:,} volumes "
        f"(2 snapshots + 1 connection each); {rows[0]['versions']}, "
        f"{rows[0]['statements']:,} SQL statements per cinderlib loop",
        ["", "seconds", "x faster", "lag p50 ms", "lag p99 ms", "lag max ms"],
        [[r["name"], r["seconds"], f"{r['speedup']:.1f}",
          *((r["lag_p50_ms"], r["lag_p99_ms"], r["lag_max_ms"]) if "lag_p99_ms" in r
            else ("-", "-", "-"))] for r in rows],
        widths=[28, 10, 10, 12, 12, 12],
    )
