"""semaphore_client - the design lmsched replaces, as a baseline: a Python
client that calls the LLM server (LM Studio, llama-server) directly.

This is the seed's class, rebuilt with the standard library only:
- concurrency capped by an ``asyncio.Semaphore`` sized by the "60% of RAM"
  rule: ``(0.60 x RAM - model size) / KV cache per request``, the same rule
  and defaults lmsched's budget uses (docs/memory-budget.md), but counted
  per process and blind to the server's slots;
- the system prompt kept apart and byte-stable, and ``"cache_prompt": true``
  sent, so the server may reuse its prompt cache;
- ``batch_chat`` fanning a list of requests out with ``asyncio.gather``;
- transient "Channel Error" bursts (HTTP 500, a crashed model) survived by
  retrying with exponential back-off.

What it does not have is what lmsched adds: one budget for every process,
an order that keeps requests with the same prefix together, slot pinning
(``id_slot``), per-request figures from a scheduler. bench/py_consultation.py
runs examples/python/consultation.py through it and through lmsched.

It takes the same requests as ``lmsched.AsyncClient.batch_chat``
(``lmsched.Request``) and returns ``lmsched.ChatResult`` objects (usage from
the server's reply; timings measured here), so one workload runs on both.
Requests are not streamed. HTTP/1.1 with keep-alive over asyncio streams;
``http://`` only.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

import lmsched
from lmsched.types import ChatResult, Timings, Usage

RAM_FRACTION = 0.60
KV_PER_REQUEST = 1 << 30  # what lmsched assumes for an 8B-class model without --model-path


def total_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux or macOS
        return 16 << 30


class ServerError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class SemaphoreClient:
    """The seed's LM Studio client: ``await client.chat(system, messages)``,
    ``await client.batch_chat(requests)``."""

    def __init__(
        self,
        base_url: str,
        *,
        model: Optional[str] = None,
        model_size: Optional[int] = None,
        max_concurrent: Optional[int] = None,
        kv_per_request: int = KV_PER_REQUEST,
        retries: int = 5,
        backoff_s: float = 0.25,
        timeout_s: float = 600.0,
    ) -> None:
        u = urllib.parse.urlsplit(base_url.rstrip("/"))
        if u.scheme != "http" or u.hostname is None:
            raise ValueError(f"an http:// URL, not {base_url!r}")
        self.host = u.hostname
        self.port = u.port or 80
        self.base = f"http://{self.host}:{self.port}"
        info = self._models()
        self.model = model or info.get("model") or "default"
        if model_size is None:
            model_size = info.get("size_bytes") or 0
        if max_concurrent is None:
            budget = RAM_FRACTION * total_ram() - model_size
            max_concurrent = max(1, int(budget // kv_per_request))
        self.max_concurrent = max_concurrent
        self._sem = asyncio.Semaphore(max_concurrent)
        self._idle: List[Tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.retried = 0

    def _models(self) -> Dict[str, Any]:
        """The loaded model and its size: LM Studio's /api/v1/models, else
        the OpenAI /v1/models."""
        for path in ("/api/v1/models", "/v1/models"):
            try:
                with urllib.request.urlopen(self.base + path, timeout=5) as r:
                    doc = json.loads(r.read())
            except (OSError, ValueError):
                continue
            if doc.get("models") and "key" in doc["models"][0]:  # LM Studio's own API
                m = doc["models"][0]
                return {"model": m.get("key"), "size_bytes": m.get("size_bytes")}
            if "data" in doc and doc["data"]:
                return {"model": doc["data"][0].get("id")}
        return {}

    # ---- HTTP -----------------------------------------------------------------

    async def _post(self, path: str, body: bytes) -> Tuple[int, bytes]:
        # A pooled connection the server has closed meanwhile (llama-server
        # closes idle ones after 5 s) fails at once: drop it and use a fresh
        # one, as any HTTP client's pool does.
        fresh = not self._idle
        while True:
            if fresh:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            else:
                reader, writer = self._idle.pop()
            try:
                writer.write(
                    (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                     "Content-Type: application/json\r\nAccept: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                )
                await writer.drain()
                status, keep, data = await self._response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                writer.close()
                if not fresh:
                    fresh = True
                    continue
                raise
            if keep:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return status, data

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> Tuple[int, bool, bytes]:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("connection closed")
        parts = line.decode("latin-1").split(None, 2)
        status = int(parts[1])
        headers: Dict[str, str] = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                data += await reader.readexactly(size)
                await reader.readline()
        elif "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
        else:
            data = await reader.read()
            return status, False, data
        keep = headers.get("connection", "").lower() != "close"
        return status, keep, data

    # ---- the client -------------------------------------------------------------

    async def chat(self, system: Optional[str], messages: Any, **options: Any) -> ChatResult:
        """One request: the system prompt first, byte for byte, then the
        messages; retried on a transient server error."""
        msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
        if system:
            msgs = [{"role": "system", "content": system}] + msgs
        body: Dict[str, Any] = {"model": self.model, "messages": msgs, "stream": False,
                                "cache_prompt": True}
        for k in ("max_tokens", "temperature", "top_p", "seed", "stop"):
            if options.get(k) is not None:
                body[k] = options[k]
        data = json.dumps(body).encode()
        t0 = time.monotonic()
        async with self._sem:
            queued = time.monotonic() - t0
            retries = 0
            while True:
                try:
                    status, reply = await asyncio.wait_for(
                        self._post("/v1/chat/completions", data), self.timeout_s)
                except (OSError, asyncio.IncompleteReadError) as e:
                    # The server went away mid-request: as transient as a 500.
                    status, reply = 599, str(e).encode()
                if status == 200:
                    break
                transient = status >= 500 or status == 429
                if not transient or retries >= self.retries:
                    raise lmsched.BackendHTTP(f"HTTP {status}: {reply[:200].decode('utf-8', 'replace')}")
                retries += 1
                self.retried += 1
                await asyncio.sleep(self.backoff_s * 2 ** (retries - 1))
        total = time.monotonic() - t0
        doc = json.loads(reply)
        choice = doc["choices"][0]
        usage = doc.get("usage") or {}
        timings = doc.get("timings") or {}
        cached = timings.get("cache_n")
        if cached is None:
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return ChatResult(
            choice["message"].get("content") or "",
            choice.get("finish_reason"),
            doc.get("model"),
            Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"), cached),
            Timings(queued * 1000, None, total * 1000),
            retries,
        )

    async def batch_chat(self, requests: Sequence[Any], raise_errors: bool = False) -> List[Any]:
        """Every request at once with asyncio.gather; results (or exceptions)
        in input order."""
        reqs = [lmsched.Request.coerce(r) for r in requests]
        out = await asyncio.gather(*(self.chat(r.system, r.messages, **r.options) for r in reqs),
                                   return_exceptions=True)
        if raise_errors:
            for x in out:
                if isinstance(x, BaseException):
                    raise x
        return list(out)

    async def aclose(self) -> None:
        while self._idle:
            _, w = self._idle.pop()
            w.close()
