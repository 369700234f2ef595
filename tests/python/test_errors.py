"""Every exception class raised by a real condition of a real daemon and
lmsim (a full queue, a deadline, the backend down, a crash, a hang ...),
each with the daemon's message; and the Python table of error codes
against the library's."""

from __future__ import annotations

import os
import pickle

import pytest

import lmsched
from lmsched import _native

SYSTEM = "You are terse."


def test_error_table_matches_the_library():
    n = _native.native()
    for code in range(0, 25):
        name = n.err_name(code).decode()
        err = lmsched.error_for_code(code, "m")
        if name == "unknown":
            assert type(err) is lmsched.Error and err.code == code
            continue
        if code == 0:
            continue
        assert err.name == name, code
        assert err.description == n.strerror(code).decode(), code
        assert err.code == code
    # Field parsing, both ways the library and the daemon name one.
    e = lmsched.error_for_code(16, "too long (field: messages[2].content)")
    assert (e.field, e.message) == ("messages[2].content", "too long")
    e = lmsched.error_for_code(3, "field 'priority': 10 is out of range 0..9")
    assert e.field == "priority"
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is lmsched.ProtocolError and e2.field == "priority"
    assert issubclass(lmsched.BackendDown, lmsched.BackendError)
    assert issubclass(lmsched.Timeout, TimeoutError)
    assert issubclass(lmsched.NoDaemon, ConnectionError)


def test_busy_when_the_queue_is_full(world):
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "20"),
                daemon_args=("--max-concurrent", "1", "--max-queue", "2"))
    c = world.client()
    # One running, then two queued (a burst of three could all arrive before
    # the first is dispatched, and the third would find the queue full).
    held = [c.submit(SYSTEM, "hold 0", max_tokens=20)]
    world.wait_status(lambda st: st["inflight"] == 1)
    held += [c.submit(SYSTEM, f"hold {i}", max_tokens=20) for i in (1, 2)]
    world.wait_status(lambda st: st["inflight"] == 1 and st["queue"]["depth"] == 2)
    with pytest.raises(lmsched.Busy) as ei:
        c.chat(SYSTEM, "one too many")
    assert ei.value.code == 5 and ei.value.retryable
    assert "queue is full" in ei.value.message
    for f in held:
        assert f.result(60).usage.completion_tokens == 20
    assert world.status()["requests"]["rejected_busy"] == 1


def test_deadline_exceeded(world):
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "20"),
                daemon_args=("--max-concurrent", "1"))
    c = world.client()
    slow = c.submit(SYSTEM, "a long answer please", max_tokens=30)
    world.wait_status(lambda st: st["inflight"] == 1)
    with pytest.raises(lmsched.DeadlineExceeded) as ei:
        c.chat(SYSTEM, "quick", deadline=0.15, max_tokens=2)
    assert "deadline" in ei.value.message
    assert slow.result(60).usage.completion_tokens == 30
    assert world.status()["requests"]["failed_by_class"]["deadline"] == 1


def test_backend_down(world):
    port = _free_port()
    world.daemon("--backend-wait", "300", "--max-retries", "1",
                 backend=f"http://127.0.0.1:{port}")
    c = world.client()
    with pytest.raises(lmsched.BackendDown) as ei:
        c.chat(SYSTEM, "anyone there?")
    assert f"127.0.0.1:{port}" in ei.value.message
    assert isinstance(ei.value, lmsched.BackendError)
    st = world.status()
    assert st["backend"]["healthy"] is False
    assert st["requests"]["failed_by_class"]["backend_down"] == 1
    # The backend comes up: service resumes on the same client.
    world.sim("--time-scale", "50", port=port)
    world.wait_status(lambda st: st["backend"]["healthy"] is True)
    assert c.chat(SYSTEM, "now?", max_tokens=2).usage.completion_tokens == 2


