"""The asyncio client against a real daemon and lmsim: chat, many at once
from one thread, completions handed to the loop (no extra threads), task
cancellation, several loops, a loop closed under a request."""

from __future__ import annotations

import asyncio
import threading

import pytest

import lmsched
from conftest import chatml_tokens

SYSTEM = "You are the critic of a small team. Point at the weakest step."


def test_async_chat(world):
    world.start()

    async def main():
        async with lmsched.AsyncClient(world.url) as c:
            r = await c.chat(SYSTEM, "Review: ship it.", max_tokens=6)
            st = await c.status()
            return r, st

    r, st = asyncio.run(main())
    assert r.usage.completion_tokens == 6
    assert r.usage.prompt_tokens == chatml_tokens(
        SYSTEM, [{"role": "user", "content": "Review: ship it."}])
    assert r.timings.total_ms > 0
    assert st["requests"]["completed"] == 1


def test_async_many_in_flight_without_threads(world):
    """Fifty chats from one task's gather run at once, and completing them
    takes no thread of ours: the library's threads hand each outcome to the
    loop."""
    world.start(sim_args=("--time-scale", "5", "--slots", "8"),
                daemon_args=("--max-concurrent", "8"))
    before = threading.active_count()
    seen = []

    async def main():
        c = world.async_client()

        async def one(i):
            r = await c.chat(SYSTEM, f"item {i}", max_tokens=1 + i % 4)
            seen.append(threading.get_ident() == loop_thread)
            return r

        loop_thread = threading.get_ident()
        rs = await asyncio.gather(*(one(i) for i in range(50)))
        during = threading.active_count()
        return rs, during

    rs, during = asyncio.run(main())
    assert [r.usage.completion_tokens for r in rs] == [1 + i % 4 for i in range(50)]
    assert all(seen)  # every coroutine resumed on the loop's thread
    assert during == before  # no executor, no waiting threads
    assert world.sim_stats()["max_active"] >= 4


def test_async_errors_are_raised_in_the_task(world):
    world.start()

    async def main():
        c = world.async_client()
        with pytest.raises(lmsched.TooLarge) as ei:
            await c.chat(SYSTEM, "x", agent="z" * 300)
        assert ei.value.field == "agent"
        with pytest.raises(lmsched.InvalidRequest):
            await c.chat(SYSTEM, "x", priority=10)
        c.close()
        with pytest.raises(lmsched.Closed):
            await c.chat(SYSTEM, "x")

    asyncio.run(main())


def test_async_cancelled_task_stops_waiting(world):
    """Cancelling the task ends the wait at once, and the late completion
    is dropped without disturbing the loop."""
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "10"))

    async def main():
        c = world.async_client()
        task = asyncio.ensure_future(c.chat(SYSTEM, "long", max_tokens=20))
        while world.status()["inflight"] < 1:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The client still works, also while the cancelled one completes.
        r = await c.chat(SYSTEM, "after", max_tokens=2)
        assert r.usage.completion_tokens == 2
        await asyncio.sleep(0)

    asyncio.run(main())
    world.wait_status(lambda st: st["inflight"] == 0)


def test_one_client_many_loops(world):
    world.start()
    c = world.async_client()
    out = {}

    def run(k):
        async def main():
            rs = await asyncio.gather(*(c.chat(SYSTEM, f"{k}-{i}", max_tokens=1 + k) for i in range(5)))
            return [r.usage.completion_tokens for r in rs]

        out[k] = asyncio.run(main())

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == {k: [1 + k] * 5 for k in range(4)}


def test_loop_closed_under_a_request(world):
    """A loop that ends while its request is in flight: the completion finds
    the loop closed and is dropped; nothing breaks."""
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "20"))
    c = world.async_client()
    loop = asyncio.new_event_loop()
    fut = loop.run_until_complete(_start(c, world))
    fut._log_destroy_pending = False  # it is meant to stay pending
    loop.close()
    world.wait_status(lambda st: st["requests"]["completed"] == 1)
    assert not fut.done()
    # The client is fine.
    assert asyncio.run(c.chat(SYSTEM, "x", max_tokens=1)).usage.completion_tokens == 1


async def _start(c, world):
    task = asyncio.ensure_future(c.chat(SYSTEM, "slow", max_tokens=10))
    while world.status()["inflight"] < 1:
        await asyncio.sleep(0.02)
    return task
