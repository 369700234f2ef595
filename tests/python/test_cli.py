"""`python3 -m lmsched chat|status` next to `lmsched chat|status`: the same
output for the same request and daemon, the same exit status for the same
failure."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from conftest import ROOT, bin_path

SYSTEM = "You are terse."


def py(*args: str, stdin: str = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "bindings", "python"))
    return subprocess.run([sys.executable, "-m", "lmsched", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def c(*args: str, stdin: str = None) -> subprocess.CompletedProcess:
    return subprocess.run([bin_path("lmsched"), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_chat_prints_what_lmsched_chat_prints(world):
    world.start()
    args = ("chat", "--url", world.url, "--system", SYSTEM, "--max-tokens", "7", "Hello there")
    a, b = py(*args), c(*args)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout
    assert len(a.stdout.split()) == 7
    # The user text from stdin.
    a = py("chat", "--url", world.url, "--system", SYSTEM, "--max-tokens", "7", "-",
           stdin="Hello there")
    assert a.stdout == b.stdout


def test_chat_json_matches(world):
    world.start()
    args = ("chat", "--json", "--url", world.url, "--system", SYSTEM, "--max-tokens", "3",
            "--priority", "7", "--temperature", "0.5", "Hi")
    a, b = py(*args), c(*args)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert list(ja) == list(jb)
    assert list(ja["usage"]) == list(jb["usage"]) and list(ja["timings"]) == list(jb["timings"])
    for k in ("content", "finish_reason", "model", "retries"):
        assert ja[k] == jb[k], k
    assert ja["usage"]["prompt_tokens"] == jb["usage"]["prompt_tokens"]
    assert ja["usage"]["completion_tokens"] == jb["usage"]["completion_tokens"] == 3


def test_status_table_and_json_match(world):
    world.start()
    py("chat", "--url", world.url, "--system", SYSTEM, "warm")
    a, b = py("status", "--url", world.url), c("status", "--url", world.url)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr

    def mask(text):  # the uptime and probe age move between the two calls
        text = re.sub(r"up \S+", "up X", text)
        return re.sub(r"checked \S+ ago", "checked X ago", text)

    assert mask(a.stdout) == mask(b.stdout)
    assert a.stdout.startswith("lmsched 0.2.0  up ")
    ja = json.loads(py("status", "--json", "--url", world.url).stdout)
    jb = json.loads(c("status", "--json", "--url", world.url).stdout)
    assert list(ja) == list(jb)
    assert ja["requests"] == jb["requests"]


def test_failures_exit_as_lmsched_does(world):
    nowhere = f"ipc://{world.dir}/none.sock"
    for args in (("status", "--url", nowhere, "--timeout", "300"),
                 ("chat", "--url", nowhere, "--timeout", "300", "hi")):
        a, b = py(*args), c(*args)
        assert a.returncode == b.returncode == 3, (args, a.stderr, b.stderr)
        assert a.stderr.startswith("lmsched: no_daemon: lmsched daemon is not reachable: ")
        assert b.stderr.startswith("lmsched: no_daemon: lmsched daemon is not reachable: ")
    a = py("status", "--json", "--url", nowhere, "--timeout", "300")
    b = c("status", "--json", "--url", nowhere, "--timeout", "300")
    ea, eb = json.loads(a.stdout)["error"], json.loads(b.stdout)["error"]
    assert (ea["code"], ea["number"]) == (eb["code"], eb["number"]) == ("no_daemon", 8)
    # Usage errors.
    for args in (("chat", "--priority", "12", "x"), ("status", "extra"), ("chat",),
                 ("chat", "--system", "a", "--system-file", "b", "x")):
        assert py(*args).returncode == c(*args).returncode == 2, args
    # A request the daemon refuses.
    world.start()
    args = ("chat", "--url", world.url, "--agent", "a" * 300, "x")
    a, b = py(*args), c(*args)
    assert a.returncode == b.returncode == 1
    assert a.stderr.split(":")[:2] == b.stderr.split(":")[:2] == ["lmsched", " too_large"]


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


def test_stream_tools_and_formats_match(world, tmp_path):
    world.start(sim_args=("--time-scale", "50", "--reasoning-tokens", "3"))
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    fmt = tmp_path / "format.json"
    fmt.write_text('{"type":"json_object"}')
    base = ("chat", "--url", world.url, "--system", SYSTEM, "--seed", "7")
    cases = [
        ("--max-tokens", "6", "Hello"),
        ("--stream", "--max-tokens", "6", "Hello"),
        ("--tools", str(tools), "--tool-choice", "required", "Weather in Paris?"),
        ("--stream", "--tools", str(tools), "--tool-choice", "get_weather", "Weather?"),
        ("--response-format", str(fmt), "JSON please"),
        ("--extra", '{"top_k": 40}', "--max-tokens", "3", "Hi"),
    ]
    for extra in cases:
        a, b = py(*base, *extra), c(*base, *extra)
        assert a.returncode == b.returncode == 0, (extra, a.stderr, b.stderr)
        assert a.stdout == b.stdout, extra
        assert a.stderr == b.stderr, extra  # the reasoning
    # A tool call's line.
    a = py(*base, "--tools", str(tools), "--tool-choice", "required", "Weather?")
    assert a.stdout.splitlines()[-1].startswith("tool_call call_")
    # --json with tool calls, reasoning and logprobs: the same keys.
    for extra in (("--tools", str(tools), "--tool-choice", "required", "W?"),
                  ("--extra", '{"logprobs": true}', "--max-tokens", "2", "Hi")):
        ja = json.loads(py(*base, "--json", *extra).stdout)
        jb = json.loads(c(*base, "--json", *extra).stdout)
        assert list(ja) == list(jb), extra
        for k in ("content", "tool_calls", "reasoning", "logprobs"):
            assert ja.get(k) == jb.get(k), (extra, k)
    # --stream --json: one line per piece, then the reply on one line.
    a = py(*base, "--stream", "--json", "--max-tokens", "4", "Hi")
    b = c(*base, "--stream", "--json", "--max-tokens", "4", "Hi")
    la = [json.loads(x) for x in a.stdout.splitlines()]
    lb = [json.loads(x) for x in b.stdout.splitlines()]

    def joined(lines):  # how the pieces are cut depends on timing; what they hold does not
        out = {}
        for x in lines:
            (k, v), = x.items()
            out[k] = out.get(k, "") + v
        return out

    assert joined(la[:-1]) == joined(lb[:-1])
    assert set(la[-1]) == set(lb[-1])
    assert la[-1]["content"] == lb[-1]["content"] == joined(la[:-1])["content"]


def test_bad_tool_options_are_usage_errors(world, tmp_path):
    world.start()
    bad = tmp_path / "bad.json"
    bad.write_text('[{"type": "function"}]')
    base = ("chat", "--url", world.url)
    for extra, head in ((("--extra", '{"stream": true}'), "lmsched chat: invalid --extra: "),
                        (("--tools", str(bad)), "lmsched chat: invalid --tools: ")):
        a, b = py(*base, *extra, "x"), c(*base, *extra, "x")
        assert a.returncode == b.returncode == 2, (extra, a.stderr, b.stderr)
        assert a.stderr.startswith(head) and b.stderr.startswith(head), (a.stderr, b.stderr)
