"""liblmsched-agent through ctypes: finding and loading the library, the
prototype of every function used, the callback trampolines, and
copying a C result into Python objects.

Design notes
- The library is loaded once per process, on first use (a Client, or
  :func:`load_library`), not at import: ``import lmsched`` always works, so a
  program can name the library's path before using it, and the exceptions
  and types are usable without it. A library that cannot be found raises
  :class:`LibraryNotFoundError` (an ImportError) listing every place tried.
- Every function gets ``argtypes``/``restype``: without them ctypes passes a
  Python int as a C int and cuts 64-bit pointers. Handles are ``c_void_p``
  (plain ints on the Python side). ctypes releases the GIL around every
  call, so a blocking ``lmsched_chat`` lets other Python threads run, and
  the library's threads can take the GIL to run the trampoline meanwhile.
- Callbacks: two CFUNCTYPE objects for the whole process,
  :data:`CHAT_TRAMPOLINE` (a call's outcome) and :data:`DELTA_TRAMPOLINE` (a
  piece of a streamed answer), created at import and never freed, so the C
  side can never call into a freed trampoline, whatever happens to clients.
  The ``void *arg`` of each call is a token (an int) into :data:`pending`
  (and :data:`streams`), which map it to the Python functions that take the
  outcome and the pieces; nothing the C side holds refers to a Python
  object. The trampolines run on nng's threads: they copy what they are
  given, free the result, and hand the value on; they never block.
- Functions of newer libraries (tools, streaming, cancel) are looked up as
  optional: with an older 0.1 library they are None, and the options that
  need them say so.
- Strings returned by accessors are declared ``c_char_p`` (ctypes copies
  them into bytes at once); the status JSON and its message are ``c_void_p``
  because they must be given back to ``lmsched_free``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import json
import os
import shutil
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .errors import Error, LibraryNotFoundError, error_for_code
from .types import ChatResult, Delta, Timings, ToolCall, Usage

# The library version this package speaks: the same major.minor, like the
# CMake package (a 0.x library changes its API between minor versions).
API_VERSION = (0, 2)

OK = 0

c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p
c_int = ctypes.c_int

if sys.platform == "darwin":
    _NAMES = ("liblmsched-agent.0.dylib", "liblmsched-agent.dylib")
elif sys.platform == "win32":  # pragma: no cover - lmsched does not build there
    _NAMES = ("lmsched-agent.dll",)
else:
    _NAMES = ("liblmsched-agent.so.0", "liblmsched-agent.so")

#: The completion callback type: ``void cb(lmsched_result *res, void *arg)``.
CHAT_CB = ctypes.CFUNCTYPE(None, c_void_p, c_void_p)
#: The delta callback type: ``int cb(int kind, const char *text, int index,
#: const char *id, const char *name, void *arg)``.
DELTA_CB = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_int, c_char_p, c_char_p, c_void_p)

#: lmsched_delta_kind -> Delta.kind
DELTA_KINDS = {1: "content", 2: "reasoning", 3: "tool_call"}


class Native:
    """The loaded library with every function declared, as attributes named
    without the ``lmsched_`` prefix (``n.chat`` is ``lmsched_chat``)."""

    def __init__(self, cdll: ctypes.CDLL, path: str) -> None:
        self.cdll = cdll
        self.path = path
        missing: List[str] = []

        def fn(name: str, restype: Any, *argtypes: Any, optional: bool = False) -> Any:
            try:
                f = getattr(cdll, "lmsched_" + name)
            except AttributeError:
                if not optional:
                    missing.append("lmsched_" + name)
                return None
            f.restype = restype
            f.argtypes = argtypes
            return f

        P = c_void_p
        Pp = ctypes.POINTER(c_void_p)
        self.version = fn("version", c_char_p)
        self.strerror = fn("strerror", c_char_p, c_int)
        self.err_name = fn("err_name", c_char_p, c_int)
        self.default_url = fn("default_url", c_int, c_char_p, ctypes.c_size_t)
        self.client_open = fn("client_open", c_int, Pp, c_char_p)
        self.client_set_connect_timeout = fn("client_set_connect_timeout", c_int, P, c_int)
        self.client_set_auth = fn("client_set_auth", c_int, P, c_char_p)
        self.client_close = fn("client_close", None, P)
        self.request_alloc = fn("request_alloc", c_int, Pp)
        self.request_free = fn("request_free", None, P)
        self.request_set_system = fn("request_set_system", c_int, P, c_char_p)
        self.request_add_message = fn("request_add_message", c_int, P, c_char_p, c_char_p)
        self.request_set_model = fn("request_set_model", c_int, P, c_char_p)
        self.request_set_max_tokens = fn("request_set_max_tokens", c_int, P, ctypes.c_int32)
        self.request_set_temperature = fn("request_set_temperature", c_int, P, ctypes.c_double)
        self.request_set_top_p = fn("request_set_top_p", c_int, P, ctypes.c_double)
        self.request_add_stop = fn("request_add_stop", c_int, P, c_char_p)
        self.request_set_seed = fn("request_set_seed", c_int, P, ctypes.c_int64)
        self.request_set_priority = fn("request_set_priority", c_int, P, c_int)
        self.request_set_deadline_ms = fn("request_set_deadline_ms", c_int, P, ctypes.c_uint32)
        self.request_set_agent = fn("request_set_agent", c_int, P, c_char_p)
        self.request_set_client_id = fn("request_set_client_id", c_int, P, c_char_p)
        self.result_free = fn("result_free", None, P)
        self.result_error = fn("result_error", c_int, P)
        self.result_message = fn("result_message", c_char_p, P)
        self.result_content = fn("result_content", c_char_p, P)
        self.result_finish_reason = fn("result_finish_reason", c_char_p, P)
        self.result_model = fn("result_model", c_char_p, P)
        self.result_prompt_tokens = fn("result_prompt_tokens", ctypes.c_int64, P)
        self.result_completion_tokens = fn("result_completion_tokens", ctypes.c_int64, P)
        self.result_cached_tokens = fn("result_cached_tokens", ctypes.c_int64, P)
        self.result_queue_ms = fn("result_queue_ms", ctypes.c_double, P)
        self.result_ttft_ms = fn("result_ttft_ms", ctypes.c_double, P)
        self.result_total_ms = fn("result_total_ms", ctypes.c_double, P)
        self.result_retries = fn("result_retries", ctypes.c_uint32, P)
        self.chat = fn("chat", c_int, P, P, c_int, Pp)
        self.chat_async = fn("chat_async", c_int, P, P, c_int, CHAT_CB, P)
        self.chat_batch = fn("chat_batch", c_int, P, Pp, ctypes.c_size_t, c_int, Pp)
        self.status = fn("status", c_int, P, c_int, Pp, Pp)
        self.free = fn("free", None, P)

        # Newer libraries: tools, structured output, structured messages,
        # streaming and cancellation. Absent ones are None, and the package
        # says which option needs a newer library.
        o = {"optional": True}
        J = c_char_p
        self.request_last_error = fn("request_last_error", c_char_p, P, **o)
        self.request_set_tools = fn("request_set_tools", c_int, P, J, **o)
        self.request_set_tool_choice = fn("request_set_tool_choice", c_int, P, c_char_p, **o)
        self.request_set_tool_choice_function = fn(
            "request_set_tool_choice_function", c_int, P, c_char_p, **o)
        self.request_set_response_format = fn("request_set_response_format", c_int, P, J, **o)
        self.request_set_parallel_tool_calls = fn(
            "request_set_parallel_tool_calls", c_int, P, c_int, **o)
        self.request_set_extra = fn("request_set_extra", c_int, P, J, **o)
        self.request_add_message_json = fn("request_add_message_json", c_int, P, J, **o)
        self.request_clear_messages = fn("request_clear_messages", None, P, **o)
        self.result_error_field = fn("result_error_field", c_char_p, P, **o)
        self.result_reasoning = fn("result_reasoning", c_char_p, P, **o)
        self.result_tool_call_count = fn("result_tool_call_count", ctypes.c_size_t, P, **o)
        sz = ctypes.c_size_t
        self.result_tool_call_id = fn("result_tool_call_id", c_char_p, P, sz, **o)
        self.result_tool_call_type = fn("result_tool_call_type", c_char_p, P, sz, **o)
        self.result_tool_call_name = fn("result_tool_call_name", c_char_p, P, sz, **o)
        self.result_tool_call_arguments = fn("result_tool_call_arguments", c_char_p, P, sz, **o)
        self.result_logprobs_json = fn("result_logprobs_json", c_char_p, P, **o)
        self.chat_start = fn("chat_start", c_int, P, P, c_int, DELTA_CB, CHAT_CB, P,
                             ctypes.POINTER(ctypes.c_uint64), **o)
        self.cancel = fn("cancel", c_int, P, ctypes.c_uint64, **o)
        self.client_set_stream_idle_timeout = fn(
            "client_set_stream_idle_timeout", c_int, P, c_int, **o)
        #: Streaming and cancellation (lmsched_chat_start, lmsched_cancel).
        self.has_streaming = self.chat_start is not None and self.cancel is not None
        #: Tools, structured output and structured messages.
        self.has_tools = None not in (
            self.request_set_tools, self.request_set_tool_choice,
            self.request_set_response_format, self.request_set_extra,
            self.request_add_message_json, self.result_tool_call_count)
        if missing:
            raise ImportError(
                f"{path} is not a usable liblmsched-agent: it lacks {', '.join(missing)}"
            )
        self.version_text = self.version().decode("ascii", "replace")
        try:
            major, minor = (int(x) for x in self.version_text.split(".")[:2])
        except ValueError:
            raise ImportError(f"{path}: unexpected lmsched_version() {self.version_text!r}")
        if (major, minor) != API_VERSION:
            raise ImportError(
                f"{path} is liblmsched-agent {self.version_text}; this lmsched package "
                f"needs {API_VERSION[0]}.{API_VERSION[1]}.x"
            )

    def error(self, code: int, message: Optional[bytes] = None) -> Error:
        """The exception for code, with message (or the library's text)."""
        if message is None:
            text = self.strerror(code).decode("utf-8", "replace")
        else:
            text = message.decode("utf-8", "replace")
        return error_for_code(code, text)


_load_lock = threading.Lock()
_native: Optional[Native] = None


def _candidates(path: Optional[str]) -> List[Tuple[str, str]]:
    """Where to look, in order, as (what, path-or-soname) pairs."""

    def in_dir(d: str, why: str) -> List[Tuple[str, str]]:
        return [(why, os.path.join(d, n)) for n in _NAMES]

    def given(p: str, why: str) -> List[Tuple[str, str]]:
        return in_dir(p, why) if os.path.isdir(p) else [(why, p)]

    if path is not None:
        return given(os.fspath(path), "the path given")
    env = os.environ.get("LMSCHED_LIB")
    if env:
        return given(env, "$LMSCHED_LIB")
    out: List[Tuple[str, str]] = []
    # `cmake --install build --prefix P` puts P/bin/lmsched beside P/lib.
    exe = shutil.which("lmsched")
    if exe is not None:
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(exe)))
        for lib in ("lib", "lib64"):
            out += in_dir(os.path.join(prefix, lib), "beside `lmsched` on PATH")
    # A virtual environment or prefix the package itself was installed into.
    out += in_dir(os.path.join(sys.prefix, "lib"), "sys.prefix")
    # The dynamic linker's own search: LD_LIBRARY_PATH, rpath, ld.so.cache.
    out += [("the dynamic linker's search path", n) for n in _NAMES[:1]]
    for d in ("/usr/local/lib", "/opt/homebrew/lib"):
        out += in_dir(d, "a default prefix")
    found = ctypes.util.find_library("lmsched-agent")
    if found is not None:
        out.append(("ctypes.util.find_library", found))
    seen = set()
    return [c for c in out if not (c[1] in seen or seen.add(c[1]))]  # type: ignore[func-returns-value]


