"""The example and the benchmark scripts run as documented: the
consultation of twelve role agents (examples/python/consultation.py), the
side-by-side consultation benchmark (bench/py_consultation.py), and the
package installed with pip into a virtual environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import BIN_DIR, ROOT


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.path.join(ROOT, "bindings", "python"),
                LMSCHED_BIN_DIR=BIN_DIR)


def test_consultation_example(world):
    world.start(sim_args=("--time-scale", "50"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "python", "consultation.py"),
                        "--url", world.url, "--rounds", "2", "--questions", "2", "--json"],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["round"] for x in rows] == [1, 2, "total"]
    assert all(x["requests"] == 24 and x["failed"] == 0 for x in rows[:2])
    assert rows[1]["cached_tokens"] > 0  # the roles' prompts were reused
    assert world.status()["requests"]["completed"] == 48


def test_consultation_benchmark_runs():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "py_consultation.py"),
                        "--reps", "1", "--rounds", "1", "--questions", "1", "--json"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    runs = [x for x in rows if x["rep"] != "median"]
    assert sorted(x["path"] for x in runs) == ["direct", "lmsched"]
    lm = next(x for x in runs if x["path"] == "lmsched")
    di = next(x for x in runs if x["path"] == "direct")
    # The same workload both ways, and lmsim agrees with the replies' usage.
    assert lm["prompt_tokens"] == di["prompt_tokens"] == lm["server_prompt_tokens"]
    for x in (lm, di):
        assert x["failed"] == 0
        assert x["prefilled_tokens"] == x["server_prefill_tokens"]


def test_pip_install(tmp_path):
    """`pip install ./bindings/python` works (here without network: setuptools
    and wheel from the system, no build isolation) and the installed package
    finds the library and runs its CLI from anywhere."""
    probe = subprocess.run([sys.executable, "-c", "import venv, ensurepip, setuptools, wheel"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("skipped: no venv, ensurepip, setuptools or wheel for this python3")
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "bindings", "python"), src,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index",
                          "--no-build-isolation", str(src)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import lmsched, os; print(lmsched.__file__); "
                        "print(os.path.exists(os.path.join(os.path.dirname(lmsched.__file__), "
                        "'py.typed'))); print(lmsched.library_version())"],
                       env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0].startswith(str(venv)) and lines[1] == "True" and lines[2] == "0.2.0"
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "lmsched", "--version"], env=env,
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "0.2.0" in r.stdout


def test_the_ten_line_migration_of_the_docs(world, monkeypatch):
    """docs/python.md's migration, cut from the page and run: ten lines, the
    seed's call shapes (dict requests in, results in order, failures in
    place)."""
    import asyncio
    import re

    with open(os.path.join(ROOT, "docs", "python.md"), encoding="utf-8") as f:
        page = f.read()
    m = re.search(r"With lmsched, in ten lines:\n\n```python\n(.*?)```", page, re.S)
    assert m is not None, "the migration snippet is missing from docs/python.md"
    code = m.group(1)
    assert len(code.rstrip("\n").split("\n")) <= 10
    world.start()
    monkeypatch.setenv("LMSCHED_URL", world.url)
    ns: dict = {}

    async def main():
        exec(compile(code, "docs/python.md", "exec"), ns)  # opens its client in the loop
        text = await ns["chat"]("You are terse.", [{"role": "user", "content": "Hi"}],
                                max_tokens=3)
        out = await ns["batch_chat"]([
            {"system": "You are terse.", "messages": [{"role": "user", "content": "a"}],
             "max_tokens": 2},
            {"system": "You are terse.", "messages": [{"role": "user", "content": "b"}],
             "priority": 99},
        ])
        await ns["client"].aclose()
        return text, out

    text, out = asyncio.run(main())
    assert len(text.split()) == 3
    assert out[0].usage.completion_tokens == 2
    assert isinstance(out[1], ns["lmsched"].InvalidRequest) and out[1].index == 1
