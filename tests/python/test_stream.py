"""Streaming and cancellation against a real daemon and lmsim: deltas as the
model produces them and the whole result after; reasoning and tool-call
pieces; closing a stream, dropping it, cancelling a task or a future
cancels the request in the daemon (it leaves the status); errors raised by
the iteration."""

from __future__ import annotations

import asyncio
import gc
import json
import time

import pytest

import lmsched
from lmsched import _native

SYSTEM = "You are the narrator. Tell it slowly."

# Tokens come at 5/s of simulated time: a long answer is in flight for
# minutes, so only a cancel can end it during a test.
SLOW = ("--time-scale", "1", "--decode-tps", "5")

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]


def _gone(world, canceled=1):
    """Waits until the daemon has nothing queued or running and counts the
    cancel; and lmsim's slots are free again."""
    st = world.wait_status(lambda st: st["inflight"] == 0 and st["queue"]["depth"] == 0
                           and st["requests"]["failed_by_class"].get("canceled", 0) >= canceled)
    for _ in range(300):
        if world.sim_stats()["active"] == 0:
            break
        time.sleep(0.05)
    assert world.sim_stats()["active"] == 0
    return st


def test_stream_deltas_then_result(world):
    world.start(sim_args=("--time-scale", "20"))
    c = world.client()
    with c.stream(SYSTEM, "Once upon a time", max_tokens=12) as s:
        deltas = list(s)
    assert len(deltas) > 1  # pieces, not one block
    assert all(d.kind == "content" for d in deltas)
    r = s.result
    assert isinstance(r, lmsched.ChatResult)
    assert "".join(d.text for d in deltas) == r.content
    assert r.usage.completion_tokens == 12
    assert r.timings.ttft_ms is not None
    # The same answer as a plain chat.
    assert c.chat(SYSTEM, "Once upon a time", max_tokens=12).content == r.content
    # text() gives the content pieces.
    with c.stream(SYSTEM, "Once upon a time", max_tokens=12) as s2:
        assert "".join(s2.text()) == r.content


def test_stream_reasoning_then_content(world):
    world.start(sim_args=("--time-scale", "20", "--reasoning-tokens", "6"))
    c = world.client()
    with c.stream(SYSTEM, "Think first", max_tokens=20) as s:
        deltas = list(s)
    kinds = [d.kind for d in deltas]
    assert kinds[0] == "reasoning" and kinds[-1] == "content"
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")  # thoughts come first
    r = s.result
    assert r.reasoning == "".join(d.text for d in deltas if d.kind == "reasoning")
    assert r.content == "".join(d.text for d in deltas if d.kind == "content")
    assert r.to_dict()["reasoning"] == r.reasoning


def test_stream_tool_call_pieces(world):
    world.start(sim_args=("--time-scale", "20"))
    c = world.client()
    with c.stream(SYSTEM, "Weather in Paris?", tools=TOOLS, tool_choice="required") as s:
        deltas = list(s)
    calls = [d for d in deltas if d.kind == "tool_call"]
    assert calls and calls[0].id is not None and calls[0].name == "get_weather"
    assert all(d.id is None for d in calls[1:])
    r = s.result
    assert r.finish_reason == "tool_calls"
    assert len(r.tool_calls) == 1
    tc = r.tool_calls[0]
    assert (tc.id, tc.name) == (calls[0].id, "get_weather")
    assert "".join(d.text for d in calls) == tc.arguments
    assert "city" in json.loads(tc.arguments)


def test_closing_a_stream_cancels_it_in_the_daemon(world):
    world.start(sim_args=SLOW)
    c = world.client()
    s = c.stream(SYSTEM, "A long story", max_tokens=2000)
    first = next(s)
    assert first.kind == "content"
    st = world.status()
    assert st["inflight"] == 1
    s.close()
    assert s.done and isinstance(s.error, lmsched.Canceled)
    with pytest.raises(StopIteration):
        next(s)
    _gone(world)
    assert _native.streams == {} and _native.pending == {}


def test_leaving_the_with_block_cancels(world):
    world.start(sim_args=SLOW)
    c = world.client()
    with c.stream(SYSTEM, "A long story", max_tokens=2000) as s:
        for d in s:
            break
    _gone(world)