def load_library(path: Union[str, "os.PathLike[str]", None] = None) -> Native:
    """Loads liblmsched-agent, once per process, and returns it.

    Where it looks, first match wins: ``path`` when given (a file, or a
    directory holding the library); else ``$LMSCHED_LIB`` (the same); else
    the installed library: beside the ``lmsched`` command on ``PATH``
    (``P/bin/lmsched`` and ``P/lib``), ``sys.prefix/lib``, the dynamic
    linker's search (``LD_LIBRARY_PATH``, ``ldconfig``), ``/usr/local/lib``,
    ``ctypes.util.find_library``.

    Raises :class:`LibraryNotFoundError` (an ImportError) naming every place
    tried and why each failed (missing, not loadable, not liblmsched-agent,
    another version), and RuntimeError when a different library is already
    loaded.
    """
    global _native
    with _load_lock:
        if _native is not None:
            if path is not None:
                loaded = os.path.realpath(_native.path)
                wanted = [os.path.realpath(c) for _, c in _candidates(os.fspath(path))]
                if loaded not in wanted:
                    raise RuntimeError(
                        f"liblmsched-agent is already loaded from {_native.path}; "
                        f"a process uses one library (asked for {os.fspath(path)})"
                    )
            return _native
        tried: List[str] = []
        for why, cand in _candidates(None if path is None else os.fspath(path)):
            is_path = os.sep in cand
            if is_path and not os.path.exists(cand):
                tried.append(f"{cand} ({why}): no such file")
                continue
            try:
                cdll = ctypes.CDLL(cand)
            except OSError as e:
                tried.append(f"{cand} ({why}): {e}")
                continue
            where = cand
            if not is_path:
                where = _loaded_path(cdll) or cand
            try:
                _native = Native(cdll, where)
            except ImportError as e:  # not ours, or another version
                tried.append(f"{cand} ({why}): {e}")
                continue
            return _native
        raise LibraryNotFoundError(
            "cannot load liblmsched-agent, the lmsched agent library. Tried:\n  "
            + "\n  ".join(tried)
            + "\nSet LMSCHED_LIB to the library file (build/lib/liblmsched-agent.so after "
            "building lmsched), call lmsched.load_library(path), or install lmsched "
            "(cmake --install build --prefix P) with P/bin on PATH.",
            tried,
        )


