"""Per-key locks around DynamoDB's read-merge-write of an item."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import pytest

from metaas.server.storage.dynamodb.locks import Key, KeyedLocks

A: Key = ("shop#latency", "0001")
B: Key = ("shop#latency", "0002")
C: Key = ("bank#load", "0001")


class Holder:
    """A task holding ``keys`` until released, recording when it is inside."""

    def __init__(self, locks: KeyedLocks, keys: Iterable[Key], inside: list[str], name: str):
        self.inside = inside
        self.name = name
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._run(locks, list(keys)))

    async def _run(self, locks: KeyedLocks, keys: list[Key]) -> None:
        async with locks.hold(keys):
            self.inside.append(self.name)
            self.entered.set()
            await self.release.wait()
            self.inside.remove(self.name)

    async def finish(self) -> None:
        self.release.set()
        await asyncio.wait_for(self.task, 1.0)


async def settle(check: Callable[[], bool] = lambda: False, rounds: int = 20) -> None:
    """Let the other tasks run until ``check`` holds (or ``rounds`` passes)."""
    for _ in range(rounds):
        if check():
            return
        await asyncio.sleep(0)


async def test_one_holder_per_key_at_a_time() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    first = Holder(locks, [A], inside, "first")
    await first.entered.wait()
    second = Holder(locks, [A], inside, "second")
    await settle()
    assert inside == ["first"]
    assert not second.entered.is_set()
    await first.finish()
    await asyncio.wait_for(second.entered.wait(), 1.0)
    assert inside == ["second"]
    await second.finish()


async def test_holders_of_different_keys_run_together() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    holders = [Holder(locks, [A, B], inside, "ab"), Holder(locks, [C], inside, "c")]
    await asyncio.wait_for(asyncio.gather(*(h.entered.wait() for h in holders)), 1.0)
    assert sorted(inside) == ["ab", "c"]
    assert len(locks) == 3
    for holder in holders:
        await holder.finish()


async def test_a_key_repeated_in_one_call_is_taken_once() -> None:
    locks = KeyedLocks()
    async with asyncio.timeout(1.0), locks.hold([A, B, A]):
        assert len(locks) == 2
    assert len(locks) == 0


async def test_overlapping_keys_in_opposite_orders_do_not_deadlock() -> None:
    """Both wait for A while someone holds it. Were each to take its keys in
    the order given, one would hold B while waiting for A, and the other A
    while waiting for B."""
    locks = KeyedLocks()
    inside: list[str] = []
    blocker = Holder(locks, [A], inside, "blocker")
    await blocker.entered.wait()
    forward = Holder(locks, [A, B], inside, "forward")
    backward = Holder(locks, [B, A], inside, "backward")
    await settle()
    # Neither holds B while it waits for A: B is free.
    async with asyncio.timeout(1.0), locks.hold([B]):
        pass
    await blocker.finish()
    await asyncio.wait_for(forward.entered.wait(), 1.0)
    assert inside == ["forward"]
    await forward.finish()
    await asyncio.wait_for(backward.entered.wait(), 1.0)
    await backward.finish()
    assert len(locks) == 0


async def test_many_writers_over_overlapping_keys_all_finish() -> None:
    locks = KeyedLocks()
    keys = [A, B, C]
    counts = dict.fromkeys(keys, 0)

    async def write(order: list[Key]) -> None:
        for _ in range(20):
            async with locks.hold(order):
                before = {key: counts[key] for key in order}
                await asyncio.sleep(0)  # another writer gets the loop here
                for key in order:
                    counts[key] = before[key] + 1

    orders = [keys, keys[::-1], [B, A], [C, A], [B, C]]
    await asyncio.wait_for(asyncio.gather(*(write(order) for order in orders)), 5.0)
    # Every read-modify-write counted: none interleaved with another on a key.
    assert counts == {A: 20 * 4, B: 20 * 4, C: 20 * 4}
    assert len(locks) == 0


async def test_locks_are_dropped_once_nobody_holds_or_awaits_them() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    assert len(locks) == 0
    first = Holder(locks, [A, B], inside, "first")
    await first.entered.wait()
    second = Holder(locks, [B], inside, "second")
    await settle()
    assert len(locks) == 2
    await first.finish()
    await second.entered.wait()
    assert len(locks) == 1  # A is unused now; B is held
    await second.finish()
    assert len(locks) == 0


async def test_an_error_inside_releases_the_keys() -> None:
    locks = KeyedLocks()
    with pytest.raises(ZeroDivisionError):
        async with locks.hold([A, B]):
            raise ZeroDivisionError
    assert len(locks) == 0
    async with asyncio.timeout(1.0), locks.hold([A, B]):
        pass


async def test_a_waiter_cancelled_before_any_lock_leaves_none_behind() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    holder = Holder(locks, [A], inside, "holder")
    await holder.entered.wait()
    waiter = Holder(locks, [A, B], inside, "waiter")
    await settle()
    waiter.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter.task
    assert len(locks) == 1  # the holder's A only
    await holder.finish()
    assert len(locks) == 0
    async with asyncio.timeout(1.0), locks.hold([A, B]):
        pass


async def test_a_waiter_cancelled_holding_some_keys_gives_them_back() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    holder = Holder(locks, [B], inside, "holder")
    await holder.entered.wait()
    waiter = Holder(locks, [A, B], inside, "waiter")  # takes A, then waits for B
    await settle()
    blocked = Holder(locks, [A], inside, "blocked")
    await settle()
    assert not blocked.entered.is_set()
    waiter.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter.task
    await asyncio.wait_for(blocked.entered.wait(), 1.0)  # A was given back
    assert sorted(inside) == ["blocked", "holder"]
    await blocked.finish()
    await holder.finish()
    assert len(locks) == 0
    assert not waiter.entered.is_set()
