"""The blocking client, :class:`Client`, and what it shares with the asyncio
one: opening, closing and the guard that keeps a closed handle from being
used.

Design notes
- One client is one ``lmsched_client`` (one nng socket, one connection to
  the daemon). It may be shared by any number of threads: ctypes releases
  the GIL during ``lmsched_chat``, so N threads keep N requests in flight.
- Close and use: the C library forbids any call once ``lmsched_client_close``
  has returned (the handle is freed). :class:`_Handle` counts the threads
  inside a call; ``close`` marks the handle closed (new calls raise
  :class:`Closed`), waits until no thread is inside a call, then closes the
  C client, which completes every asynchronous request still in flight with
  ``Closed`` and waits for their callbacks.
- Garbage collection: a ``weakref.finalize`` owns the handle, not the
  client, and closes it when the client becomes unreachable or at
  interpreter exit (before finalization, while the library's threads can
  still take the GIL). A client unreachable has no thread inside a call,
  since every call holds it. If the collector runs on a library thread
  (inside a completion), where close would wait for itself, the close is
  handed to a new thread.
- Asynchronous calls (``submit``, the asyncio client, streams) start with
  ``lmsched_chat_start``, which gives a call id for ``lmsched_cancel``; the
  outcome (and a stream's pieces) come through the process-wide trampolines
  of ``_native``, keyed by an integer token. A ``submit`` future refers to
  its client weakly (the client's owner decides when it closes); a stream
  holds it, since iterating needs it.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import queue
import threading
import weakref
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from . import _native
from ._native import CHAT_TRAMPOLINE, OK, Native, in_callback, read_result
from ._request import acquire, check_request_options, release, split_options, timeout_ms
from .errors import Closed, Error, InvalidRequest
from .types import ChatResult, Delta, Messages, Request

__all__ = ["Client", "ChatStream", "BatchItem"]

#: What a batch may hold: a Request, a dict, or a tuple.
BatchItem = Union[Request, Mapping[str, Any], Tuple[Any, ...]]

STATUS_TIMEOUT = 5.0


class _Handle:
    """An open ``lmsched_client *`` and the count of threads using it."""

    __slots__ = ("n", "ptr", "_lock", "_idle", "_active", "_closed")

    def __init__(self, n: Native, ptr: int) -> None:
        self.n = n
        self.ptr: Optional[int] = ptr
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._closed = False

    def enter(self) -> int:
        """The handle, counted as in use until leave(); Closed if closed."""
        with self._lock:
            if self._closed:
                raise Closed("the client is closed")
            self._active += 1
            return self.ptr  # type: ignore[return-value]

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._closed and self._active == 0:
                self._idle.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            while self._active > 0:
                self._idle.wait()
            ptr, self.ptr = self.ptr, None
        if ptr is None:
            return
        if in_callback():
            # On a library thread: lmsched_client_close would wait for the
            # completion this thread is running.
            threading.Thread(
                target=self.n.client_close, args=(ptr,), name="lmsched-close", daemon=True
            ).start()
        else:
            self.n.client_close(ptr)


class _ClientBase:
    """Opening, defaults, status and closing, shared by both clients."""

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        connect_timeout: Optional[float] = None,
        auth_token: Optional[str] = None,
        stream_idle_timeout: Optional[float] = None,
        library: Optional[str] = None,
        **defaults: Any,
    ) -> None:
        n = _native.load_library(library) if library is not None else _native.native()
        self._n = n
        opts, t = split_options(defaults, f"{type(self).__name__}()")
        if t is not None:
            raise TypeError("give the default timeout as timeout=, not among the options")
        check_request_options(opts)
        self._defaults: Dict[str, Any] = opts
        self._timeout_ms = timeout_ms(timeout)
        if url is not None and not isinstance(url, str):
            raise TypeError(f"url must be a string, got {type(url).__name__}")
        box = ctypes.c_void_p()
        rc = n.client_open(ctypes.byref(box), url.encode() if url is not None else None)
        if rc != OK:
            raise n.error(
                rc,
                f"cannot open a client for {url or self._default_url(n)} "
                f"({n.strerror(rc).decode()}; expected ipc:///path or tcp://host:port)".encode(),
            )
        self._h = _Handle(n, box.value)  # type: ignore[arg-type]
        self._finalizer = weakref.finalize(self, self._h.close)
        self._url = url if url is not None else self._default_url(n)
        try:
            if connect_timeout is not None:
                n.client_set_connect_timeout(box.value, timeout_ms(connect_timeout))
            if auth_token is not None:
                n.client_set_auth(box.value, auth_token.encode() or None)
            if stream_idle_timeout is not None:
                _need_streaming(n, "stream_idle_timeout")
                n.client_set_stream_idle_timeout(box.value, timeout_ms(stream_idle_timeout))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _default_url(n: Native) -> str:
        buf = ctypes.create_string_buffer(1024)
        if n.default_url(buf, len(buf)) != OK:
            return "?"
        return buf.value.decode("utf-8", "replace")

    @property
    def url(self) -> str:
        """The daemon URL this client talks to."""
        return self._url

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._h.closed

    @property
    def library_path(self) -> str:
        """The liblmsched-agent file in use."""
        return self._n.path

    def close(self) -> None:
        """Closes the client. Requests started asynchronously and still in
        flight complete with :class:`Closed` before this returns; blocking
        calls running on other threads are waited for. Later calls raise
        :class:`Closed`. Calling it again does nothing."""
        self._finalizer()

    def _merge(self, opts: Dict[str, Any]) -> Dict[str, Any]:
        if not self._defaults:
            return opts
        merged = dict(self._defaults)
        merged.update(opts)
        return merged

    def _call_timeout(self, t: Optional[float]) -> int:
        return self._timeout_ms if t is None else timeout_ms(t)

    def _status(self, timeout: Optional[float]) -> Dict[str, Any]:
        n = self._n
        doc = ctypes.c_void_p()
        msg = ctypes.c_void_p()
        ptr = self._h.enter()
        try:
            rc = n.status(ptr, timeout_ms(timeout), ctypes.byref(doc), ctypes.byref(msg))
        finally:
            self._h.leave()
        try:
            if rc != OK:
                raise n.error(rc, ctypes.string_at(msg.value) if msg.value else None)
            parsed: Dict[str, Any] = json.loads(
                ctypes.string_at(doc.value).decode("utf-8", "replace"))  # type: ignore[arg-type]
            return parsed
        finally:
            n.free(doc.value)
            n.free(msg.value)

    def _start(
        self,
        system: Optional[str],
        messages: Messages,
        opts: Dict[str, Any],
        tms: int,
        deliver: Any,
        on_delta: Any = None,
    ) -> int:
        """Starts an asynchronous call whose outcome goes to deliver, and
        each piece of a streamed answer to on_delta (both on a library
        thread). Returns its call id for _cancel (0 with a library that
        cannot cancel); raises when it could not start (then neither
        function is called)."""
        n = self._n
        req, key = acquire(n, system, messages, self._merge(opts))
        token = _native.new_token()
        _native.pending[token] = deliver
        if on_delta is not None:
            _native.streams[token] = on_delta
        call_id = ctypes.c_uint64(0)
        try:
            ptr = self._h.enter()
            try:
                if n.chat_start is not None:
                    rc = n.chat_start(
                        ptr, req, tms,
                        _native.DELTA_TRAMPOLINE if on_delta is not None else _native.NO_DELTA,
                        CHAT_TRAMPOLINE, token, ctypes.byref(call_id))
                else:
                    rc = n.chat_async(ptr, req, tms, CHAT_TRAMPOLINE, token)
            finally:
                self._h.leave()
        except BaseException:
            _native.pending.pop(token, None)
            _native.streams.pop(token, None)
            raise
        finally:
            release(n, req, key)  # the call copied it
        if rc != OK:
            _native.pending.pop(token, None)
            _native.streams.pop(token, None)
            raise n.error(rc)
        return call_id.value

    def _cancel(self, call_id: int) -> bool:
        """Cancels a call in flight (from any thread; never blocks). True
        when it was in flight: it completes as Canceled."""
        if not call_id or self._n.cancel is None:
            return False
        try:
            ptr = self._h.enter()
        except Closed:
            return False  # close cancelled everything already
        try:
            return bool(self._n.cancel(ptr, call_id) == OK)
        finally:
            self._h.leave()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self._url} {state}>"


def _need_streaming(n: Native, what: str) -> None:
    if not n.has_streaming:
        raise InvalidRequest(
            f"{what} needs a liblmsched-agent with streaming and cancellation "
            f"(lmsched_chat_start, lmsched_cancel); {n.path} is {n.version_text} without them"
        )


class _CallFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The future of :meth:`Client.submit`: ``cancel()`` also cancels the
    request in the daemon. It refers to its client weakly, as the C side
    does: the client's owner decides when it closes, and a client closed or
    collected first completes the future with :class:`Closed`."""

    _client: Optional["weakref.ref[Any]"] = None
    _call_id = 0

    def _bind(self, client: Any, call_id: int) -> None:
        self._client = weakref.ref(client)
        self._call_id = call_id

    def cancel(self) -> bool:
        ref, call_id = self._client, self._call_id
        if not super().cancel():
            return False
        client = ref() if ref is not None else None
        if client is not None:
            client._cancel(call_id)
        return True


