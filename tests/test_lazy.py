"""The two primitives under every lazy property: Lazy (single flight, cache)
and Coalescer (concurrent requests share batched fetches)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest
from support import Ticker

from aiocinder.lazy import HITS_PER_TURN, MISSING, Lazy
from aiocinder.resources._batch import Coalescer

pytestmark = pytest.mark.asyncio


class Owner:
    def __init__(self) -> None:
        self.loads = 0
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def load(self) -> list[int]:
        self.loads += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [self.loads]


async def test_concurrent_awaits_share_one_load_and_cache_it() -> None:
    owner, lazy = Owner(), Lazy[list[int]](Owner.load)
    tasks = [asyncio.create_task(lazy.get(owner)) for _ in range(10)]
    await asyncio.sleep(0)
    owner.gate.set()
    results = await asyncio.gather(*tasks)
    assert owner.loads == 1 and all(r is results[0] for r in results)
    assert lazy.loaded and lazy.peek() == [1]
    assert await lazy.get(owner) == [1] and owner.loads == 1


async def test_a_cancelled_awaiter_leaves_the_load_to_the_others() -> None:
    owner, lazy = Owner(), Lazy[list[int]](Owner.load)
    first = asyncio.create_task(lazy.get(owner))
    second = asyncio.create_task(lazy.get(owner))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    owner.gate.set()
    assert await second == [1]
    assert owner.loads == 1 and lazy.peek() == [1]


async def test_even_the_only_awaiter_cancelled_lets_the_load_finish_and_cache() -> None:
    owner, lazy = Owner(), Lazy[list[int]](Owner.load)
    task = asyncio.create_task(lazy.get(owner))
    await asyncio.sleep(0.01)
    task.cancel()
    owner.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.01)
    assert lazy.peek() == [1]
    assert await lazy.get(owner) == [1] and owner.loads == 1


async def test_a_failed_load_reaches_every_awaiter_and_caches_nothing() -> None:
    owner, lazy = Owner(), Lazy[list[int]](Owner.load)
    owner.fail = RuntimeError("store down")
    tasks = [asyncio.create_task(lazy.get(owner)) for _ in range(3)]
    await asyncio.sleep(0)
    owner.gate.set()
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        assert isinstance(outcome, RuntimeError) and str(outcome) == "store down"
    assert not lazy.loaded and lazy.peek() is MISSING
    owner.fail = None
    assert await lazy.get(owner) == [2], "the next await loads again"


async def test_a_load_finishing_after_reset_answers_its_awaiters_but_is_not_cached() -> None:
    owner, lazy = Owner(), Lazy[list[int]](Owner.load)
    stale = asyncio.create_task(lazy.get(owner))
    await asyncio.sleep(0)
    lazy.reset()
    owner.gate.set()
    assert await stale == [1]
    assert not lazy.loaded
    assert await lazy.get(owner) == [2]


async def test_set_wins_over_a_load_in_flight() -> None:
    owner, lazy = Owner(), Lazy[list[int]](Owner.load)
    loading = asyncio.create_task(lazy.get(owner))
    await asyncio.sleep(0)
    lazy.set([42])
    owner.gate.set()
    assert await loading == [1]
    assert lazy.peek() == [42]


class Source:
    """Counts fetches and records which task made them."""

    def __init__(self) -> None:
        self.one: list[tuple[str, asyncio.Task[object] | None]] = []
        self.many: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def fetch_one(self, key: str) -> str:
        self.one.append((key, asyncio.current_task()))
        await asyncio.sleep(0)  # a real store always waits for its thread or server
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return key.upper()

    async def fetch_many(self, keys: Sequence[str]) -> Mapping[str, str]:
        self.many.append(list(keys))
        await asyncio.sleep(0)
        await self.gate.wait()
        return {k: k.upper() for k in keys if k != "missing"}


def coalescer(source: Source, max_batch: int = 1000) -> Coalescer[str, str]:
    return Coalescer(source.fetch_many, source.fetch_one, lambda: "default", max_batch)


async def test_a_lone_request_is_fetched_at_once_in_the_callers_task() -> None:
    source = Source()
    loader = coalescer(source)
    for key in ("a", "b", "c"):
        assert await loader.get(key) == key.upper()
    assert source.one == [(k, asyncio.current_task()) for k in "abc"]
    assert source.many == []


async def test_a_lone_request_that_never_waits_leaves_the_next_one_alone_too() -> None:
    calls: list[str] = []

    async def at_once(key: str) -> str:  # the memory store answers without waiting
        calls.append(key)
        return key

    async def never(keys: Sequence[str]) -> Mapping[str, str]:
        raise AssertionError("sequential requests are not batched")

    loader = Coalescer[str, str](never, at_once, str)
    assert [await loader.get(k) for k in "abc"] == list("abc") == calls


async def test_requests_of_one_turn_after_the_first_go_in_batches() -> None:
    source = Source()
    loader = coalescer(source, max_batch=4)
    keys = [f"k{i}" for i in range(10)] + ["missing"]
    values = await asyncio.gather(*(loader.get(k) for k in keys))
    assert values == [k.upper() for k in keys[:-1]] + ["default"]
    assert [k for k, _ in source.one] == ["k0"]
    assert source.many == [["k1", "k2", "k3", "k4"], ["k5", "k6", "k7", "k8"], ["k9", "missing"]]


async def test_a_key_being_fetched_is_not_fetched_again() -> None:
    source = Source()
    source.gate.clear()
    loader = coalescer(source)
    first = asyncio.create_task(loader.get("a"))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(loader.get("a")) for _ in range(3)]
    await asyncio.sleep(0.01)
    source.gate.set()
    assert await asyncio.gather(first, *later) == ["A"] * 4
    assert len(source.one) == 1 and source.many == []


async def test_waiters_of_a_cancelled_lone_fetch_are_served_all_the_same() -> None:
    source = Source()
    source.gate.clear()
    loader = coalescer(source)
    first = asyncio.create_task(loader.get("a"))
    await asyncio.sleep(0.01)
    joined = asyncio.create_task(loader.get("a"))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    source.gate.set()
    assert await joined == "A"
    assert [k for k, _ in source.one] == ["a", "a"]


async def test_a_failed_fetch_fails_every_waiter_of_the_key() -> None:
    source = Source()
    source.gate.clear()
    source.fail = RuntimeError("boom")
    loader = coalescer(source)
    first = asyncio.create_task(loader.get("a"))
    await asyncio.sleep(0.01)
    joined = asyncio.create_task(loader.get("a"))
    await asyncio.sleep(0.01)
    source.gate.set()
    for task in (first, joined):
        with pytest.raises(RuntimeError, match="boom"):
            await task
    source.fail = None
    assert await loader.get("a") == "A", "nothing is remembered of a failure"


class Batched:
    """A fetch that hands back a future another party resolves (a batch)."""

    def __init__(self) -> None:
        self.future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self.fetches = 0
        self.builds = 0

    def fetch(self) -> asyncio.Future[list[int]]:
        self.fetches += 1
        return self.future

    def build(self, raw: list[int]) -> list[str]:
        self.builds += 1
        return [str(x) for x in raw]


async def test_a_fetch_that_is_a_future_needs_no_task_and_is_built_once() -> None:
    owner = Batched()
    lazy = Lazy[list[str]](Batched.fetch, Batched.build)
    tasks_before = len(asyncio.all_tasks())
    waiting = [asyncio.create_task(lazy.get(owner)) for _ in range(5)]
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == tasks_before + 5, "no load task of its own"
    owner.future.set_result([1, 2])
    assert await asyncio.gather(*waiting) == [["1", "2"]] * 5
    assert (owner.fetches, owner.builds) == (1, 1) and lazy.peek() == ["1", "2"]


def build_ints(owner: Batched, raw: list[object]) -> list[str]:
    return [str(int(x)) for x in raw]  # type: ignore[call-overload]


@pytest.mark.parametrize("outcome", ["fetch fails", "fetch cancelled", "build fails"])
async def test_a_failed_future_fetch_or_build_caches_nothing(outcome: str) -> None:
    owner = Batched()
    lazy = Lazy[list[str]](Batched.fetch, build_ints)
    waiting = asyncio.create_task(lazy.get(owner))
    await asyncio.sleep(0)
    expected: type[BaseException]
    if outcome == "fetch fails":
        owner.future.set_exception(RuntimeError("store down"))
        expected = RuntimeError
    elif outcome == "fetch cancelled":
        owner.future.cancel()
        expected = asyncio.CancelledError
    else:
        owner.future.set_result(["not a number"])  # type: ignore[list-item]
        expected = ValueError
    with pytest.raises(expected):
        await waiting
    assert not lazy.loaded
    owner.future = asyncio.get_running_loop().create_future()
    owner.future.set_result([3])
    assert await lazy.get(owner) == ["3"], "the next await loads again"


async def test_a_walk_over_cached_values_gives_the_loop_turns() -> None:
    owner, lazy = Owner(), Lazy[list[int]](Owner.load)
    owner.gate.set()
    await lazy.get(owner)
    async with Ticker() as ticker:
        for _ in range(10 * HITS_PER_TURN):
            assert await lazy.get(owner) == [1]  # answered from the cache...
    assert owner.loads == 1
    assert ticker.turns >= 9, "...and yet the loop ran other tasks meanwhile"
