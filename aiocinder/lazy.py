"""The awaitable lazy property primitive.

``await vol.snapshots()`` loads once, caches, and shares that one load between
every task that awaits it at the same time (single flight). :class:`Lazy`
holds the state for one property of one object:

* the load runs in a task of its own, so an awaiter that is cancelled does
  not cancel a load other awaiters share; if the load itself fails or is
  cancelled, nothing is cached and the next await loads again;
* :meth:`Lazy.reset` (what ``refresh()`` calls) swaps in a fresh slot rather
  than clearing the current one, so a load that finishes after the reset
  lands in the discarded slot and is not cached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar, cast

__all__ = ["MISSING", "Lazy"]

T = TypeVar("T")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: Marks a slot that holds no value yet.
MISSING: Final = _Missing()

# Load tasks are referenced here while they run: asyncio keeps only weak
# references to tasks, and every awaiter may have been cancelled.
_running: set[asyncio.Task[object]] = set()


def _forget(task: asyncio.Task[object]) -> None:
    _running.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: its awaiters, if any, got it already


class _Slot(Generic[T]):
    __slots__ = ("task", "value")

    def __init__(self, value: T | _Missing = MISSING) -> None:
        self.value: T | _Missing = value
        self.task: asyncio.Task[T] | None = None


class Lazy(Generic[T]):
    """A value loaded on first await, cached, and shared by concurrent awaiters.

    :param loader: a coroutine function called with the owner passed to
        :meth:`get` (an unbound method, say). The owner is not stored: a bound
        method here would make every owner a reference cycle, left for the
        garbage collector, which costs bulk scans dearly.
    """

    __slots__ = ("_loader", "_slot")

    def __init__(self, loader: Callable[[Any], Awaitable[T]]) -> None:
        self._loader = loader
        self._slot: _Slot[T] = _Slot()

    @property
    def loaded(self) -> bool:
        """Whether a value is cached."""
        return self._slot.value is not MISSING

    def peek(self) -> T | _Missing:
        """The cached value, or :data:`MISSING`, without loading."""
        return self._slot.value

    def set(self, value: T) -> None:
        """Cache ``value`` as if it had been loaded (a load in flight is discarded)."""
        self._slot = _Slot(value)

    def reset(self) -> None:
        """Drop the cached value; the next await loads again."""
        self._slot = _Slot()

    async def get(self, owner: Any) -> T:
        """The cached value, loading it first if needed (one load for all awaiters).

        :param owner: the object the value belongs to, passed to the loader.

        :raises Exception: whatever the loader raised; nothing is cached then.
        """
        slot = self._slot
        if slot.value is not MISSING:
            return cast(T, slot.value)
        task = slot.task
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(slot, owner))
            slot.task = task
            _running.add(cast("asyncio.Task[object]", task))
            task.add_done_callback(_forget)
        return await asyncio.shield(task)

    async def _load(self, slot: _Slot[T], owner: Any) -> T:
        try:
            value = await self._loader(owner)
        finally:
            slot.task = None
        slot.value = value
        return value

    def __repr__(self) -> str:
        state = "loading" if self._slot.task else repr(self._slot.value)
        return f"<Lazy {state}>"
