"""Coalescing: loads awaited at the same time share one batched query.

When many tasks ask a :class:`Coalescer` for keys at once (an
``asyncio.gather`` of ``vol.snapshots()`` over a backend, a task group), the
first request is fetched at once, by itself, in the caller's task, and the
keys asked for while that fetch is in flight are fetched together on the
next turn of the event loop, one query per ``max_batch`` keys; each waiter
gets its own share. A lone request, the sequential case, so costs one query
and no extra turn. A request for a key already being fetched waits for that
fetch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer", "build_all", "in_chunks"]

K = TypeVar("K")
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """Serve concurrent single-key requests with batched fetches.

    :param fetch_many: fetch a batch of keys; returns a value for each key it
        knows (a missing key gets ``default``).
    :param fetch_one: fetch one key (a request alone in its turn, or a batch
        of one).
    :param default: the value for keys ``fetch_many`` did not return.
    :param max_batch: the most keys one fetch asks for.
    """

    def __init__(
        self,
        fetch_many: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        fetch_one: Callable[[K], Awaitable[V]],
        default: Callable[[], V],
        max_batch: int = 1000,
    ) -> None:
        self._fetch_many = fetch_many
        self._fetch_one = fetch_one
        self._default = default
        self._max_batch = max_batch
        #: Keys waiting for the next batch, with their waiters.
        self._pending: dict[K, list[asyncio.Future[V]]] = {}
        self._flush_scheduled = False
        #: Keys being fetched (alone or in a batch), with the waiters that joined.
        self._in_flight: dict[K, list[asyncio.Future[V]]] = {}
        #: Whether a request fetched at once, in its caller's task, is in flight.
        self._alone_in_flight = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V:
        """The value for ``key``, fetched together with other keys asked for now."""
        return await self.request(key)

    def request(self, key: K) -> Awaitable[V]:
        """The value for ``key``, to await: a coroutine that fetches it alone when
        nothing else is being fetched alone or waiting for a batch (await it
        at once, or in a task started now), else a future that a batch, or the
        fetch of ``key`` already under way, resolves whoever awaits it."""
        joined = self._in_flight.get(key)
        if joined is None and not (self._alone_in_flight or self._pending):
            self._alone_in_flight = True
            joined = self._in_flight[key] = []
            return self._fetch_alone(key, joined)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        if joined is not None:
            joined.append(future)
        else:
            self._pending.setdefault(key, []).append(future)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        return future

    async def _fetch_alone(self, key: K, joined: list[asyncio.Future[V]]) -> V:
        """Fetch ``key`` by itself in the awaiting task; then answer those who joined."""
        try:
            value = await self._fetch_one(key)
        except Exception as exc:
            _fail(joined, exc)
            raise
        except BaseException:
            # The awaiting task was cancelled: those who joined fetch again.
            for future in joined:
                self._pending.setdefault(key, []).append(future)
            if joined and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
            raise
        finally:
            del self._in_flight[key]
            self._alone_in_flight = False
        for future in joined:
            if not future.done():
                future.set_result(value)
        return value

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        keys = list(pending)
        loop = asyncio.get_running_loop()
        for start in range(0, len(keys), self._max_batch):
            batch = {k: pending[k] for k in keys[start:start + self._max_batch]}
            self._in_flight.update(batch)
            task = loop.create_task(self._serve(batch))
            self._tasks.add(task)  # keep it referenced: its waiters may all be gone
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, batch: dict[K, list[asyncio.Future[V]]]) -> None:
        values: Mapping[K, V]
        try:
            if len(batch) == 1:
                (key,) = batch
                values = {key: await self._fetch_one(key)}
            else:
                values = await self._fetch_many(list(batch))
        except BaseException as exc:
            for key, futures in batch.items():
                del self._in_flight[key]
                _fail(futures, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for key, futures in batch.items():
            del self._in_flight[key]
            value = values[key] if key in values else self._default()
            for future in futures:
                if not future.done():
                    future.set_result(value)


def _fail(futures: list[asyncio.Future[V]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved: a cancelled waiter cannot


#: Items handled per turn of the event loop when thousands are handled at once.
BUILD_CHUNK = 256

A = TypeVar("A")
B = TypeVar("B")


async def in_chunks(items: Sequence[A]) -> AsyncIterator[Sequence[A]]:
    """``items`` in slices of :data:`BUILD_CHUNK`, with a turn of the event loop
    between slices, so building thousands of objects does not stall it."""
    for start in range(0, len(items), BUILD_CHUNK):
        if start:
            await asyncio.sleep(0)
        yield items[start:start + BUILD_CHUNK]


async def build_all(make: Callable[[A], B], items: Sequence[A]) -> list[B]:
    """``[make(item) for item in items]``, a slice per turn (see :func:`in_chunks`)."""
    built: list[B] = []
    async for chunk in in_chunks(items):
        built += map(make, chunk)
    return built
