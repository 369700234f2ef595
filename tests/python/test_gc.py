"""Lifetimes: a client dropped or garbage-collected with requests in flight
(no crash, every future settled, no descriptor, thread or registry entry
left), one collected on a library thread, one closed from a done-callback,
and a program that exits with requests in flight."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import lmsched
from lmsched import _native
from conftest import ROOT

SYSTEM = "You are terse."


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settled(futs, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(f.done() for f in futs):
        time.sleep(0.01)
    return all(f.done() for f in futs)


def test_dropped_clients_with_requests_in_flight(world):
    # 5 tokens/s: every request is still running when its client goes.
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "5"))
    warm = lmsched.Client(world.url)
    warm.chat(SYSTEM, "warm up", max_tokens=1)
    warm.close()
    gc.collect()
    fds, threads = _fds(), threading.active_count()
    all_futs = []
    for i in range(20):
        c = lmsched.Client(world.url)
        futs = [c.submit(SYSTEM, f"round {i} q{k}", max_tokens=20) for k in range(3)]
        if i == 0:
            world.wait_status(lambda st: st["inflight"] >= 1)
        ref = weakref.ref(c)
        del c  # the last reference: closed here, its requests completed
        assert ref() is None
        assert all(f.done() for f in futs)
        all_futs += futs
    gc.collect()
    for f in all_futs:
        e = f.exception()
        assert e is None or isinstance(e, lmsched.Closed), e
    assert sum(isinstance(f.exception(), lmsched.Closed) for f in all_futs) >= 20
    assert _native.pending == {}
    assert _fds() <= fds + 2
    assert threading.active_count() <= threads
    # The daemon is unharmed.
    with lmsched.Client(world.url) as c:
        assert c.chat(SYSTEM, "still there?", max_tokens=1).usage.completion_tokens == 1


def test_collected_in_a_reference_cycle(world):
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "5"))
    fds = _fds()
    futs = []
    for i in range(10):
        holder = {"client": lmsched.Client(world.url)}
        holder["self"] = holder  # only the cycle collector can free it
        futs += [holder["client"].submit(SYSTEM, f"cycle {i}", max_tokens=20)]
        del holder
    gc.collect()
    assert _settled(futs)
    assert all(isinstance(f.exception(), (lmsched.Closed, type(None))) for f in futs)
    assert _native.pending == {}
    assert _fds() <= fds + 2


def test_async_client_dropped_with_cancelled_tasks(world):
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "5"))

    async def main():
        c = lmsched.AsyncClient(world.url)
        tasks = [asyncio.ensure_future(c.chat(SYSTEM, f"t{i}", max_tokens=20)) for i in range(5)]
        while world.status()["inflight"] < 1:
            await asyncio.sleep(0.02)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ref = weakref.ref(c)
        del c, tasks
        gc.collect()
        return ref

    ref = asyncio.run(main())
    assert ref() is None
    assert _native.pending == {}


def test_collected_on_a_library_thread(world, monkeypatch):
    """The collector may run anywhere, also inside a completion on one of the
    library's threads; a client freed there is closed on a thread of its
    own (closing it in place would wait for that very completion)."""
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "5"))
    trigger = lmsched.Client(world.url)
    holder = {"client": lmsched.Client(world.url)}
    holder["self"] = holder
    victim_fut = holder["client"].submit(SYSTEM, "victim", max_tokens=20)
    victim = weakref.ref(holder["client"])
    del holder
    ran = threading.Event()
    started = []
    real_thread = threading.Thread

    def spy(*a, **kw):
        started.append(kw.get("name"))
        return real_thread(*a, **kw)

    monkeypatch.setattr(lmsched.client.threading, "Thread", spy)

    def collect(_):
        gc.collect()  # on the library thread that completes `trigger`'s request
        ran.set()

    gc.disable()
    try:
        f = trigger.submit(SYSTEM, "trigger", max_tokens=1)
        f.add_done_callback(collect)
        assert ran.wait(30)
    finally:
        gc.enable()
    assert victim() is None
    assert started == ["lmsched-close"]  # closed off the library thread
    assert _settled([victim_fut])
    assert isinstance(victim_fut.exception(), lmsched.Closed)
    trigger.close()


def test_close_from_a_done_callback(world):
    world.start()
    c = lmsched.Client(world.url)
    done = threading.Event()
    errors = []

    def cb(_):
        try:
            c.chat(SYSTEM, "blocking here is refused")
        except RuntimeError as e:
            errors.append(e)
        c.close()  # handed to a thread of its own
        done.set()

    c.submit(SYSTEM, "x", max_tokens=1).add_done_callback(cb)
    assert done.wait(30)
    assert len(errors) == 1 and "library thread" in str(errors[0])
    assert c.closed
    with pytest.raises(lmsched.Closed):
        c.chat(SYSTEM, "x")


def test_exit_with_requests_in_flight(world):
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "5"))
    code = textwrap.dedent(f"""
        import asyncio, lmsched
        c = lmsched.Client({world.url!r})
        futs = [c.submit("s", f"q{{i}}", max_tokens=50) for i in range(5)]
        a = lmsched.AsyncClient({world.url!r})
        async def main():
            t = asyncio.ensure_future(a.chat("s", "async", max_tokens=50))
            await asyncio.sleep(0.3)
        asyncio.run(main())
        print("exiting")
    """)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "bindings", "python"))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "exiting"
    assert "Traceback" not in r.stderr and "Fatal" not in r.stderr, r.stderr
