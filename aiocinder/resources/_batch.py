"""Coalescing: lazy loads awaited at the same time share one batched query.

When many tasks await ``vol.snapshots()`` on different volumes at once (an
``asyncio.gather`` over a backend, a task group), each load asks the
:class:`Coalescer` for its key. Keys asked for during one turn of the event
loop are fetched together on the next turn, with one query per
``max_batch`` keys, and each waiter gets its own share. A lone request costs
one extra loop turn and still goes through the store's single-key query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

K = TypeVar("K")
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """Serve concurrent single-key requests with batched fetches.

    :param fetch_many: fetch a batch of keys; returns a value for each key it
        knows (a missing key gets ``default``).
    :param fetch_one: fetch one key (used when a batch holds a single key).
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
        self._pending: dict[K, list[asyncio.Future[V]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V:
        """The value for ``key``, fetched together with other keys asked for now."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        keys = list(pending)
        loop = asyncio.get_running_loop()
        for start in range(0, len(keys), self._max_batch):
            batch = {k: pending[k] for k in keys[start:start + self._max_batch]}
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
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # retrieved: a cancelled waiter cannot
            if not isinstance(exc, Exception):
                raise
            return
        for key, futures in batch.items():
            value = values[key] if key in values else self._default()
            for future in futures:
                if not future.done():
                    future.set_result(value)
