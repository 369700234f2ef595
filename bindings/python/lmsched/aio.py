"""The asyncio client, :class:`AsyncClient`.

Design notes
- A chat is ``lmsched_chat_async``: no thread waits for it. Its completion
  runs on one of nng's threads (the trampoline in ``_native``), which copies
  the result and hands it to the event loop with ``call_soon_threadsafe``;
  the loop sets the asyncio future. Nothing polls.
- The outcome goes to the loop that was running when the call started; a
  loop closed meanwhile just drops it.
- A task cancelled while its request is in flight stops waiting at once,
  and the request is cancelled in the daemon (``lmsched_cancel``): it leaves
  the queue, or its transfer to the LLM server is closed, which frees the
  slot. (With a library older than lmsched_cancel the request runs on and
  its result is dropped.)
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, AsyncIterator, Dict, Iterable, List, Optional, Union

from ._request import split_options
from .client import (
    STATUS_TIMEOUT,
    BatchItem,
    _batch_error,
    _ClientBase,
    _End,
    _need_streaming,
    finish_batch,
    prepare_batch_item,
)
from .errors import Error
from .types import ChatResult, Delta, Messages

__all__ = ["AsyncClient", "AsyncChatStream"]


def _settle(fut: "asyncio.Future[ChatResult]", value: Union[ChatResult, Error]) -> None:
    # On the loop's thread.
    if fut.done():  # cancelled meanwhile
        return
    if isinstance(value, Error):
        fut.set_exception(value)
    else:
        fut.set_result(value)


class AsyncChatStream:
    """The pieces of one streamed answer for asyncio, as
    :meth:`AsyncClient.stream` returns it: ``async for`` gives
    :class:`Delta` objects; ``result`` holds the whole :class:`ChatResult`
    once the iteration ended; an error of the request is raised by it.

    Pieces arrive on a library thread and are handed to the event loop with
    ``call_soon_threadsafe``. A task cancelled while it waits for the next
    piece, ``aclose()``, or leaving ``async with`` before the end cancels
    the request in the daemon.
    """

    def __init__(self, client: "AsyncClient", system: Optional[str], messages: Messages,
                 opts: Dict[str, Any], tms: int) -> None:
        loop = asyncio.get_running_loop()
        self._client = client
        self._q: asyncio.Queue[Any] = asyncio.Queue()
        self._done = False
        self.result: Optional[ChatResult] = None
        #: The error the request ended with, if it failed.
        self.error: Optional[Error] = None
        put = self._q.put_nowait

        def hand(item: Any) -> None:  # on a library thread
            try:
                loop.call_soon_threadsafe(put, item)
            except RuntimeError:  # the loop is closed
                pass

        def take(d: Delta) -> bool:
            hand(d)
            return False

        self._call_id = client._start(system, messages, opts, tms, lambda v: hand(_End(v)), take)
        self._finalizer = weakref.finalize(self, client._cancel, self._call_id)

    def __aiter__(self) -> "AsyncChatStream":
        return self

    async def __anext__(self) -> Delta:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._q.get()
        except asyncio.CancelledError:
            self._cancel()
            raise
        if item.__class__ is not _End:
            return item  # type: ignore[no-any-return]
        self._finish(item.value)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    def _finish(self, value: Any) -> None:
        self._done = True
        self._finalizer.detach()
        if isinstance(value, Error):
            self.error = value
        else:
            self.result = value

    def _cancel(self) -> None:
        if not self._done:
            self._client._cancel(self._call_id)

    @property
    def call_id(self) -> int:
        """The library's id of this call."""
        return self._call_id

    @property
    def done(self) -> bool:
        return self._done

    async def text(self) -> AsyncIterator[str]:
        """The answer's text pieces only (content deltas)."""
        async for d in self:
            if d.kind == "content":
                yield d.text

    async def aclose(self) -> None:
        """Cancels the request if it has not ended and waits for its
        outcome; pieces not read yet are dropped."""
        if self._done:
            return
        self._cancel()
        while True:
            item = await self._q.get()
            if item.__class__ is _End:
                self._finish(item.value)
                return

    async def __aenter__(self) -> "AsyncChatStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class AsyncClient(_ClientBase):
    """An asyncio client of the lmsched daemon.

    Same constructor as :class:`Client` (``url``, ``timeout``,
    ``connect_timeout``, ``auth_token``, ``library``, default request
    options). One client serves any number of concurrent tasks, and any
    number of event loops. Use ``async with``, or call :meth:`aclose` (or
    :meth:`close`).
    """

    def _future(
        self, system: Optional[str], messages: Messages, opts: Dict[str, Any], tms: int
    ) -> "asyncio.Future[ChatResult]":
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ChatResult] = loop.create_future()

        def deliver(value: Union[ChatResult, Error]) -> None:
            # On a library thread.
            try:
                loop.call_soon_threadsafe(_settle, fut, value)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        call_id = self._start(system, messages, opts, tms, deliver)
        if call_id:
            # A cancelled wait (the task cancelled, a timeout around it)
            # cancels the request in the daemon too.
            cancel = self._cancel

            def on_done(f: "asyncio.Future[ChatResult]") -> None:
                if f.cancelled():
                    cancel(call_id)

            fut.add_done_callback(on_done)
        return fut

    async def chat(
        self, system: Optional[str], messages: Messages, **options: Any
    ) -> ChatResult:
        """Sends one chat request and returns its :class:`ChatResult`;
        arguments, options and exceptions as :meth:`Client.chat`."""
        opts, t = split_options(options)
        return await self._future(system, messages, opts, self._call_timeout(t))

    async def batch_chat(
        self,
        requests: Iterable[BatchItem],
        *,
        raise_errors: bool = False,
        timeout: Optional[float] = None,
        **defaults: Any,
    ) -> List[Union[ChatResult, Error]]:
        """Sends every request at once and waits for all of them: the
        ``asyncio.gather`` of the seed, with every outcome kept.

        Items and ``defaults`` as :meth:`Client.batch_chat`. Returns one
        entry per item in input order, a :class:`ChatResult` or the
        :class:`Error` it failed with (``index`` set); with
        ``raise_errors=True`` the first failure in input order is raised,
        once every request has finished.
        """
        req_defaults, _ = split_options(defaults, "batch_chat()")
        base = self._merge(req_defaults)
        tms = self._call_timeout(timeout)
        loop = asyncio.get_running_loop()
        futs: List[asyncio.Future[ChatResult]] = []
        for item in requests:
            try:
                r = prepare_batch_item(item, "batch item")
                opts = dict(base)
                opts.update(r.options)
                futs.append(self._future(r.system, r.messages, opts, tms))
            except (Error, TypeError, ValueError) as e:
                f: asyncio.Future[ChatResult] = loop.create_future()
                f.set_exception(_batch_error(e))
                futs.append(f)
        results = await asyncio.gather(*futs, return_exceptions=True)
        return finish_batch(list(results), raise_errors)

    def stream(
        self, system: Optional[str], messages: Messages, **options: Any
    ) -> "AsyncChatStream":
        """Sends a chat request whose answer is streamed: returns an
        :class:`AsyncChatStream`, an async iterator of :class:`Delta` pieces;
        once it is exhausted its ``result`` is the whole :class:`ChatResult`.
        Call it in a coroutine (the request starts at once, on the running
        loop). Arguments as :meth:`Client.chat`.

        Cancelling the task that iterates, ``aclose()``, or leaving an
        ``async with`` block before the end cancels the request in the
        daemon::

            async with client.stream(system, messages) as s:
                async for d in s:
                    print(d.text, end="", flush=True)
            print(s.result.usage)
        """
        _need_streaming(self._n, "stream()")
        opts, t = split_options(options, "stream()")
        return AsyncChatStream(self, system, messages, opts, self._call_timeout(t))

    async def status(self, timeout: Optional[float] = STATUS_TIMEOUT) -> Dict[str, Any]:
        """The daemon's status document, parsed (as :meth:`Client.status`).
        The library's status call blocks, so it runs in the loop's default
        executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._status, timeout)

    async def aclose(self) -> None:
        """Closes the client (as :meth:`Client.close`) without blocking the
        event loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.close)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __enter__(self) -> "AsyncClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
