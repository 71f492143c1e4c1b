"""Run synchronous driver calls in worker threads, never on the event loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, TypeVarTuple

import anyio
import anyio.to_thread

__all__ = ["DriverRunner", "RunnerStatistics"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True, slots=True)
class RunnerStatistics:
    """A snapshot of a backend's driver-call limiter.

    :ivar max_concurrent_driver_calls: the limit.
    :ivar running: driver calls running in threads now.
    :ivar waiting: calls waiting for a free slot.
    """

    max_concurrent_driver_calls: int
    running: int
    waiting: int


class DriverRunner:
    """Runs a backend's driver calls in threads, at most ``max_workers`` at once.

    ``abandon_on_cancel`` stays False: a call that has started holds its slot
    until its thread really ends, whatever happens to the awaiting task.
    """

    def __init__(self, max_workers: int) -> None:
        self._limiter = anyio.CapacityLimiter(max_workers)

    async def run(self, func: Callable[[*Ts], T], *args: *Ts) -> T:
        """Call ``func(*args)`` in a worker thread and return its result."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)

    def statistics(self) -> RunnerStatistics:
        """Borrowed and waiting slots of the limiter, right now."""
        stats = self._limiter.statistics()
        return RunnerStatistics(
            max_concurrent_driver_calls=int(stats.total_tokens),
            running=stats.borrowed_tokens,
            waiting=stats.tasks_waiting,
        )
