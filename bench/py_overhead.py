#!/usr/bin/env python3
"""py_overhead - what the Python package adds to a chat over the same call
from C, both against the instant backend of the overhead benchmark, side by
side in one run, on one daemon.

    python3 bench/py_overhead.py [--blocks N] [--block N] [--warmup N] [--json]
        (defaults: 20 blocks of 200 requests per side, 200 warm-up requests)

It starts `lmsim --instant --slots 64` and one `lmsched serve` with the
overhead benchmark's flags (--max-concurrent 64 --total-ram 1T
--kv-per-request 1M, bench/overhead.c), then sends sequential requests
(the overhead benchmark's system prompt and user message, max_tokens 4)
three ways, in alternating blocks so that load elsewhere on the machine
falls on all three alike:

- C: a small C program (below, compiled here with cc against the build's
  header and library) calling `lmsched_chat` with a request built once and
  reading the reply's content, as lmoverhead's sequential lmsched path does;
- Python: `lmsched.Client.chat(system, messages, max_tokens=4)`, timed as a
  Python program sees it: building the request, the call, the result object;
- ctypes floor: `lmsched_chat` called straight through ctypes with a request
  built once: what any ctypes binding pays before this package's own work.

It prints a JSON line per block and one with the figures, then a table: the
p50 of each side over all its requests, and the median over the blocks of
(Python's p50 - C's p50) in the same block, "added".

Environment: LMSCHED_BIN_DIR (default build/bin), LMSCHED_LIB (default
build/lib), CC (default cc).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
BIN = os.environ.get("LMSCHED_BIN_DIR") or os.path.join(ROOT, "build", "bin")
os.environ.setdefault("LMSCHED_LIB", os.path.join(os.path.dirname(BIN), "lib"))

import lmsched  # noqa: E402
from lmsched import _native  # noqa: E402

# What bench/overhead.c sends.
SYSTEM = "You are the lmsched overhead benchmark. Answer briefly."
USER = "Say something short."
MAX_TOKENS = 4
DAEMON_FLAGS = ["--max-concurrent", "64", "--total-ram", "1T", "--kv-per-request", "1M"]

# The C side: reads a count per line on stdin, makes that many sequential
# calls, prints each one's microseconds (-1 for a failed call), then "end".
C_DRIVER = r"""
#include <lmsched/agent.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    lmsched_client *c = NULL;
    lmsched_request *r = NULL;
    char line[64];
    if (argc != 2 || lmsched_client_open(&c, argv[1]) != LMSCHED_OK ||
        lmsched_request_alloc(&r) != LMSCHED_OK ||
        lmsched_request_set_system(r, "@SYSTEM@") != LMSCHED_OK ||
        lmsched_request_add_message(r, "user", "@USER@") != LMSCHED_OK ||
        lmsched_request_set_max_tokens(r, @MAX_TOKENS@) != LMSCHED_OK ||
        lmsched_request_set_agent(r, "py_overhead_c") != LMSCHED_OK)
        return 1;
    while (fgets(line, sizeof(line), stdin) != NULL) {
        int n = atoi(line);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++) {
            lmsched_result *res = NULL;
            double t0 = now_us();
            int rc = lmsched_chat(c, r, 30000, &res);
            const char *content = res != NULL ? lmsched_result_content(res) : NULL;
            int ok = rc == LMSCHED_OK && content != NULL && content[0] != '\0';
            lmsched_result_free(res);
            double t1 = now_us();
            printf("%.1f\n", ok ? t1 - t0 : -1.0);
        }
        printf("end\n");
        fflush(stdout);
    }
    lmsched_request_free(r);
    lmsched_client_close(c);
    return 0;
}
"""


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


def build_driver(tmp: str) -> str:
    lib = _native.native().path
    libdir = os.path.dirname(os.path.realpath(lib))
    src = os.path.join(tmp, "driver.c")
    with open(src, "w") as f:
        f.write(C_DRIVER.replace("@SYSTEM@", SYSTEM).replace("@USER@", USER)
                .replace("@MAX_TOKENS@", str(MAX_TOKENS)))
    out = os.path.join(tmp, "driver")
    cc = os.environ.get("CC", "cc")
    argv = [cc, "-O2", "-o", out, src, "-I", os.path.join(ROOT, "agentlib", "include"),
            "-I", os.path.join(ROOT, "proto", "include"), os.path.realpath(lib),
            f"-Wl,-rpath,{libdir}"]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"py_overhead: cannot build the C driver ({' '.join(argv)}):\n{r.stderr}")
    return out


class CSide:
    def __init__(self, driver: str, url: str) -> None:
        self.p = subprocess.Popen([driver, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, bufsize=1)

    def run(self, n: int) -> List[float]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        out: List[float] = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise SystemExit("py_overhead: the C driver ended")
            if line.strip() == "end":
                break
            us = float(line)
            if us < 0:
                raise SystemExit("py_overhead: a failed C call")
            out.append(us)
        return out

    def close(self) -> None:
        if self.p.stdin is not None:
            self.p.stdin.close()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            _stop(self.p)


class PySide:
    def __init__(self, url: str) -> None:
        self.c = lmsched.Client(url, timeout=30)
        self.msgs = [{"role": "user", "content": USER}]
        n = _native.native()
        req = ctypes.c_void_p()
        n.request_alloc(ctypes.byref(req))
        n.request_set_system(req, SYSTEM.encode())
        n.request_add_message(req, b"user", USER.encode())
        n.request_set_max_tokens(req, MAX_TOKENS)
        n.request_set_agent(req, b"py_overhead_raw")
        self.req = req
        self.n = n

    def chat(self, k: int) -> List[float]:
        c, msgs, clock = self.c, self.msgs, time.perf_counter_ns
        out = []
        for _ in range(k):
            t0 = clock()
            r = c.chat(SYSTEM, msgs, max_tokens=MAX_TOKENS, agent="py_overhead")
            out.append((clock() - t0) / 1000.0)
            if not r.content:
                raise SystemExit("py_overhead: an empty reply")
        return out

    def raw(self, k: int) -> List[float]:
        n, req, clock = self.n, self.req, time.perf_counter_ns
        chat, content, free = n.chat, n.result_content, n.result_free
        handle = self.c._h.ptr
        res = ctypes.c_void_p()
        out = []
        for _ in range(k):
            t0 = clock()
            rc = chat(handle, req, 30000, ctypes.byref(res))
            ok = rc == 0 and content(res)
            free(res)
            out.append((clock() - t0) / 1000.0)
            if not ok:
                raise SystemExit("py_overhead: a failed raw call")
        return out

    def close(self) -> None:
        self.n.request_free(self.req)
        self.c.close()


def p50(xs: List[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    ap = argparse.ArgumentParser(description="Python chat() versus C lmsched_chat, p50.")
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--block", type=int, default=200, help="requests per side and block")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="only the JSON lines")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="lmpyo-")
    sim = daemon = None
    cside: Optional[CSide] = None
    pyside: Optional[PySide] = None
    every: Dict[str, List[float]] = {"c": [], "py": [], "ctypes": []}
    blocks: List[Dict[str, Any]] = []
    try:
        driver = build_driver(tmp)
        pf = os.path.join(tmp, "port")
        sim = subprocess.Popen([os.path.join(BIN, "lmsim"), "--instant", "--slots", "64",
                                "--port-file", pf, "--log-level", "warn"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(500):
            if os.path.exists(pf) and open(pf).read().strip():
                break
            time.sleep(0.02)
        backend = f"http://127.0.0.1:{open(pf).read().strip()}"
        url = f"ipc://{tmp}/d.sock"
        daemon = subprocess.Popen(
            [os.path.join(BIN, "lmsched"), "serve", "--listen", url, "--backend", backend,
             "--log-level", "warn"] + DAEMON_FLAGS,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with lmsched.Client(url, connect_timeout=0.2) as probe:
            for _ in range(300):
                try:
                    if probe.status(timeout=0.5)["backend"]["healthy"]:
                        break
                except lmsched.Error:
                    pass
                time.sleep(0.05)
        cside = CSide(driver, url)
        pyside = PySide(url)
        cside.run(args.warmup)
        pyside.chat(args.warmup)
        pyside.raw(args.warmup)
        sides = {"c": cside.run, "py": pyside.chat, "ctypes": pyside.raw}
        for b in range(args.blocks):
            order = ["c", "py", "ctypes"] if b % 2 == 0 else ["ctypes", "py", "c"]
            row: Dict[str, Any] = {"block": b + 1}
            for side in order:
                lat = sides[side](args.block)
                every[side] += lat
                row[f"{side}_p50_us"] = round(p50(lat), 1)
            row["added_p50_us"] = round(row["py_p50_us"] - row["c_p50_us"], 1)
            row["package_p50_us"] = round(row["py_p50_us"] - row["ctypes_p50_us"], 1)
            blocks.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    finally:
        if pyside is not None:
            pyside.close()
        if cside is not None:
            cside.close()
        _stop(daemon)
        _stop(sim)
        shutil.rmtree(tmp, ignore_errors=True)

    added = [r["added_p50_us"] for r in blocks]
    package = [r["package_p50_us"] for r in blocks]
    summary = {
        "rep": "summary", "blocks": args.blocks, "block": args.block,
        "c_p50_us": round(p50(every["c"]), 1),
        "py_p50_us": round(p50(every["py"]), 1),
        "ctypes_p50_us": round(p50(every["ctypes"]), 1),
        "added_p50_us": round(statistics.median(added), 1),
        "added_p50_us_q1": round(statistics.quantiles(added, n=4)[0], 1),
        "added_p50_us_q3": round(statistics.quantiles(added, n=4)[2], 1),
        "package_p50_us": round(statistics.median(package), 1),
    }
    print(json.dumps(summary), flush=True)
    if not args.json:
        s = summary
        print(f"\nsequential chat, one daemon, lmsim --instant; {args.blocks} blocks of "
              f"{args.block} requests per side, alternating")
        print(f"  C lmsched_chat (request built once)   p50 {s['c_p50_us']:>7.1f} us")
        print(f"  Python Client.chat                    p50 {s['py_p50_us']:>7.1f} us")
        print(f"  Python, raw ctypes lmsched_chat       p50 {s['ctypes_p50_us']:>7.1f} us")
        print(f"  added by Python (per block, median)       {s['added_p50_us']:>7.1f} us "
              f"(quartiles {s['added_p50_us_q1']:.1f} .. {s['added_p50_us_q3']:.1f})")
        print(f"  of which the package (chat - raw)         {s['package_p50_us']:>7.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
