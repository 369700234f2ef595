"""The exceptions of lmsched, one class per error code of the wire protocol.

Every failure the agent library or the daemon reports arrives as an
``lmsched_err`` code (``<lmsched/wire.h>``, docs/protocol.md "Error codes")
and a message. This module maps each code to a class, so a caller writes
``except lmsched.Busy`` instead of comparing numbers; every instance carries
the code, its stable short name (the one ``lmsched status`` uses), the
daemon's message and, for a rejected request, the field it named.

The table here is the Python side of the C enum; the test suite checks it
against ``lmsched_err_name`` and ``lmsched_strerror`` of the loaded library,
so the two cannot drift apart. A code this package does not know (a newer
daemon) becomes a plain :class:`Error` with that code, as the protocol asks.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Type

__all__ = [
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


class Error(Exception):
    """A request that failed: the base of every lmsched exception.

    Attributes:
        code: the wire code (``lmsched_err``), e.g. 5 for ``busy``.
        name: its stable short name, e.g. ``"busy"``.
        message: what the daemon (or the library) said, without the
            ``" (field: X)"`` suffix the library appends.
        field: the request field the daemon named (``"messages[2].content"``,
            ``"priority"`` ...), or ``None``.
        retryable: whether sending the same request again can succeed
            (docs/protocol.md, the "retry?" column).
        index: for an exception that stands in a batch's result list, its
            position in that list; otherwise ``None``.
    """

    code: int = -1
    name: str = "unknown"
    description: str = "unknown error"
    retryable: bool = False

    def __init__(
        self,
        message: str = "",
        *,
        code: Optional[int] = None,
        field: Optional[str] = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.message = message or self.description
        self.field = field
        self.index: Optional[int] = None
        super().__init__(self.message)

    def __str__(self) -> str:
        text = f"{self.name}: {self.message}"
        if self.field is not None and self.field not in self.message:
            text += f" (field: {self.field})"
        return text

    def __repr__(self) -> str:
        args = [repr(self.message)]
        if type(self) is Error:
            args.append(f"code={self.code}")
        if self.field is not None:
            args.append(f"field={self.field!r}")
        return f"{type(self).__name__}({', '.join(args)})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Picklable (multiprocessing, concurrent.futures.ProcessPool).
        return (_rebuild, (type(self), self.message, self.code, self.field))


def _rebuild(cls: Type[Error], message: str, code: int, field: Optional[str]) -> Error:
    return cls(message, code=code, field=field)


class InvalidRequest(Error, ValueError):
    """An invalid argument: an option out of range, a request with no
    message, a string with a NUL byte (code 1, ``invalid``)."""

    code, name, retryable = 1, "invalid", False
    description = "invalid argument"


class OutOfMemory(Error, MemoryError):
    """Out of memory in the library or the daemon (code 2, ``nomem``)."""

    code, name, retryable = 2, "nomem", True
    description = "out of memory"


class ProtocolError(Error):
    """A malformed or invalid protocol message (code 3, ``proto``); the
    field names the part."""

    code, name, retryable = 3, "proto", False
    description = "malformed or invalid protocol message"


class VersionMismatch(Error):
    """The daemon speaks another protocol version (code 4, ``version``)."""

    code, name, retryable = 4, "version", False
    description = "protocol version not supported"


class Busy(Error):
    """The daemon's queue is full, or this client has too many requests
    outstanding on its connection (code 5, ``busy``); retry after a
    back-off."""

    code, name, retryable = 5, "busy", True
    description = "scheduler queue is full"


class DeadlineExceeded(Error):
    """The request's ``deadline`` passed before it could start (code 6,
    ``deadline``)."""

    code, name, retryable = 6, "deadline", True
    description = "request deadline passed before it could run"


class Timeout(Error, TimeoutError):
    """No reply within the call's own ``timeout`` (code 7, ``timeout``);
    the daemon may still run the request."""

    code, name, retryable = 7, "timeout", True
    description = "no reply within the timeout"


class NoDaemon(Error, ConnectionError):
    """The daemon is not reachable, or the connection to it was lost while
    waiting (code 8, ``no_daemon``)."""

    code, name, retryable = 8, "no_daemon", True
    description = "lmsched daemon is not reachable"


class Closed(Error):
    """The client was closed before or during the call (code 9,
    ``closed``)."""

    code, name, retryable = 9, "closed", False
    description = "client handle is closed"


class Shutdown(Error):
    """The daemon is shutting down (code 10, ``shutdown``)."""

    code, name, retryable = 10, "shutdown", True
    description = "scheduler is shutting down"


class BackendError(Error):
    """Base of the failures of the LLM server behind the daemon."""


class BackendDown(BackendError):
    """The LLM server is unreachable (code 11, ``backend_down``); the
    daemon waited ``--backend-wait`` for it."""

    code, name, retryable = 11, "backend_down", True
    description = "the LLM server is not reachable"


class BackendTimeout(BackendError):
    """The LLM server did not answer in time (code 12,
    ``backend_timeout``)."""

    code, name, retryable = 12, "backend_timeout", True
    description = "the LLM server did not answer in time"


class BackendHTTP(BackendError):
    """The LLM server answered with an HTTP error (code 13,
    ``backend_http``); the message says which."""

    code, name, retryable = 13, "backend_http", False
    description = "the LLM server answered with an HTTP error"


class BackendCrash(BackendError):
    """The model crashed on the LLM server, LM Studio's "Channel Error"
    (code 14, ``backend_crash``); the daemon already retried."""

    code, name, retryable = 14, "backend_crash", True
    description = "the model crashed on the LLM server"


class BackendStream(BackendError):
    """A broken or malformed response stream from the LLM server (code 15,
    ``backend_stream``)."""

    code, name, retryable = 15, "backend_stream", True
    description = "broken or malformed response from the LLM server"


class TooLarge(Error):
    """A message or field over a limit (code 16, ``too_large``); the field
    names it."""

    code, name, retryable = 16, "too_large", False
    description = "message or field exceeds a size limit"


class InternalError(Error):
    """An internal error in the daemon or the agent library (code 17,
    ``internal``)."""

    code, name, retryable = 17, "internal", False
    description = "internal error in the scheduler"


class Canceled(Error):
    """The request was canceled (code 18, ``canceled``)."""

    code, name, retryable = 18, "canceled", False
    description = "request canceled"


class Unauthorized(Error):
    """The daemon requires an access token and this one is missing or wrong
    (code 19, ``auth``)."""

    code, name, retryable = 19, "auth", False
    description = "authentication required or refused"


class LibraryNotFoundError(ImportError):
    """liblmsched-agent could not be loaded. ``tried`` lists every place
    looked at, with why each failed."""

    def __init__(self, message: str, tried: "list[str]") -> None:
        super().__init__(message)
        self.tried = tried


_BY_CODE: Dict[int, Type[Error]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        OutOfMemory,
        ProtocolError,
        VersionMismatch,
        Busy,
        DeadlineExceeded,
        Timeout,
        NoDaemon,
        Closed,
        Shutdown,
        BackendDown,
        BackendTimeout,
        BackendHTTP,
        BackendCrash,
        BackendStream,
        TooLarge,
        InternalError,
        Canceled,
        Unauthorized,
    )
}

# The library appends " (field: X)" to the daemon's message when the daemon
# named a field the message does not mention; the daemon's decoder messages
# name it themselves as "field 'X': ...".
_FIELD_SUFFIX = re.compile(r" \(field: ([^()]+)\)\Z")
_FIELD_QUOTED = re.compile(r"\bfield '([^']+)'")


def error_for_code(code: int, message: Optional[str] = None) -> Error:
    """The exception for a failed call: the class of ``code`` (a plain
    :class:`Error` for a code this package does not know), with the message
    and the field parsed out of it."""
    cls = _BY_CODE.get(code, Error)
    field = None
    text = message or ""
    m = _FIELD_SUFFIX.search(text)
    if m is not None:
        field = m.group(1)
        text = text[: m.start()]
    else:
        m = _FIELD_QUOTED.search(text)
        if m is not None:
            field = m.group(1)
    err = cls(text, code=code, field=field)
    if cls is Error:
        err.name = "unknown"
    return err
