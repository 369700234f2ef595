#!/usr/bin/env python3
"""py_consultation - the consultation of examples/python/consultation.py
(twelve role agents, batch_chat round after round) through lmsched and
through the seed's semaphore client calling the backend directly
(bench/semaphore_client.py), side by side against the same backend:
prompt tokens the server had to compute (prefilled) and makespan.

    python3 bench/py_consultation.py [--reps N] [--rounds N] [--questions K]
        [--max-tokens N] [--time-scale F] [--slots N] [--paths lmsched,direct]
        [--backend URL --reset-cmd CMD [--model-path F]] [--json]

Without --backend it starts `lmsim --slots N --time-scale F` (defaults 4
and 20) and resets it (POST /sim/reset) before each run; lmsim's own count
of prefilled tokens (/sim/stats) is reported beside the replies' usage. With
--backend (a real llama-server, e.g. `scripts/llama-server url`) it runs
--reset-cmd before each run so both start from empty slots and caches.
Every lmsched run gets a fresh `lmsched serve`. The order alternates per
repetition (lmsched first, then direct first). Prints a JSON line per run
and per path's medians, then a table.

Environment: LMSCHED_BIN_DIR (default build/bin) for lmsim and lmsched,
LMSCHED_LIB for the agent library (default build/lib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
sys.path.insert(0, os.path.join(ROOT, "examples", "python"))
sys.path.insert(0, HERE)
BIN = os.environ.get("LMSCHED_BIN_DIR") or os.path.join(ROOT, "build", "bin")
os.environ.setdefault("LMSCHED_LIB", os.path.join(os.path.dirname(BIN), "lib"))

import lmsched  # noqa: E402
from consultation import consultation  # noqa: E402
from semaphore_client import SemaphoreClient  # noqa: E402


def _spawn(argv: List[str], log: str) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(p: Optional[subprocess.Popen]) -> None:
    if p is None or p.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        p.send_signal(sig)
        try:
            p.wait(5)
            return
        except subprocess.TimeoutExpired:
            continue


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="lmpyb-")
        self.sim: Optional[subprocess.Popen] = None
        self.daemon: Optional[subprocess.Popen] = None
        self.backend = args.backend
        if self.backend is None:
            pf = os.path.join(self.dir, "port")
            self.sim = _spawn([os.path.join(BIN, "lmsim"), "--port-file", pf, "--log-level", "warn",
                               "--slots", str(args.slots), "--time-scale", str(args.time_scale)],
                              os.path.join(self.dir, "lmsim.log"))
            for _ in range(500):
                if os.path.exists(pf) and open(pf).read().strip():
                    break
                time.sleep(0.02)
            self.backend = f"http://127.0.0.1:{open(pf).read().strip()}"

    def reset(self) -> None:
        if self.sim is not None:
            req = urllib.request.Request(self.backend + "/sim/reset", data=b"", method="POST")
            urllib.request.urlopen(req, timeout=10).read()
        elif self.args.reset_cmd:
            subprocess.run(self.args.reset_cmd, shell=True, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_daemon(self) -> str:
        url = f"ipc://{self.dir}/d.sock"
        argv = [os.path.join(BIN, "lmsched"), "serve", "--listen", url, "--backend", self.backend,
                "--log-level", "warn"]
        if self.args.model_path:
            argv += ["--model-path", self.args.model_path]
        self.daemon = _spawn(argv, os.path.join(self.dir, "lmsched.log"))
        with lmsched.Client(url, connect_timeout=0.2) as c:
            for _ in range(300):
                try:
                    if c.status(timeout=0.5)["backend"].get("checked_ago_s") is not None:
                        return url
                except lmsched.Error:
                    pass
                time.sleep(0.05)
        raise SystemExit(f"py_consultation: the daemon did not start (log in {self.dir})")

    def run(self, path: str) -> Dict[str, Any]:
        a = self.args
        kw = dict(rounds=a.rounds, questions=a.questions, max_tokens=a.max_tokens)
        extra: Dict[str, Any] = {}
        if path == "lmsched":
            url = self.start_daemon()
            self.reset()  # after the daemon's start: both paths start on empty caches

            async def go() -> Any:
                async with lmsched.AsyncClient(url) as client:
                    return await consultation(client, **kw)

            report = asyncio.run(go())
            _stop(self.daemon)
            self.daemon = None
        else:
            self.reset()

            async def go() -> Any:
                client = SemaphoreClient(self.backend)
                extra["max_concurrent"] = client.max_concurrent
                try:
                    return await consultation(client, **kw)
                finally:
                    await client.aclose()

            report = asyncio.run(go())
        row = dict(report.total(), path=path)
        row.update(extra)
        if self.sim is not None:
            st = _get_json(self.backend + "/sim/stats")
            row["server_prefill_tokens"] = st["prefill_tokens"]
            row["server_prompt_tokens"] = st["prompt_tokens"]
        return row

    def close(self) -> None:
        _stop(self.daemon)
        _stop(self.sim)
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--time-scale", type=float, default=20.0)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--backend", help="use this server instead of starting lmsim")
    ap.add_argument("--reset-cmd", help="shell command that empties the backend's caches")
    ap.add_argument("--model-path", help="GGUF file for `lmsched serve --model-path`")
    ap.add_argument("--paths", default="lmsched,direct",
                    help="which to run: lmsched, direct, or both (default lmsched,direct)")
    ap.add_argument("--json", action="store_true", help="only the JSON lines")
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    if not paths or any(p not in ("lmsched", "direct") for p in paths):
        ap.error("--paths takes lmsched, direct or lmsched,direct")

    b = Bench(args)
    rows: List[Dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            order = paths if rep % 2 == 0 else paths[::-1]
            for path in order:
                row = b.run(path)
                row["rep"] = rep + 1
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        b.close()

    keys = ["prompt_tokens", "cached_tokens", "prefilled_tokens", "makespan_s", "failed",
            "retries", "server_prefill_tokens"]
    med: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        mine = [r for r in rows if r["path"] == path]
        med[path] = {k: statistics.median(r[k] for r in mine) for k in keys if k in mine[0]}
        for k in ("prefilled_tokens", "makespan_s"):
            med[path][k + "_min"] = min(r[k] for r in mine)
            med[path][k + "_max"] = max(r[k] for r in mine)
        med[path]["path"] = path
        med[path]["rep"] = "median"
        if "max_concurrent" in mine[0]:
            med[path]["max_concurrent"] = mine[0]["max_concurrent"]
        print(json.dumps(med[path]), flush=True)
    if args.json or len(paths) < 2:
        return 0 if all(r["failed"] == 0 for r in rows) else 1
    backend = "lmsim" if args.backend is None else args.backend
    print(f"\nconsultation: 12 agents x {args.questions} requests x {args.rounds} rounds, "
          f"max_tokens {args.max_tokens}, backend {backend}"
          + (f" (--slots {args.slots} --time-scale {args.time_scale:g})" if args.backend is None else "")
          + f"; medians of {args.reps} runs")
    print(f"{'path':<9} {'prompt':>8} {'prefilled (range)':>24} {'server prefill':>15} "
          f"{'makespan s (range)':>22} {'failed':>7}")
    for path in ("lmsched", "direct"):
        m = med[path]
        sp = m.get("server_prefill_tokens", "-")
        pre = f"{m['prefilled_tokens']:.0f} ({m['prefilled_tokens_min']}-{m['prefilled_tokens_max']})"
        mk = f"{m['makespan_s']:.2f} ({m['makespan_s_min']:.2f}-{m['makespan_s_max']:.2f})"
        print(f"{path:<9} {m['prompt_tokens']:>8.0f} {pre:>24} {sp!s:>15} {mk:>22} "
              f"{m['failed']:>7.0f}")
    lm, di = med["lmsched"], med["direct"]
    if lm["prefilled_tokens"] and lm["makespan_s"]:
        print(f"direct / lmsched: prefilled x{di['prefilled_tokens'] / lm['prefilled_tokens']:.2f}, "
              f"makespan x{di['makespan_s'] / lm['makespan_s']:.2f}")
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
