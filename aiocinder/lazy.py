"""The awaitable lazy property primitive.

``await vol.snapshots()`` loads once, caches, and shares that one load between
every task that awaits it at the same time (single flight). :class:`Lazy`
holds the state for one property of one object:

* the load runs apart from every awaiter, and each awaiter waits on a future
  of its own that the load resolves directly: an awaiter that is cancelled
  does not cancel the load the others share, and the result reaches them
  without extra turns of the event loop. A load whose fetch is a coroutine
  runs in a task of its own; a fetch that hands back an
  :class:`asyncio.Future` (a batched query already under way, say) needs no
  task: the value is built when that future is done;
* if the load fails, every awaiter gets the error and nothing is cached: the
  next await loads again;
* :meth:`Lazy.reset` (what ``refresh()`` calls) forgets the load in flight, so
  a load that finishes after the reset still answers its own awaiters but is
  not cached;
* an await answered from the cache does not wait, but every
  :data:`HITS_PER_TURN`-th one (counted over every lazy property) gives the
  event loop a turn: a walk over thousands of cached volumes, which awaits
  nothing else, would hold the loop for tens of milliseconds otherwise.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar, cast

__all__ = ["HITS_PER_TURN", "MISSING", "Lazy", "cache_hit"]

T = TypeVar("T")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: Marks a lazy value not loaded yet.
MISSING: Final = _Missing()

#: Awaits answered from a cache between two turns given to the event loop.
HITS_PER_TURN: Final = 128
_hits = 0

# Load tasks are referenced here while they run: asyncio keeps only weak
# references to tasks, and every awaiter may have been cancelled.
_running: set[asyncio.Task[None]] = set()


async def cache_hit() -> None:
    """Count an await answered from a cache; give the loop a turn every
    :data:`HITS_PER_TURN` of them."""
    global _hits
    _hits += 1
    if _hits >= HITS_PER_TURN:
        _hits = 0
        await asyncio.sleep(0)


class _Load(Generic[T]):
    """One load in flight and the futures of the tasks awaiting it."""

    __slots__ = ("waiters",)

    def __init__(self, first: asyncio.Future[T]) -> None:
        self.waiters = [first]


class Lazy(Generic[T]):
    """A value loaded on first await, cached, and shared by concurrent awaiters.

    :param fetch: called with the owner passed to :meth:`get` (an unbound
        method, say); returns an awaitable of the raw value: a coroutine, or
        an :class:`asyncio.Future` that is resolved whoever awaits it.
    :param build: makes the value from the owner and the raw value (without
        it, the raw value is the value).

    The owner is not stored: a bound method here would make every owner a
    reference cycle, left for the garbage collector, which costs bulk scans
    dearly.
    """

    __slots__ = ("_build", "_fetch", "_load", "_value")

    def __init__(
        self,
        fetch: Callable[[Any], Awaitable[Any]],
        build: Callable[[Any, Any], T] | None = None,
    ) -> None:
        self._fetch = fetch
        self._build = build
        self._value: T | _Missing = MISSING
        self._load: _Load[T] | None = None

    @property
    def loaded(self) -> bool:
        """Whether a value is cached."""
        return self._value is not MISSING

    def peek(self) -> T | _Missing:
        """The cached value, or :data:`MISSING`, without loading."""
        return self._value

    def set(self, value: T) -> None:
        """Cache ``value`` as if it had been loaded (a load in flight is not cached)."""
        self._value = value
        self._load = None

    def reset(self) -> None:
        """Drop the cached value; the next await loads again."""
        self._value = MISSING
        self._load = None

    async def get(self, owner: Any) -> T:
        """The cached value, loading it first if needed (one load for all awaiters).

        :param owner: the object the value belongs to, passed to ``fetch`` and ``build``.

        :raises Exception: whatever the fetch or the build raised; nothing is cached then.
        """
        value = self._value
        if value is not MISSING:
            await cache_hit()
            return cast(T, value)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        load = self._load
        if load is not None:
            load.waiters.append(waiter)
            return await waiter
        load = self._load = _Load(waiter)
        try:
            fetching = self._fetch(owner)
        except BaseException as exc:
            self._fail(load, exc)
            raise
        if isinstance(fetching, asyncio.Future):
            fetching.add_done_callback(functools.partial(self._landed, load, owner))
        else:
            task = loop.create_task(self._run(load, owner, fetching))
            _running.add(task)
            task.add_done_callback(_running.discard)
        return await waiter

    async def _run(self, load: _Load[T], owner: Any, fetching: Awaitable[Any]) -> None:
        try:
            value = self._value_of(owner, await fetching)
        except BaseException as exc:
            self._fail(load, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._finish(load, value)

    def _landed(self, load: _Load[T], owner: Any, fetched: asyncio.Future[Any]) -> None:
        try:
            value = self._value_of(owner, fetched.result())
        except (Exception, asyncio.CancelledError) as exc:  # fetch or build failed
            self._fail(load, exc)
            return
        self._finish(load, value)

    def _value_of(self, owner: Any, raw: Any) -> T:
        return cast(T, raw) if self._build is None else self._build(owner, raw)

    def _finish(self, load: _Load[T], value: T) -> None:
        if self._load is load:
            self._value = value
            self._load = None
        for waiter in load.waiters:
            if not waiter.done():
                waiter.set_result(value)

    def _fail(self, load: _Load[T], exc: BaseException) -> None:
        """Every awaiter of ``load`` gets ``exc``; nothing is cached."""
        if self._load is load:
            self._load = None
        for waiter in load.waiters:
            if waiter.done():
                continue  # its awaiter was cancelled
            if isinstance(exc, asyncio.CancelledError):
                waiter.cancel()
            else:
                waiter.set_exception(exc)

    def __repr__(self) -> str:
        state = "loading" if self._load is not None else repr(self._value)
        return f"<Lazy {state}>"
