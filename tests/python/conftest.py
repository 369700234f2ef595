"""The Python tests' world: lmsim and ``lmsched serve`` as child processes in a
temporary directory, started per test with the flags it needs and always
stopped by the fixture's finalizer; the package itself from the source tree.

Where things are: ``LMSCHED_BIN_DIR`` (ctest sets it; default build/bin)
holds lmsim and lmsched; ``LMSCHED_LIB`` (ctest sets it; default build/lib)
the agent library.

Design notes
- Children get SIGTERM when this process dies (``setpriv --pdeathsig``
  where present), so a pytest killed by ctest's timeout leaves nothing
  behind; the finalizer stops them by pid, SIGTERM twice (the second ends
  the daemon's drain), then SIGKILL.
- Every daemon listens on ``ipc://`` in its own short temp dir (a Unix
  socket path has ~107 bytes), every lmsim on a port it picks itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional, Sequence

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))

BIN_DIR = os.environ.get("LMSCHED_BIN_DIR") or os.path.join(ROOT, "build", "bin")
os.environ.setdefault("LMSCHED_LIB", os.path.join(os.path.dirname(BIN_DIR), "lib"))
# Requests in tests carry no token unless a test gives one.
os.environ.pop("LMSCHED_AUTH_TOKEN", None)

import lmsched  # noqa: E402

SETPRIV = shutil.which("setpriv")


def bin_path(name: str) -> str:
    path = os.path.join(BIN_DIR, name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built (LMSCHED_BIN_DIR={BIN_DIR})")
    return path


class Proc:
    """A child process logging to a file, stopped by pid."""

    def __init__(self, argv: Sequence[str], log: str) -> None:
        self.log = log
        cmd = list(argv)
        if SETPRIV is not None and sys.platform.startswith("linux"):
            cmd = [SETPRIV, "--pdeathsig", "TERM", "--"] + cmd
        self.out = open(log, "ab")
        self.p = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.p.pid

    def running(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> Optional[int]:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            if self.p.poll() is not None:
                break
            try:
                self.p.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                self.p.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.out.close()
        return self.p.poll()

    def tail(self, n: int = 40) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class World:
    """One test's lmsim and daemon. Start them with sim() and daemon()."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="lmpy-")
        self.url = f"ipc://{self.dir}/d.sock"
        self.procs: List[Proc] = []
        self.sim_proc: Optional[Proc] = None
        self.daemon_proc: Optional[Proc] = None
        self.sim_port = 0
        self.backend = ""
        self.clients: List[Any] = []
        self.auth_token: Optional[str] = None  # for the fixture's own status calls

    # -- lmsim ---------------------------------------------------------------
    def sim(self, *args: str, port: int = 0) -> int:
        pf = os.path.join(self.dir, f"port{len(self.procs)}")
        argv = [bin_path("lmsim"), "--port", str(port), "--port-file", pf, "--log-level", "warn"]
        p = Proc(argv + list(args), os.path.join(self.dir, "lmsim.log"))
        self.procs.append(p)
        self.sim_proc = p
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if os.path.exists(pf):
                with open(pf) as f:
                    text = f.read().strip()
                if text:
                    self.sim_port = int(text)
                    self.backend = f"http://127.0.0.1:{self.sim_port}"
                    return self.sim_port
            if not p.running():
                break
            time.sleep(0.02)
        pytest.fail(f"lmsim did not start: {p.tail()}")

    def sim_stats(self) -> Dict[str, Any]:
        with urllib.request.urlopen(f"{self.backend}/sim/stats", timeout=5) as r:
            return json.loads(r.read())

    # -- the daemon ----------------------------------------------------------
    def daemon(self, *args: str, backend: Optional[str] = None, wait_probe: bool = True) -> str:
        be = backend if backend is not None else self.backend
        if not be:
            be = "http://127.0.0.1:9"
        argv = [bin_path("lmsched"), "serve", "--listen", self.url, "--backend", be,
                "--log-level", "debug", "--drain-timeout", "500"]
        p = Proc(argv + list(args), os.path.join(self.dir, "lmsched.log"))
        self.procs.append(p)
        self.daemon_proc = p
        c = lmsched.Client(self.url, connect_timeout=0.2, auth_token=self.auth_token)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if not p.running():
                    break
                try:
                    st = c.status(timeout=0.5)
                except lmsched.Error:
                    time.sleep(0.05)
                    continue
                if not wait_probe or st["backend"].get("checked_ago_s") is not None:
                    return self.url
                time.sleep(0.05)
        finally:
            c.close()
        pytest.fail(f"the daemon did not answer: {p.tail()}")

    def status(self) -> Dict[str, Any]:
        with lmsched.Client(self.url, auth_token=self.auth_token) as c:
            return c.status()

    def wait_status(self, pred: Any, timeout: float = 15.0) -> Dict[str, Any]:
        """Polls the status until pred(doc) holds; returns the document
        (fails the test when it never does)."""
        deadline = time.monotonic() + timeout
        st: Dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.status()
            if pred(st):
                return st
            time.sleep(0.02)
        pytest.fail(f"status never matched; last: {json.dumps(st)[:2000]}")

    def client(self, **kw: Any) -> "lmsched.Client":
        c = lmsched.Client(self.url, **kw)
        self.clients.append(c)
        return c

    def async_client(self, **kw: Any) -> "lmsched.AsyncClient":
        c = lmsched.AsyncClient(self.url, **kw)
        self.clients.append(c)
        return c

    def start(self, sim_args: Sequence[str] = ("--time-scale", "50"),
              daemon_args: Sequence[str] = ()) -> str:
        self.sim(*sim_args)
        return self.daemon(*daemon_args)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log} (pid {p.pid})\n{p.tail()}" for p in self.procs)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for p in reversed(self.procs):
            p.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def world(request: Any) -> Any:
    """A World whose processes are stopped when the test ends, with their
    logs printed if it failed."""
    w = World()
    yield w
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(w.logs())
    w.close()


@pytest.fixture
def lmsched_env() -> Dict[str, str]:
    """The environment for a child Python that imports the package from the
    source tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "bindings", "python")
    return env


def chatml_tokens(system: str, messages: Sequence[Dict[str, str]]) -> int:
    """lmsim's prompt_tokens for a request (docs/simulator.md, Tokens):
    ChatML rendering, 4 bytes a token, rounded up."""
    text = ""
    if system:
        text += f"<|im_start|>system\n{system}<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    text += "<|im_start|>assistant\n"
    n = len(text.encode("utf-8"))
    return (n + 3) // 4