def test_a_dropped_stream_is_cancelled(world):
    world.start(sim_args=SLOW)
    c = world.client()
    s = c.stream(SYSTEM, "A long story", max_tokens=2000)
    next(s)
    del s
    gc.collect()
    _gone(world)
    assert c.chat(SYSTEM, "still fine?", max_tokens=1).usage.completion_tokens == 1


def test_cancelled_future_cancels_the_request(world):
    world.start(sim_args=SLOW, daemon_args=("--max-concurrent", "1"))
    c = world.client()
    running = c.submit(SYSTEM, "first, long", max_tokens=2000)
    world.wait_status(lambda st: st["inflight"] == 1)
    queued = c.submit(SYSTEM, "second, queued", max_tokens=2000)
    world.wait_status(lambda st: st["queue"]["depth"] == 1)
    assert queued.cancel() and queued.cancelled()
    world.wait_status(lambda st: st["queue"]["depth"] == 0)
    assert running.cancel() and running.cancelled()
    _gone(world, canceled=2)


def test_cancelled_task_leaves_the_daemon(world):
    """The issue's case: a cancelled task's request disappears from status,
    whether it was running or still queued."""
    world.start(sim_args=SLOW, daemon_args=("--max-concurrent", "1"))

    async def main():
        c = world.async_client()
        running = asyncio.ensure_future(c.chat(SYSTEM, "first, long", max_tokens=2000))
        while (await c.status())["inflight"] < 1:
            await asyncio.sleep(0.02)
        queued = asyncio.ensure_future(c.chat(SYSTEM, "second, queued", max_tokens=2000))
        while (await c.status())["queue"]["depth"] < 1:
            await asyncio.sleep(0.02)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        while (await c.status())["queue"]["depth"] != 0:
            await asyncio.sleep(0.02)
        # asyncio.wait_for's timeout cancels the same way.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(running, 0.2)
        r = await c.chat(SYSTEM, "afterwards", max_tokens=2)
        assert r.usage.completion_tokens == 2

    asyncio.run(main())
    _gone(world, canceled=2)


def test_async_stream_and_its_cancellation(world):
    world.start(sim_args=("--time-scale", "20"))

    async def main():
        c = world.async_client()
        async with c.stream(SYSTEM, "Once upon a time", max_tokens=10) as s:
            deltas = [d async for d in s]
        assert "".join(d.text for d in deltas) == s.result.content
        assert s.result.usage.completion_tokens == 10
        pieces = [t async for t in c.stream(SYSTEM, "Once upon a time", max_tokens=10).text()]
        assert "".join(pieces) == s.result.content

    asyncio.run(main())


def test_cancelling_the_task_that_iterates_a_stream(world):
    world.start(sim_args=SLOW)
    got = []

    async def reader(c):
        async for d in c.stream(SYSTEM, "A long story", max_tokens=2000):
            got.append(d)

    async def main():
        c = world.async_client()
        task = asyncio.ensure_future(reader(c))
        while not got:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    _gone(world)


def test_stream_errors(world):
    world.start(sim_args=("--time-scale", "20", "--malformed-rate", "1"),
                daemon_args=("--max-retries", "0"))
    c = world.client()
    s = c.stream(SYSTEM, "hello", max_tokens=16)
    with pytest.raises(lmsched.BackendStream):
        for _ in s:
            pass
    assert isinstance(s.error, lmsched.BackendStream) and s.result is None
    with pytest.raises(lmsched.InvalidRequest):
        c.stream(SYSTEM, "x", priority=11)
    with pytest.raises(TypeError):
        c.stream(SYSTEM, "x", bogus=1)


def test_cancelling_a_batch_cancels_its_requests(world):
    world.start(sim_args=SLOW, daemon_args=("--max-concurrent", "1"))

    async def main():
        c = world.async_client()
        task = asyncio.ensure_future(
            c.batch_chat([(SYSTEM, f"part {i}") for i in range(4)], max_tokens=2000))
        while (await c.status())["queue"]["depth"] < 3:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    _gone(world, canceled=4)
