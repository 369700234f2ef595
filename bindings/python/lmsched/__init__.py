"""lmsched for Python: agents share one local LLM server through the lmsched
scheduler daemon.

A thin layer over the agent library, liblmsched-agent, through ctypes (no
compile step, standard library only)::

    import lmsched

    with lmsched.Client(agent="planner") as client:
        reply = client.chat("You are terse.", "Say hello.", max_tokens=32)
        print(reply.content, reply.usage.cached_tokens, reply.timings.queue_ms)

- :class:`Client`: blocking ``chat``, ``submit`` (a concurrent future),
  ``batch_chat``, ``stream`` (an iterator of :class:`Delta`), ``status``;
  shareable between threads.
- :class:`AsyncClient`: the same for asyncio (``await client.chat(...)``,
  ``async for d in client.stream(...)``); cancelling a task cancels its
  request in the daemon.
- Tools and structured output: ``tools=``, ``tool_choice=``,
  ``response_format=``, ``extra=`` options; ``result.tool_calls``.
- Exceptions, one class per error code: :class:`Busy`,
  :class:`DeadlineExceeded`, :class:`BackendDown`, :class:`Timeout` ...,
  all :class:`Error`.
- ``python3 -m lmsched chat|status``: the ``lmsched chat`` and
  ``lmsched status`` commands.

The library is found through :func:`load_library`'s path, ``$LMSCHED_LIB``,
or the installed one (docs/python.md).
"""

from __future__ import annotations

from ._native import load_library
from .aio import AsyncChatStream, AsyncClient
from .client import ChatStream, Client
from .errors import (
    BackendCrash,
    BackendDown,
    BackendError,
    BackendHTTP,
    BackendStream,
    BackendTimeout,
    Busy,
    Canceled,
    Closed,
    DeadlineExceeded,
    Error,
    InternalError,
    InvalidRequest,
    LibraryNotFoundError,
    NoDaemon,
    OutOfMemory,
    ProtocolError,
    Shutdown,
    Timeout,
    TooLarge,
    Unauthorized,
    VersionMismatch,
    error_for_code,
)
from .types import ChatResult, Delta, Request, Timings, ToolCall, Usage

__version__ = "0.2.0"

__all__ = [
    "__version__",
    "load_library",
    "library_version",
    "Client",
    "AsyncClient",
    "ChatStream",
    "AsyncChatStream",
    "Delta",
    "Request",
    "ChatResult",
    "Usage",
    "Timings",
    "ToolCall",
    "Error",
    "InvalidRequest",
    "OutOfMemory",
    "ProtocolError",
    "VersionMismatch",
    "Busy",
    "DeadlineExceeded",
    "Timeout",
    "NoDaemon",
    "Closed",
    "Shutdown",
    "BackendError",
    "BackendDown",
    "BackendTimeout",
    "BackendHTTP",
    "BackendCrash",
    "BackendStream",
    "TooLarge",
    "InternalError",
    "Canceled",
    "Unauthorized",
    "LibraryNotFoundError",
    "error_for_code",
]


def library_version() -> str:
    """The version of the loaded liblmsched-agent (loading it if needed)."""
    return str(load_library().version_text)
