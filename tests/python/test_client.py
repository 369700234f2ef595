"""The blocking client against a real daemon and lmsim: chat and its result,
the OpenAI message shape, options, argument checks, submit, status, close,
and threads sharing one client."""

from __future__ import annotations

import threading

import pytest

import lmsched
from conftest import chatml_tokens

SYSTEM = "You are the planner of a small team. Answer in one short paragraph."


def test_chat_returns_reply_usage_and_timings(world):
    world.start()
    c = world.client()
    r = c.chat(SYSTEM, "What comes first?", max_tokens=8)
    assert isinstance(r, lmsched.ChatResult)
    assert len(r.content.split()) == 8  # lmsim: one word a token
    assert r.finish_reason == "length"
    assert r.model == "lmsim-8b-q4"
    assert r.tool_calls == []
    assert r.retries == 0
    msgs = [{"role": "user", "content": "What comes first?"}]
    assert r.usage.prompt_tokens == chatml_tokens(SYSTEM, msgs)
    assert r.usage.completion_tokens == 8
    assert r.usage.cached_tokens == 0
    assert r.timings.queue_ms is not None and r.timings.queue_ms >= 0
    assert r.timings.ttft_ms is not None and r.timings.ttft_ms > 0
    assert r.timings.total_ms >= r.timings.ttft_ms
    assert r.message() == {"role": "assistant", "content": r.content}
    doc = r.to_dict()
    assert set(doc) == {"content", "finish_reason", "model", "usage", "timings", "retries"}


def test_system_prompt_is_the_cached_prefix(world):
    """The system prompt goes out byte for byte as the shared prefix: a
    second request with it reuses the server's prompt cache."""
    world.start(daemon_args=("--max-concurrent", "1"))
    c = world.client()
    first = c.chat(SYSTEM, "Question one?", max_tokens=2)
    second = c.chat(SYSTEM, "Question two?", max_tokens=2)
    assert first.usage.cached_tokens == 0
    sys_tokens = len(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n".encode()) // 4
    assert second.usage.cached_tokens >= sys_tokens
    assert second.usage.prefilled_tokens == second.usage.prompt_tokens - second.usage.cached_tokens


def test_openai_message_shape(world):
    world.start()
    c = world.client()
    conv = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Plan a release."},
        {"role": "assistant", "content": "1. Freeze. 2. Test. 3. Ship."},
        {"role": "user", "content": "Shorter."},
    ]
    # system=None lifts the conversation's leading system message.
    r = c.chat(None, conv, max_tokens=4)
    assert r.usage.prompt_tokens == chatml_tokens(SYSTEM, conv[1:])
    # The same with the system prompt given apart: the same prompt.
    r2 = c.chat(SYSTEM, conv[1:], max_tokens=4, seed=7)
    assert r2.usage.prompt_tokens == r.usage.prompt_tokens
    # A conversation continues with the reply's message.
    r3 = c.chat(SYSTEM, conv[1:] + [r2.message(), {"role": "user", "content": "Thanks"}],
                max_tokens=2)
    assert r3.usage.prompt_tokens == chatml_tokens(
        SYSTEM, conv[1:] + [r2.message(), {"role": "user", "content": "Thanks"}])


def test_options_reach_the_server(world):
    world.start()
    c = world.client(agent="tester", max_tokens=5)
    r = c.chat(SYSTEM, "x")  # the client's default max_tokens
    assert r.usage.completion_tokens == 5
    r = c.chat(SYSTEM, "x", max_tokens=3, temperature=0.2, top_p=0.9, stop=["\n\n"],
               priority=9, deadline=30, client_id="req-1", model="lmsim-8b-q4")
    assert r.usage.completion_tokens == 3
    # lmsim's words depend on the prompt and the seed only.
    a = c.chat(SYSTEM, "same", seed=42, max_tokens=6)
    b = c.chat(SYSTEM, "same", seed=42, max_tokens=6)
    d = c.chat(SYSTEM, "same", seed=43, max_tokens=6)
    assert a.content == b.content
    assert a.content != d.content


def test_bad_arguments_raise_before_sending(world):
    world.start()
    c = world.client()
    cases = [
        (dict(priority=12), "priority"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=2), "top_p"),
        (dict(stop=["a"] * 17), "stop"),
        (dict(model=5), "model"),
        (dict(deadline=-1), "deadline"),
        (dict(timeout=0), "timeout"),
    ]
    for opts, field in cases:
        with pytest.raises(lmsched.InvalidRequest) as ei:
            c.chat(SYSTEM, "x", **opts)
        assert ei.value.field == field, opts
        assert isinstance(ei.value, ValueError)
    with pytest.raises(lmsched.InvalidRequest) as ei:
        c.chat("nul\0inside", "x")
    assert ei.value.field == "system"
    with pytest.raises(lmsched.InvalidRequest) as ei:
        c.chat(SYSTEM, [])
    assert ei.value.field == "messages"
    with pytest.raises(lmsched.InvalidRequest) as ei:
        c.chat(SYSTEM, [{"role": "user", "content": "a"}, "not a dict"])
    assert ei.value.field == "messages[1]"
    with pytest.raises(lmsched.InvalidRequest) as ei:
        c.chat(SYSTEM, [{"content": "no role"}])
    assert ei.value.field == "messages[0].role"
    with pytest.raises(TypeError) as te:
        c.chat(SYSTEM, "x", max_token=3)
    assert "max_token" in str(te.value)
    st = world.status()
    assert st["requests"]["received"] == 0