class _End:
    """The outcome of a stream, queued after its last delta."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class ChatStream:
    """The pieces of one streamed answer, as :meth:`Client.stream` returns
    it: iterate for :class:`Delta` objects; ``result`` holds the whole
    :class:`ChatResult` once the iteration ended. An error of the request
    is raised by the iteration. ``close()`` (or leaving a ``with`` block)
    before the end cancels the request in the daemon.

    Pieces arrive on a library thread and wait in a queue for the
    iterating thread; no thread of the package waits meanwhile.
    """

    def __init__(self, client: "_ClientBase", system: Optional[str], messages: Messages,
                 opts: Dict[str, Any], tms: int) -> None:
        self._client = client
        self._q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._done = False
        self.result: Optional[ChatResult] = None
        #: The error the request ended with, if it failed.
        self.error: Optional[Error] = None
        put = self._q.put

        def take(d: Delta) -> bool:  # on a library thread
            put(d)
            return False  # go on

        self._call_id = client._start(system, messages, opts, tms, lambda v: put(_End(v)), take)
        # A stream dropped before its end is cancelled.
        self._finalizer = weakref.finalize(self, client._cancel, self._call_id)

    def __iter__(self) -> "ChatStream":
        return self

    def __next__(self) -> Delta:
        if self._done:
            raise StopIteration
        _no_blocking_in_callback("iterating a stream")
        item = self._q.get()
        if item.__class__ is not _End:
            return item  # type: ignore[no-any-return]
        self._finish(item.value)
        if self.error is not None:
            raise self.error
        raise StopIteration

    def _finish(self, value: Any) -> None:
        self._done = True
        self._finalizer.detach()
        if isinstance(value, Error):
            self.error = value
        else:
            self.result = value

    @property
    def call_id(self) -> int:
        """The library's id of this call."""
        return self._call_id

    @property
    def done(self) -> bool:
        """True once the outcome arrived (by iterating to the end)."""
        return self._done

    def text(self) -> Iterator[str]:
        """The answer's text pieces only (content deltas)."""
        for d in self:
            if d.kind == "content":
                yield d.text

    def close(self) -> None:
        """Cancels the request if it has not ended (the daemon frees its
        queue place or slot); pieces not read yet are dropped."""
        if self._done:
            return
        self._client._cancel(self._call_id)
        self._finalizer.detach()
        # Its outcome (Canceled) comes soon; wait for it so nothing of this
        # call is left behind.
        while True:
            item = self._q.get()
            if item.__class__ is _End:
                self._finish(item.value)
                return

    def __enter__(self) -> "ChatStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _no_blocking_in_callback(what: str) -> None:
    if in_callback():
        raise RuntimeError(
            f"{what} blocks, and this is a library thread running a completion "
            "(a done-callback of a future): hand the work to your own thread"
        )


