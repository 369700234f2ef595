#!/usr/bin/env python3
"""consultation - twelve role agents of one team in one asyncio program,
consulted round after round through lmsched: the scenario lmsched's design
comes from, rebuilt on the Python package.

Each round, every agent (planner, coder, critic, tester ...) answers a few
questions about the team's task at once with ``batch_chat``, all twelve
agents concurrently. An agent's requests share its role's system prompt
(byte for byte, the prefix the LLM server keeps cached) and its own history
(its earlier answers); each round's questions carry a digest of the
previous round, the same text for every agent. The next round starts when
every agent has answered.

    python3 examples/python/consultation.py [--url URL] [--rounds N]
        [--questions K] [--max-tokens N] [--json]

It prints one line per round (requests, failures, time, prompt tokens and
how many the server took from its cache) and a summary, and exits 0 when
every request got an answer. The workload is :func:`consultation`, which
takes any client with an ``async batch_chat(list of lmsched.Request)``;
bench/py_consultation.py runs it through lmsched and through the seed's
semaphore client (bench/semaphore_client.py) side by side.

With ``PYTHONPATH=bindings/python`` (or the package installed) and
``LMSCHED_LIB`` naming the agent library (or lmsched installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import lmsched

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = os.path.join(os.path.dirname(HERE), "prompts")

TASK = (
    "The team is adding a Python package to a C scheduler daemon that lets many AI agent "
    "processes share one local LLM server. The package wraps the C client library with "
    "ctypes, offers blocking and asyncio clients, batches, streaming and typed errors."
)

_ROLE_TEXT = {
    "tester": (
        "You are the Tester of a small software team. You turn each change into the smallest "
        "set of tests that would catch it breaking: one for the main path, one for each error "
        "the change handles, one for the boundary values of every input it takes. Tests run "
        "against real processes where they are cheap and fake only what is slow or outside "
        "the team's control. Every test must be able to fail: it asserts on values, never on "
        "'did not crash'. Name each test after the behaviour it checks. Answer with a list of "
        "tests, each with its setup, its action and its assertion, in that order."
    ),
    "security": (
        "You are the Security Reviewer of a small software team. For every change you ask who "
        "can reach it, with what input, and what the worst input does. You look for missing "
        "bounds on anything a peer controls (sizes, counts, nesting, time), secrets that reach "
        "logs or error messages, files and sockets with loose permissions, and code paths "
        "where a failure leaves a resource held. Rank your findings by what an attacker gains, "
        "name the input that triggers each, and propose the smallest fix. Do not report style."
    ),
    "architect": (
        "You are the Architect of a small software team. You keep the layers apart: the wire "
        "format knows no sockets, the scheduler loop owns its state on one thread, each "
        "dependency is wrapped by one module. When a change is proposed you say which module "
        "it belongs in, which interfaces it touches, and what it will cost the next person "
        "who changes it. Prefer boring designs that are easy to delete. Answer with the "
        "placement, the interface in a few lines, and the one trade-off you are accepting."
    ),
    "product": (
        "You are the Product Manager of a small software team. You speak for the people who "
        "will use what the team builds: agent authors who want their programs to keep working "
        "when a dozen others share their model. For every proposal you ask what the user can "
        "now do that they could not before, how they find out it exists, and what they must "
        "change in their code. Answer in plain language, at most five sentences, with the one "
        "measurable outcome that would tell the team the work was worth it."
    ),
    "docs": (
        "You are the Documentation Writer of a small software team. You write the page a new "
        "user reads first: what the thing is for, how to install it, the shortest program "
        "that works, then the reference. Every code sample must run as shown. You prefer "
        "examples to adjectives and tables to paragraphs when comparing options. When you "
        "review a change you list the pages it makes wrong and the sentence each now needs. "
        "Answer with an outline: headings and one line under each."
    ),
    "performance": (
        "You are the Performance Engineer of a small software team. You measure before you "
        "change anything, on the same machine, side by side, and you report medians with "
        "their spread, never a single run. You know where time goes in a request: the hop "
        "between processes, the copies, the allocations, the waits for a lock or a slot. For "
        "each proposal you name the figure it should move, the benchmark that shows it, and "
        "the cost you expect in microseconds or tokens. Answer with numbers or say you need "
        "to measure first."
    ),
    "operations": (
        "You are the Operations Engineer of a small software team. You run what the team "
        "builds on machines you do not control: a laptop with one model loaded, a server with "
        "a dozen agents. You care about start-up, shutdown, restarts, logs that say what "
        "happened, limits that protect the machine, and a status you can read at three in the "
        "morning. For every change you ask how it fails, how you notice, and how you recover. "
        "Answer with a short runbook entry."
    ),
    "ux": (
        "You are the Developer Experience lead of a small software team. You read every API "
        "as its first user will: which call do I make first, what does the error tell me, "
        "what happens when I forget to close something. You push for names that say what "
        "they do, defaults that are safe, and errors that name the argument and the fix. You "
        "write the five-line program a user would try first and point at every place it could "
        "surprise them. Answer with that program and your list of surprises."
    ),
}

QUESTIONS = [
    "What is the first thing you would do about this task?",
    "Name the biggest risk you see from where you stand.",
    "What do you need from the other roles to do your part?",
    "How will you know your part is done?",
    "What would you cut if the team had half the time?",
    "Which earlier suggestion from the team do you disagree with, and why?",
]


def load_roles() -> Dict[str, str]:
    """The twelve roles and their system prompts: the three of
    examples/prompts, the eight above, and the researcher."""
    roles: Dict[str, str] = {}
    for name in ("planner", "coder", "critic"):
        path = os.path.join(PROMPTS, f"{name}.txt")
        try:
            with open(path, encoding="utf-8") as f:
                roles[name] = f.read()  # byte for byte: it is the cached prefix
        except OSError:
            roles[name] = f"You are the {name.capitalize()} of a small software team. Answer briefly."
    roles.update(_ROLE_TEXT)
    roles["researcher"] = (
        "You are the Researcher of a small software team. You find out what others have "
        "already learned before the team builds anything: the documented behaviour of the "
        "libraries involved, their known bugs and the fixes people settled on, and how "
        "similar tools solved the same problem. You cite where each fact comes from and say "
        "how sure you are. Answer with at most five findings, each with its source and what "
        "it means for the task."
    )
    return roles


def _digest(round_no: int, answers: Dict[str, str]) -> str:
    """What every agent hears about the previous round: the start of each
    role's first answer, the same text for all."""
    if not answers:
        return f"Round {round_no + 1}. The task: {TASK}"
    parts = [f"{role}: {' '.join(text.split()[:8])}" for role, text in sorted(answers.items())]
    return f"Round {round_no + 1}. The team said last round: " + "; ".join(parts) + "."


