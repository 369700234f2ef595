"""Finding liblmsched-agent: an explicit path, $LMSCHED_LIB, the installed
library beside the `lmsched` command; a clear ImportError naming every path
tried when it is nowhere; a library that is not ours. Each case runs in a
child Python, since a process loads the library once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import BIN_DIR, ROOT

LIB = os.environ["LMSCHED_LIB"]
LIB_FILE = os.path.join(LIB, "liblmsched-agent.so.0") if os.path.isdir(LIB) else LIB


def _run(code: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(env)
    env["PYTHONPATH"] = os.path.join(ROOT, "bindings", "python")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _bare_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LMSCHED_LIB", "LD_LIBRARY_PATH", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"
    env.update(extra)
    return env


NOT_FOUND = """
    import lmsched
    try:
        lmsched.Client("ipc:///tmp/never.sock")
    except ImportError as e:
        assert isinstance(e, lmsched.LibraryNotFoundError)
        print(e)
        print("TRIED", len(e.tried))
    else:
        print("LOADED", lmsched._native.native().path)
"""


def test_library_not_found_names_the_paths_tried():
    r = _run(NOT_FOUND, _bare_env(LMSCHED_LIB="/nonexistent/liblmsched-agent.so.0"))
    assert r.returncode == 0, r.stderr
    assert "cannot load liblmsched-agent" in r.stdout
    assert "/nonexistent/liblmsched-agent.so.0 ($LMSCHED_LIB): no such file" in r.stdout
    assert "Set LMSCHED_LIB" in r.stdout
    assert "TRIED 1" in r.stdout


def test_library_not_found_anywhere():
    r = _run(NOT_FOUND, _bare_env())
    assert r.returncode == 0, r.stderr
    if "LOADED" in r.stdout:
        pytest.skip(f"skipped: a liblmsched-agent is installed on this machine: {r.stdout}")
    assert "the dynamic linker's search path" in r.stdout
    assert os.path.join(sys.prefix, "lib", "liblmsched-agent.so.0") in r.stdout
    assert "/usr/local/lib/liblmsched-agent.so.0" in r.stdout


def test_import_works_without_the_library():
    r = _run("""
        import lmsched
        e = lmsched.error_for_code(5, "full")
        print(type(e).__name__, lmsched.__version__)
    """, _bare_env(LMSCHED_LIB="/nonexistent"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["Busy", "0.2.0"]


def test_explicit_path_file_or_directory():
    r = _run(f"""
        import lmsched
        n = lmsched.load_library({os.path.dirname(LIB_FILE)!r})
        print(n.path, lmsched.library_version())
        assert lmsched.load_library({LIB_FILE!r}) is n  # the same one: fine
        try:
            lmsched.load_library("/usr/lib")
        except RuntimeError as e:
            print("RUNTIME", e)
    """, _bare_env())
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0].split()
    assert os.path.realpath(first[0]) == os.path.realpath(LIB_FILE)
    assert first[1] == "0.2.0"
    assert "RUNTIME liblmsched-agent is already loaded" in r.stdout


def test_installed_library_beside_the_lmsched_command(tmp_path):
    """`cmake --install --prefix P` puts P/bin/lmsched beside P/lib: with P/bin
    on PATH the package finds the library without being told."""
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    # A stand-in command (a symlink to the build's would lead to the build's
    # own lib/, which is right but not what this test is about).
    stub = prefix / "bin" / "lmsched"
    stub.write_text(f"#!/bin/sh\nexec {os.path.join(BIN_DIR, 'lmsched')} \"$@\"\n")
    stub.chmod(0o755)
    os.symlink(os.path.realpath(LIB_FILE), prefix / "lib" / "liblmsched-agent.so.0")
    env = _bare_env()
    env["PATH"] = f"{prefix / 'bin'}:/usr/bin:/bin"
    r = _run(NOT_FOUND, env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"LOADED {prefix / 'lib' / 'liblmsched-agent.so.0'}"


def test_a_library_that_is_not_ours():
    libc = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "/libc.so" in line or "/libc-" in line:
                libc = line.split()[-1]
                break
    if libc is None:
        pytest.skip("skipped: no libc path in /proc/self/maps")
    r = _run(NOT_FOUND, _bare_env(LMSCHED_LIB=libc))
    assert r.returncode == 0, r.stderr
    assert f"{libc} ($LMSCHED_LIB): {libc} is not a usable liblmsched-agent: it lacks lmsched_" \
        in r.stdout