def _batch_error(e: BaseException) -> Error:
    if isinstance(e, Error):
        return e
    return InvalidRequest(str(e))


def finish_batch(results: List[Any], raise_errors: bool) -> List[Any]:
    """Marks every error with its index; raises the first if asked."""
    first = None
    for i, r in enumerate(results):
        if isinstance(r, Error):
            r.index = i
            if first is None:
                first = r
    if raise_errors and first is not None:
        raise first
    return results


def prepare_batch_item(item: Any, where: str) -> Request:
    """A Request from a batch item; errors become InvalidRequest."""
    r = Request.coerce(item)
    opts, t = split_options(r.options, where)
    if t is not None:
        raise InvalidRequest(
            "a batch item cannot have its own timeout: pass timeout= to batch_chat",
            field="timeout",
        )
    return Request(r.system, r.messages, **opts)


class Client(_ClientBase):
    """A blocking client of the lmsched daemon.

    ``url`` is the daemon's (default: ``$LMSCHED_URL``, else the per-user
    socket). Keyword arguments: ``timeout`` (seconds, the default of every
    call; default ten minutes), ``connect_timeout`` (seconds a request waits
    for the daemon to be reachable, default 2), ``auth_token`` (for a daemon
    started with ``--auth-token-file``; default ``$LMSCHED_AUTH_TOKEN``),
    ``library`` (the liblmsched-agent file), and any request option
    (``agent="planner"``, ``max_tokens=512`` ...) as a default for every
    request.

    Opening never fails because the daemon is down: requests wait for it up
    to ``connect_timeout``, then raise :class:`NoDaemon`. One client may be
    shared by any number of threads. Use it as a context manager, or call
    :meth:`close`; a client that is garbage-collected is closed then.
    """

    def chat(self, system: Optional[str], messages: Messages, **options: Any) -> ChatResult:
        """Sends one chat request and waits for the reply.

        ``system`` is the system prompt, the shared prefix sent byte for
        byte (``None``: none, or the first message when it has role
        ``"system"``). ``messages`` is the conversation in the OpenAI shape,
        ``[{"role": "user", "content": "..."}, ...]``, or one string (a user
        message). Options: ``max_tokens``, ``temperature``, ``top_p``,
        ``stop``, ``seed``, ``model``, ``priority`` (0-9, default 5),
        ``deadline`` (seconds by which it must have started), ``agent``,
        ``client_id``, ``timeout`` (seconds to wait).

        Returns a :class:`ChatResult`; raises the :class:`Error` subclass of
        the failure (:class:`Busy`, :class:`DeadlineExceeded`,
        :class:`BackendDown`, :class:`Timeout` ...).
        """
        _no_blocking_in_callback("chat()")
        opts, t = split_options(options)
        n = self._n
        tms = self._timeout_ms if t is None else timeout_ms(t)
        req, key = acquire(n, system, messages, self._merge(opts) if self._defaults else opts)
        box = ctypes.c_void_p()
        h = self._h
        try:
            ptr = h.enter()
            try:
                rc = n.chat(ptr, req, tms, ctypes.byref(box))
            finally:
                h.leave()
        finally:
            release(n, req, key)
        res = box.value
        if res is None:
            raise n.error(rc)
        value = read_result(n, res)
        if isinstance(value, Error):
            raise value
        return value

    def submit(
        self, system: Optional[str], messages: Messages, **options: Any
    ) -> "concurrent.futures.Future[ChatResult]":
        """Starts a chat request and returns at once with a
        ``concurrent.futures.Future`` of its :class:`ChatResult` (or its
        exception). Arguments as :meth:`chat`. No thread waits meanwhile:
        the outcome is set from a library thread, which also runs the
        future's done-callbacks; keep those short and do not call blocking
        methods in them.
        """
        opts, t = split_options(options, "submit()")
        fut = _CallFuture()

        def deliver(value: Union[ChatResult, Error]) -> None:
            if fut.cancelled():
                return
            try:
                if isinstance(value, Error):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
            except concurrent.futures.InvalidStateError:  # cancelled meanwhile
                pass

        call_id = self._start(system, messages, opts, self._call_timeout(t), deliver)
        if call_id:
            fut._bind(self, call_id)
        else:
            fut.set_running_or_notify_cancel()  # cannot be cancelled
        return fut

    def stream(
        self, system: Optional[str], messages: Messages, **options: Any
    ) -> "ChatStream":
        """Sends a chat request whose answer is streamed: returns a
        :class:`ChatStream`, an iterator of :class:`Delta` pieces as the model
        produces them; once it is exhausted, its ``result`` is the whole
        :class:`ChatResult` (usage, timings ...). Arguments as :meth:`chat`;
        ``timeout`` bounds the whole stream.

        Closing the stream before its end (``close()``, leaving a ``with``
        block, or dropping it) cancels the request in the daemon, which frees
        its place in the queue or its slot on the server::

            with client.stream(system, messages) as s:
                for d in s:
                    print(d.text, end="", flush=True)
            print(s.result.usage)
        """
        _need_streaming(self._n, "stream()")
        opts, t = split_options(options, "stream()")
        return ChatStream(self, system, messages, opts, self._call_timeout(t))

    def batch_chat(
        self,
        requests: Iterable[BatchItem],
        *,
        raise_errors: bool = False,
        timeout: Optional[float] = None,
        **defaults: Any,
    ) -> List[Union[ChatResult, Error]]:
        """Sends every request at once and waits for all of them.

        Each item is a :class:`Request`, a dict ``{"system": ...,
        "messages": ..., **options}`` or a tuple ``(system, messages[,
        options])``; ``defaults`` apply to every item that does not set the
        option itself. Returns one entry per item, in input order: its
        :class:`ChatResult`, or the :class:`Error` it failed with (its
        ``index`` set), never a missing one. With ``raise_errors=True`` the
        first failure (in input order) is raised instead, once every request
        has finished. ``timeout`` bounds the wait for each request.

        One client keeps at most the daemon's ``--max-per-conn`` requests
        (default 256) outstanding; items past that fail with :class:`Busy`.
        """
        _no_blocking_in_callback("batch_chat()")
        n = self._n
        req_defaults, t = split_options(defaults, "batch_chat()")
        if t is not None:  # pragma: no cover - timeout is a named parameter
            raise TypeError("timeout")
        base = self._merge(req_defaults)
        items = list(requests)
        results: List[Any] = [None] * len(items)
        built: List[int] = []
        keys: List[Any] = []
        where: List[int] = []
        try:
            for i, item in enumerate(items):
                try:
                    r = prepare_batch_item(item, "batch item")
                    opts = dict(base)
                    opts.update(r.options)
                    req, key = acquire(n, r.system, r.messages, opts)
                    built.append(req)
                    keys.append(key)
                    where.append(i)
                except (Error, TypeError, ValueError) as e:
                    results[i] = _batch_error(e)
            if built:
                m = len(built)
                reqs = (ctypes.c_void_p * m)(*built)
                outs = (ctypes.c_void_p * m)()
                ptr = self._h.enter()
                try:
                    rc = n.chat_batch(ptr, reqs, m, self._call_timeout(timeout), outs)
                finally:
                    self._h.leave()
                for j, i in enumerate(where):
                    res = outs[j]
                    results[i] = read_result(n, res) if res else n.error(rc)
        finally:
            for req, key in zip(built, keys):
                release(n, req, key)
        return finish_batch(results, raise_errors)

    def status(self, timeout: Optional[float] = STATUS_TIMEOUT) -> Dict[str, Any]:
        """The daemon's status document (docs/status.md), parsed: queue depth,
        requests in flight, counters, latencies, tokens. ``timeout`` in
        seconds (default 5)."""
        _no_blocking_in_callback("status()")
        return self._status(timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