class Report:
    """What one consultation did: per round and in total."""

    def __init__(self) -> None:
        self.rounds: List[Dict[str, Any]] = []
        #: The first message of each kind of failure.
        self.samples: Dict[str, str] = {}
        self.started = time.monotonic()
        self.makespan_s = 0.0

    def add(self, round_no: int, results: Sequence[Any], seconds: float) -> Dict[str, Any]:
        ok = [r for r in results if isinstance(r, lmsched.ChatResult)]
        errors: Dict[str, int] = {}
        for r in results:
            if not isinstance(r, lmsched.ChatResult):
                name = getattr(r, "name", None) or type(r).__name__
                errors[name] = errors.get(name, 0) + 1
                self.samples.setdefault(name, str(r)[:200])
        prompt = sum(r.usage.prompt_tokens or 0 for r in ok)
        cached = sum(r.usage.cached_tokens or 0 for r in ok)
        row = {
            "round": round_no + 1,
            "requests": len(results),
            "failed": len(results) - len(ok),
            "seconds": round(seconds, 3),
            "prompt_tokens": prompt,
            "cached_tokens": cached,
            "prefilled_tokens": prompt - cached,
            "retries": sum(r.retries for r in ok),
            "errors": errors,
        }
        self.rounds.append(row)
        return row

    def total(self) -> Dict[str, Any]:
        keys = ("requests", "failed", "prompt_tokens", "cached_tokens", "prefilled_tokens",
                "retries")
        out: Dict[str, Any] = {k: sum(r[k] for r in self.rounds) for k in keys}
        errors: Dict[str, int] = {}
        for r in self.rounds:
            for name, count in r["errors"].items():
                errors[name] = errors.get(name, 0) + count
        out["errors"] = errors
        if self.samples:
            out["error_samples"] = dict(self.samples)
        out["rounds"] = len(self.rounds)
        out["makespan_s"] = round(self.makespan_s, 3)
        return out


