"""Many driver calls at once against the ideal for the backend's limit.

A driver whose ``create_volume`` sleeps (50 ms by default) stands for an
array's API latency. CALLS ``backend.create_volume`` run concurrently
(``asyncio.gather``) through the whole operation: the ``creating`` record,
the driver call in a worker thread under the backend's limit of concurrent
driver calls, the ``available`` record, in an SQLite store. With a limit of L
the best possible is ``ceil(CALLS / L)`` rounds of the latency: that ideal is
the baseline. Event-loop lag is sampled meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import aiocinder
from aiocinder.drivers.base import ModelUpdate
from aiocinder.drivers.file import FileDriver
from aiocinder.records import VolumeRecord

from ._common import LagMonitor, print_table


class SleepingDriver(FileDriver):
    """A :class:`FileDriver` whose ``create_volume`` only waits, like an array's API."""

    latency = 0.05

    def create_volume(self, volume: VolumeRecord) -> ModelUpdate:
        time.sleep(self.latency)
        return {"provider_location": f"sleep:{volume.id}"}


async def run_one(calls: int, latency: float, limit: int) -> dict[str, Any]:
    """``calls`` concurrent ``create_volume`` under ``limit``; the row for the table."""
    driver = type("SleepingDriver", (SleepingDriver,), {"latency": latency})
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        await aiocinder.setup({"storage": "sqlite", "connection": f"sqlite:///{db}"})
        try:
            backend = await aiocinder.Backend(
                f"sleep-{limit}", volume_driver=driver, volumes_dir=tmp,
                max_concurrent_driver_calls=limit,
            )
            # Warm up: the worker threads exist before the clock starts.
            await asyncio.gather(*(backend.create_volume(1) for _ in range(limit)))
            gc.collect()  # garbage left by earlier benchmarks is not this one's cost
            async with LagMonitor() as lag:
                start = time.perf_counter()
                volumes = await asyncio.gather(
                    *(backend.create_volume(1, name=f"v{i}") for i in range(calls))
                )
                seconds = time.perf_counter() - start
            assert all(v.status == "available" for v in volumes)
        finally:
            await aiocinder.shutdown()
    ideal = math.ceil(calls / limit) * latency
    return {"benchmark": "drivers", "name": f"limit {limit}", "limit": limit, "calls": calls,
            "latency_ms": latency * 1000, "seconds": seconds, "ideal_seconds": ideal,
            "ratio_to_ideal": seconds / ideal, **lag.result().as_ms()}


def run(calls: int = 500, latency: float = 0.05, limits: tuple[int, ...] = (8, 32)
        ) -> list[dict[str, Any]]:
    rows = [asyncio.run(run_one(calls, latency, limit)) for limit in limits]
    print_table(
        f"driver calls: {calls} concurrent create_volume, {latency * 1000:g} ms each, "
        "SQLite store; ideal = ceil(calls / limit) x latency",
        ["", "seconds", "ideal s", "x ideal", "lag p50 ms", "lag p99 ms", "lag max ms"],
        [[r["name"], r["seconds"], r["ideal_seconds"], r["ratio_to_ideal"], r["lag_p50_ms"],
          r["lag_p99_ms"], r["lag_max_ms"]] for r in rows],
        widths=[28, 10, 10, 10, 12, 12, 12],
    )
    return rows