def test_backend_crash(world):
    """LM Studio's crash: the model dies when the first request starts
    generating (the short one); the long one, still computing its prompt,
    gets the server's "model has crashed" 500."""
    world.start(sim_args=("--time-scale", "1", "--crash-after", "1"),
                daemon_args=("--max-retries", "0"))
    c = world.client()
    long = c.submit(SYSTEM, "word " * 2000, max_tokens=4)
    world.wait_status(lambda st: st["inflight"] == 1)
    with pytest.raises(lmsched.BackendStream):  # its stream was cut
        c.chat(SYSTEM, "short", max_tokens=8)
    err = long.exception(30)
    assert isinstance(err, lmsched.BackendCrash), err
    assert err.retryable and "crashed" in err.message
    assert world.sim_stats()["crashes"] == 1


def test_backend_timeout(world):
    world.start(sim_args=("--hang-rate", "1"),
                daemon_args=("--request-timeout", "300", "--max-retries", "0"))
    c = world.client()
    with pytest.raises(lmsched.BackendTimeout):
        c.chat(SYSTEM, "hello?", max_tokens=4)


def test_prompt_over_the_context(world):
    """The daemon refuses a prompt the server's context cannot hold, naming
    the field."""
    world.start(sim_args=("--time-scale", "50", "--ctx", "64"))
    c = world.client()
    with pytest.raises(lmsched.TooLarge) as ei:
        c.chat(SYSTEM, "word " * 200, max_tokens=4)
    assert ei.value.field == "messages"
    assert "context" in ei.value.message


def test_backend_http_error(world):
    # Garbage from a reverse proxy: a 502 HTML page.
    world.start(sim_args=("--time-scale", "50", "--garbage-rate", "1", "--garbage-mode", "html"),
                daemon_args=("--max-retries", "0"))
    c = world.client()
    with pytest.raises(lmsched.BackendHTTP) as ei:
        c.chat(SYSTEM, "hello", max_tokens=4)
    assert "502" in ei.value.message


def test_backend_stream_error(world):
    world.start(sim_args=("--time-scale", "50", "--malformed-rate", "1"),
                daemon_args=("--max-retries", "0"))
    c = world.client()
    with pytest.raises(lmsched.BackendStream):
        c.chat(SYSTEM, "hello", max_tokens=8)


def test_timeout_of_the_call(world):
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "10"))
    c = world.client()
    with pytest.raises(lmsched.Timeout) as ei:
        c.chat(SYSTEM, "slow", max_tokens=20, timeout=0.2)
    assert isinstance(ei.value, TimeoutError)
    assert "200 ms" in ei.value.message


def test_no_daemon(world):
    c = lmsched.Client(f"ipc://{world.dir}/nobody.sock", connect_timeout=0.2)
    try:
        with pytest.raises(lmsched.NoDaemon) as ei:
            c.chat(SYSTEM, "hello")
        assert "nobody.sock" in ei.value.message
        with pytest.raises(lmsched.NoDaemon):
            c.status(timeout=0.3)
    finally:
        c.close()
    with pytest.raises(lmsched.InvalidRequest):
        lmsched.Client("bogus://where")


def test_shutdown_answers_queued_requests(world):
    world.start(sim_args=("--time-scale", "1", "--decode-tps", "10"),
                daemon_args=("--max-concurrent", "1"))
    c = world.client()
    futs = [c.submit(SYSTEM, f"q{i}", max_tokens=30) for i in range(3)]
    world.wait_status(lambda st: st["inflight"] == 1 and st["queue"]["depth"] == 2)
    world.daemon_proc.p.terminate()
    outcomes = [f.exception(30) for f in futs]
    # The two queued ones at once; the running one after the drain timeout
    # (500 ms in these tests).
    assert all(isinstance(e, lmsched.Shutdown) for e in outcomes), outcomes
    assert sum("still queued" in e.message for e in outcomes) == 2, outcomes


def test_unauthorized(world):
    token = os.path.join(world.dir, "token")
    fd = os.open(token, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"s3cret-token\n")
    os.close(fd)
    world.auth_token = "s3cret-token"
    world.start(daemon_args=("--auth-token-file", token))
    anon = lmsched.Client(world.url)
    try:
        with pytest.raises(lmsched.Unauthorized):
            anon.chat(SYSTEM, "let me in")
    finally:
        anon.close()
    with lmsched.Client(world.url, auth_token="s3cret-token") as c:
        assert c.chat(SYSTEM, "please", max_tokens=1).usage.completion_tokens == 1


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