async def consultation(
    client: Any,
    *,
    rounds: int = 3,
    questions: int = 4,
    max_tokens: int = 48,
    roles: Optional[Dict[str, str]] = None,
    on_round: Any = None,
) -> Report:
    """Runs the consultation through client (anything with an
    ``async batch_chat(requests)`` returning results or errors in order) and
    returns its Report."""
    roles = roles if roles is not None else load_roles()
    history: Dict[str, List[Dict[str, str]]] = {role: [] for role in roles}
    previous: Dict[str, str] = {}
    report = Report()

    async def agent(role: str, round_no: int, digest: str) -> List[Any]:
        asked = [QUESTIONS[(round_no + q) % len(QUESTIONS)] for q in range(questions)]
        requests = [
            lmsched.Request(
                roles[role],
                history[role] + [{"role": "user", "content": f"{digest}\n\nAs the {role}: {q}"}],
                max_tokens=max_tokens,
                agent=role,
                seed=round_no * 100 + i,
                temperature=0,
            )
            for i, q in enumerate(asked)
        ]
        results = await client.batch_chat(requests)
        first = results[0]
        if isinstance(first, lmsched.ChatResult):
            # The agent keeps its first exchange of each round as its history.
            history[role] += [requests[0].messages[-1], first.message()]
        return list(results)

    for r in range(rounds):
        t0 = time.monotonic()
        digest = _digest(r, previous)
        outs = await asyncio.gather(*(agent(role, r, digest) for role in roles))
        seconds = time.monotonic() - t0
        previous = {
            role: res[0].content
            for role, res in zip(roles, outs)
            if isinstance(res[0], lmsched.ChatResult)
        }
        row = report.add(r, [x for res in outs for x in res], seconds)
        if on_round is not None:
            on_round(row)
    report.makespan_s = time.monotonic() - report.started
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Twelve role agents consulted round after "
                                 "round through lmsched (batch_chat per agent per round).")
    ap.add_argument("--url", help="daemon URL (default: $LMSCHED_URL or the per-user socket)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--questions", type=int, default=4, help="requests per agent per round")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--json", action="store_true", help="JSON lines instead of text")
    args = ap.parse_args(argv)

    def show(row: Dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            share = 100.0 * row["cached_tokens"] / row["prompt_tokens"] if row["prompt_tokens"] else 0
            print(f"round {row['round']}: {row['requests']} requests, {row['failed']} failed, "
                  f"{row['seconds']:.2f} s, prompt {row['prompt_tokens']} tokens, "
                  f"cached {row['cached_tokens']} ({share:.0f}%)", flush=True)

    async def run() -> Report:
        async with lmsched.AsyncClient(args.url) as client:
            return await consultation(client, rounds=args.rounds, questions=args.questions,
                                      max_tokens=args.max_tokens, on_round=show)

    try:
        report = asyncio.run(run())
    except lmsched.LibraryNotFoundError as e:
        print(f"consultation: {e}", file=sys.stderr)
        return 1
    total = report.total()
    if args.json:
        print(json.dumps(dict(total, round="total")))
    else:
        print(f"total: {total['requests']} requests, {total['failed']} failed, "
              f"makespan {total['makespan_s']:.2f} s, prefilled {total['prefilled_tokens']} of "
              f"{total['prompt_tokens']} prompt tokens")
    return 0 if total["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