def test_daemon_names_the_field(world):
    """A limit the daemon owns comes back with the daemon's message and the
    field it named."""
    world.start()
    c = world.client()
    with pytest.raises(lmsched.TooLarge) as ei:
        c.chat(SYSTEM, "x", agent="a" * 300)
    assert ei.value.field == "agent"
    assert ei.value.code == 16 and ei.value.name == "too_large"
    assert "256" in ei.value.message


def test_submit_returns_a_future(world):
    world.start()
    c = world.client()
    futs = [c.submit(SYSTEM, f"q{i}", max_tokens=1 + i) for i in range(6)]
    for i, f in enumerate(futs):
        assert f.result(timeout=30).usage.completion_tokens == 1 + i
    with pytest.raises(lmsched.InvalidRequest):
        c.submit(SYSTEM, "x", priority=-1)
    bad = c.submit(SYSTEM, "x", agent="b" * 300)
    assert isinstance(bad.exception(timeout=30), lmsched.TooLarge)


def test_status_document(world):
    world.start()
    c = world.client()
    for _ in range(3):
        c.chat(SYSTEM, "x", max_tokens=2)
    st = c.status()
    assert st["protocol"] == 1
    assert st["listen"] == world.url
    assert st["backend"]["healthy"] is True
    assert st["backend"]["kind"] in ("lmstudio", "llamacpp")
    assert st["requests"]["completed"] == 3
    assert st["inflight"] == 0 and st["queue"]["depth"] == 0


def test_close_and_context_manager(world):
    world.start()
    with lmsched.Client(world.url) as c:
        assert c.chat(SYSTEM, "x", max_tokens=1).usage.completion_tokens == 1
        assert not c.closed
    assert c.closed
    with pytest.raises(lmsched.Closed):
        c.chat(SYSTEM, "x")
    with pytest.raises(lmsched.Closed):
        c.status()
    c.close()  # again: nothing


def test_close_completes_requests_in_flight(world):
    # Slow replies: 4 tokens/s of simulated time, so these are in flight.
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "4"))
    c = lmsched.Client(world.url)
    futs = [c.submit(SYSTEM, f"q{i}", max_tokens=50) for i in range(4)]
    world.wait_status(lambda st: st["inflight"] >= 1)
    c.close()
    # Every one is settled by the time close returns.
    assert all(f.done() for f in futs)
    for f in futs:
        assert isinstance(f.exception(), lmsched.Closed)


def test_threads_share_one_client(world):
    world.start(daemon_args=("--max-concurrent", "4"))
    c = world.client()
    results = {}
    errors = []

    def agent(k):
        try:
            for i in range(10):
                r = c.chat(SYSTEM, f"thread {k} question {i}", max_tokens=1 + (k + i) % 5)
                results[(k, i)] = r.usage.completion_tokens
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=agent, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 80
    for (k, i), n in results.items():
        assert n == 1 + (k + i) % 5
    st = world.status()
    assert st["requests"]["completed"] == 80
    assert world.sim_stats()["max_active"] >= 2  # the threads ran at once


def test_close_waits_for_blocking_calls_on_other_threads(world):
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "20"))
    c = lmsched.Client(world.url)
    out = []
    t = threading.Thread(target=lambda: out.append(c.chat(SYSTEM, "x", max_tokens=10)))
    t.start()
    world.wait_status(lambda st: st["inflight"] == 1)
    c.close()
    t.join(30)
    # The call that was running finished normally; none started after.
    assert len(out) == 1 and out[0].usage.completion_tokens == 10
    with pytest.raises(lmsched.Closed):
        c.chat(SYSTEM, "x")


def test_calls_with_the_same_prompt_do_not_share_messages(world):
    """Requests of one prompt and options reuse a template inside the
    package; each call still sends exactly its own messages and options."""
    world.start()
    c = world.client()
    convs = [
        [{"role": "user", "content": "short"}],
        [{"role": "user", "content": "a longer question " * 20}],
        [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
         {"role": "user", "content": "three"}],
    ]
    for _ in range(3):
        for conv in convs:
            r = c.chat(SYSTEM, conv, max_tokens=2)
            assert r.usage.prompt_tokens == chatml_tokens(SYSTEM, conv)
            assert r.usage.completion_tokens == 2
    assert c.chat(SYSTEM, convs[0], max_tokens=5).usage.completion_tokens == 5
    assert c.chat(SYSTEM, convs[0], max_tokens=2).usage.completion_tokens == 2
    # A bad message after a good one: refused, and the next call is clean.
    with pytest.raises(lmsched.InvalidRequest):
        c.chat(SYSTEM, [{"role": "user", "content": "fine"}, {"role": "user", "content": 5}],
               max_tokens=2)
    r = c.chat(SYSTEM, convs[0], max_tokens=2)
    assert r.usage.prompt_tokens == chatml_tokens(SYSTEM, convs[0])
    out = c.batch_chat([(SYSTEM, conv) for conv in convs * 4], max_tokens=2)
    assert [r.usage.prompt_tokens for r in out] == [chatml_tokens(SYSTEM, conv)
                                                   for conv in convs * 4]