def _loaded_path(cdll: ctypes.CDLL) -> Optional[str]:
    """The file the dynamic linker picked for a library loaded by name."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "liblmsched-agent" in line:
                    return line.split(None, 5)[-1].strip()
    except OSError:
        pass
    return None


def native() -> Native:
    """The loaded library, loading it the default way on first use."""
    n = _native
    return n if n is not None else load_library()


# ---- completions ------------------------------------------------------------

#: token -> function taking the outcome (a ChatResult or an Error); filled by
#: whoever starts an asynchronous call, emptied by the trampoline.
pending: Dict[int, Callable[[Union[ChatResult, Error]], None]] = {}
_tokens = itertools.count(1)


class _CallbackState(threading.local):
    active = False  # a class default: reading it raises nothing on new threads


_callback_thread = _CallbackState()


def new_token() -> int:
    return next(_tokens)


def in_callback() -> bool:
    """True on a library thread running a completion (a trampoline, or a
    done-callback it triggered): blocking calls and close must not run
    there."""
    return _callback_thread.active


def read_result(n: Native, res: int) -> Union[ChatResult, Error]:
    """Copies a C result into a ChatResult, or the Error it carries, and
    frees it."""
    try:
        code = n.result_error(res)
        if code != OK:
            err = n.error(code, n.result_message(res))
            if n.result_error_field is not None:
                field = n.result_error_field(res)
                if field is not None:
                    err.field = field.decode("utf-8", "replace")
            return err
        content = n.result_content(res)
        finish = n.result_finish_reason(res)
        model = n.result_model(res)
        prompt = n.result_prompt_tokens(res)
        completion = n.result_completion_tokens(res)
        cached = n.result_cached_tokens(res)
        queue = n.result_queue_ms(res)
        ttft = n.result_ttft_ms(res)
        total = n.result_total_ms(res)
        return ChatResult(
            content.decode("utf-8", "replace") if content is not None else "",
            finish.decode("utf-8", "replace") if finish is not None else None,
            model.decode("utf-8", "replace") if model is not None else None,
            Usage(
                prompt if prompt >= 0 else None,
                completion if completion >= 0 else None,
                cached if cached >= 0 else None,
            ),
            Timings(
                queue if queue >= 0 else None,
                ttft if ttft >= 0 else None,
                total if total >= 0 else None,
            ),
            n.result_retries(res),
            _tool_calls(n, res) if n.result_tool_call_count is not None else None,
            _text_or_none(n.result_reasoning(res)) if n.result_reasoning is not None else None,
            _logprobs(n, res) if n.result_logprobs_json is not None else None,
        )
    finally:
        n.result_free(res)


def _text_or_none(b: Optional[bytes]) -> Optional[str]:
    return None if b is None else b.decode("utf-8", "replace")


def _tool_calls(n: Native, res: int) -> Optional[List[ToolCall]]:
    count = n.result_tool_call_count(res)
    if count == 0:
        return None
    calls = []
    for i in range(count):
        calls.append(ToolCall(
            _text_or_none(n.result_tool_call_id(res, i)) or "",
            _text_or_none(n.result_tool_call_name(res, i)) or "",
            _text_or_none(n.result_tool_call_arguments(res, i)) or "",
            _text_or_none(n.result_tool_call_type(res, i)) or "function",
        ))
    return calls


def _logprobs(n: Native, res: int) -> Any:
    text = n.result_logprobs_json(res)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:  # pragma: no cover - the library checked it
        return None


def _on_chat_done(res: Optional[int], arg: Optional[int]) -> None:
    # On an nng thread, holding the GIL. Exceptions here would only be
    # printed by ctypes, so nothing may escape, and res is freed whatever
    # happens.
    _callback_thread.active = True
    try:
        deliver = pending.pop(arg or 0, None)
        streams.pop(arg or 0, None)
        n = _native
        if n is None or res is None:  # cannot happen: a call needs the library
            return
        try:
            value = read_result(n, res)
        except BaseException as e:  # pragma: no cover - out of memory and the like
            value = Error(f"cannot read the result: {e!r}", code=17)
        if deliver is not None:
            try:
                deliver(value)
            except BaseException:  # pragma: no cover - a deliverer never raises
                pass
    finally:
        _callback_thread.active = False


#: The one trampoline every asynchronous call uses (never freed).
CHAT_TRAMPOLINE = CHAT_CB(_on_chat_done)

#: token -> function taking a Delta and returning True to cancel the call;
#: filled by whoever starts a stream, emptied when its outcome arrives.
streams: Dict[int, Callable[[Delta], bool]] = {}


def _on_delta(kind: int, text: Optional[bytes], index: int, id: Optional[bytes],
              name: Optional[bytes], arg: Optional[int]) -> int:
    # On a library thread, never twice at once for one call; returning
    # non-zero cancels the call.
    _callback_thread.active = True
    try:
        take = streams.get(arg or 0)
        if take is None:
            return 0
        d = Delta(
            DELTA_KINDS.get(kind, "unknown"),
            text.decode("utf-8", "replace") if text is not None else "",
            index,
            id.decode("utf-8", "replace") if id is not None else None,
            name.decode("utf-8", "replace") if name is not None else None,
        )
        return 1 if take(d) else 0
    except BaseException:  # pragma: no cover - a taker never raises
        return 0
    finally:
        _callback_thread.active = False


#: The one delta trampoline every stream uses (never freed).
DELTA_TRAMPOLINE = DELTA_CB(_on_delta)
#: A NULL delta callback (a call whose answer comes whole).
NO_DELTA = DELTA_CB(0)
