"""batch_chat, blocking and asyncio: a hundred requests with mixed
priorities in input order, failures in their place (or raised), a full
queue, transient "Channel Error"s retried by the daemon, the item shapes."""

from __future__ import annotations

import asyncio
import statistics

import pytest

import lmsched

SYSTEM = "You are the coder of a small team. Write the smallest change."


def _hundred():
    # Each item is told apart by its reply length, so the order can be read
    # off the results.
    return [
        {"system": SYSTEM, "messages": f"step {i}", "max_tokens": 1 + i % 7, "priority": i % 10}
        for i in range(100)
    ]


def _check_hundred(results, world):
    assert len(results) == 100
    for i, r in enumerate(results):
        assert isinstance(r, lmsched.ChatResult), (i, r)
        assert r.usage.completion_tokens == 1 + i % 7, i
    # One request at a time at the backend, so the queue decided the order:
    # higher priorities waited less.
    wait = {p: statistics.median(results[i].timings.queue_ms for i in range(p, 100, 10))
            for p in range(10)}
    assert wait[9] < wait[5] < wait[0], wait
    st = world.status()
    assert st["requests"]["completed"] == 100
    assert st["inflight"] == 0 and st["queue"]["depth"] == 0


def test_batch_of_100_mixed_priorities(world):
    world.start(sim_args=("--time-scale", "20"), daemon_args=("--max-concurrent", "1"))
    c = world.client()
    _check_hundred(c.batch_chat(_hundred()), world)


def test_async_batch_of_100_mixed_priorities(world):
    world.start(sim_args=("--time-scale", "20"), daemon_args=("--max-concurrent", "1"))

    async def main():
        c = world.async_client()
        return await c.batch_chat(_hundred())

    _check_hundred(asyncio.run(main()), world)


def _mixed():
    return [
        (SYSTEM, "fine"),
        {"system": SYSTEM, "messages": "bad priority", "priority": 12},
        42,
        lmsched.Request(SYSTEM, "too long a name", agent="n" * 300),
        (SYSTEM, "fine too", {"max_tokens": 2}),
    ]


def _check_mixed(out):
    assert len(out) == 5
    assert isinstance(out[0], lmsched.ChatResult)
    assert isinstance(out[1], lmsched.InvalidRequest) and out[1].field == "priority"
    assert isinstance(out[2], lmsched.InvalidRequest)
    assert isinstance(out[3], lmsched.TooLarge) and out[3].field == "agent"
    assert isinstance(out[4], lmsched.ChatResult) and out[4].usage.completion_tokens == 2
    assert [getattr(x, "index", None) for x in out] == [None, 1, 2, 3, None]


def test_batch_failures_in_place(world):
    world.start()
    c = world.client(max_tokens=3)
    _check_mixed(c.batch_chat(_mixed()))
    with pytest.raises(lmsched.InvalidRequest) as ei:
        c.batch_chat(_mixed(), raise_errors=True)
    assert ei.value.index == 1
    # Raised only once every request had finished.
    st = world.status()
    assert st["inflight"] == 0
    assert st["requests"]["completed"] == 4


def test_async_batch_failures_in_place(world):
    world.start()

    async def main():
        c = world.async_client(max_tokens=3)
        _check_mixed(await c.batch_chat(_mixed()))
        with pytest.raises(lmsched.InvalidRequest) as ei:
            await c.batch_chat(_mixed(), raise_errors=True)
        assert ei.value.index == 1

    asyncio.run(main())
    st = world.status()
    assert st["inflight"] == 0
    assert st["requests"]["completed"] == 4


def test_batch_full_queue_loses_nothing(world):
    world.start(sim_args=("--time-scale", "5"),
                daemon_args=("--max-concurrent", "1", "--max-queue", "3"))
    c = world.client()
    out = c.batch_chat([(SYSTEM, f"q{i}") for i in range(12)], max_tokens=16)
    assert len(out) == 12
    busy = [r for r in out if isinstance(r, lmsched.Busy)]
    ok = [r for r in out if isinstance(r, lmsched.ChatResult)]
    assert len(busy) + len(ok) == 12
    assert len(busy) >= 1 and len(ok) >= 3
    assert all(b.retryable and "queue" in b.message for b in busy)
    st = world.status()
    assert st["requests"]["rejected_busy"] == len(busy)
    assert st["requests"]["completed"] == len(ok)


def test_batch_survives_channel_errors(world):
    """The seed's "Channel Error" bursts: lmsim fails 30% of requests with
    LM Studio's 500; the daemon retries them, every item succeeds, and the
    results say how often."""
    world.start(sim_args=("--time-scale", "50", "--fail-rate", "0.3", "--seed", "3"),
                daemon_args=("--max-retries", "10"))
    c = world.client()
    out = c.batch_chat([(SYSTEM, f"q{i}") for i in range(30)], max_tokens=4)
    assert all(isinstance(r, lmsched.ChatResult) for r in out), out
    retries = sum(r.retries for r in out)
    assert retries > 0
    assert world.status()["requests"]["retried"] == retries
    assert world.sim_stats()["faults"]["fail"] == retries


def test_batch_defaults_and_item_shapes(world):
    world.start()
    c = world.client(max_tokens=2)
    out = c.batch_chat(
        [
            (SYSTEM, "client default"),
            lmsched.Request(SYSTEM, [{"role": "user", "content": "item wins"}], max_tokens=5),
            {"messages": [{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": "batch default"}]},
        ],
        max_tokens=3,
    )
    assert [r.usage.completion_tokens for r in out] == [3, 5, 3]
    assert c.batch_chat([]) == []
    with pytest.raises(lmsched.InvalidRequest):
        c.batch_chat([(SYSTEM, "x", {"timeout": 1})], raise_errors=True)
