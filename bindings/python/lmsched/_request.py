"""Building an ``lmsched_request`` from ``chat``'s arguments: the system
prompt, the messages in the OpenAI shape, and the options.

Arguments are checked here, before anything is sent, so a mistake raises
:class:`InvalidRequest` naming the argument (``field``) on the caller's
line instead of coming back from the daemon; the daemon still checks the
limits it owns (sizes, UTF-8) and answers with its own error.

Calls take their request with :func:`acquire` and give it back with
:func:`release` once the library has copied it: a request of a system prompt
and options seen before comes from a small pool, its messages replaced,
which is most of what makes a Python chat cheap (docs/python.md, Figures).
"""

from __future__ import annotations

import ctypes
import json
import math
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ._native import OK, Native
from .errors import InvalidRequest
from .types import Messages

#: Options of one request, with what each means; ``chat`` takes them as
#: keyword arguments, ``Client(...)`` as defaults.
REQUEST_OPTIONS: Dict[str, str] = {
    "model": "the model to ask for (default: whatever the server has loaded)",
    "max_tokens": "limit the reply to this many tokens, 1 to 1048576",
    "temperature": "sampling temperature, 0 to 10",
    "top_p": "nucleus sampling, 0 to 1",
    "stop": "a stop string, or a list of at most 16",
    "seed": "sampling seed, a 64-bit integer",
    "priority": "0 (lowest) to 9 (highest), default 5",
    "deadline": "seconds from the daemon receiving the request by which it must have "
    "started, else DeadlineExceeded",
    "agent": "the agent's name, shown in the daemon's logs",
    "client_id": "an id of this request for the daemon's logs",
    "tools": "tool definitions in OpenAI's shape: a list of "
    "{'type': 'function', 'function': {'name', 'description', 'parameters'}}",
    "tool_choice": "'auto', 'none', 'required', a function's name, or "
    "{'type': 'function', 'function': {'name': ...}}",
    "response_format": "structured output: {'type': 'json_object'} or "
    "{'type': 'json_schema', 'json_schema': {'name', 'schema', 'strict'}}",
    "parallel_tool_calls": "True or False (default: the server's)",
    "extra": "more fields of the LLM server's request body, a dict "
    "({'top_k': 40, 'min_p': 0.05, 'logprobs': True} ...)",
}
#: Options of the call itself rather than of the request.
CALL_OPTIONS: Dict[str, str] = {
    "timeout": "seconds to wait for the outcome (default: ten minutes), else Timeout",
}

MAX_TOKENS_MAX = 1048576
_MSG_KEYS = frozenset(("role", "content"))


def split_options(
    options: Mapping[str, Any], where: str = "chat()"
) -> Tuple[Dict[str, Any], Optional[float]]:
    """(request options, timeout); TypeError for an unknown name, as a
    Python function would raise for an unknown keyword argument."""
    req: Dict[str, Any] = {}
    timeout = None
    for k, v in options.items():
        if k in REQUEST_OPTIONS:
            req[k] = v
        elif k == "timeout":
            timeout = v
        else:
            raise TypeError(
                f"{where} got an unexpected option {k!r} (options: "
                + ", ".join(sorted(list(REQUEST_OPTIONS) + list(CALL_OPTIONS)))
                + ")"
            )
    return req, timeout


def timeout_ms(timeout: Optional[float]) -> int:
    """A timeout in seconds as the library's milliseconds (0: its default)."""
    if timeout is None:
        return 0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
        timeout > 0 and math.isfinite(timeout)
    ):
        raise InvalidRequest(
            f"timeout must be a positive number of seconds, got {timeout!r}", field="timeout"
        )
    ms = int(math.ceil(timeout * 1000))
    return min(ms, 2**31 - 1)


def _text(value: Any, field: str) -> bytes:
    if value.__class__ is not str and not isinstance(value, str):
        raise InvalidRequest(
            f"{field} must be a string, got {type(value).__name__}", field=field
        )
    try:
        b: bytes = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(f"{field} is not valid Unicode text: {e.reason}", field=field)
    if b"\0" in b:
        raise InvalidRequest(f"{field} contains a NUL character", field=field)
    return b


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"{field} must be an integer, got {type(value).__name__}", field=field
        )
    if not lo <= value <= hi:
        raise InvalidRequest(f"{field} {value} is out of range {lo}..{hi}", field=field)
    return value


def _float(value: Any, field: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{field} must be a number, got {type(value).__name__}", field=field)
    if not lo <= value <= hi:  # also false for NaN
        raise InvalidRequest(f"{field} {value} is out of range {lo:g}..{hi:g}", field=field)
    return float(value)


def check_request_options(opts: Mapping[str, Any]) -> None:
    """Checks option values without building anything (for defaults given
    to a client)."""
    n = _Checker()
    req = 1
    for k, v in opts.items():
        _set_option(n, req, k, v)  # type: ignore[arg-type]


class _Checker:
    """A stand-in for Native whose setters accept everything."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a: OK


def _check(rc: int, n: Native, field: str, req: Any = None) -> None:
    """Raises the error of a setter that returned rc, with the library's
    reason when it gives one ("tools[0].function.name: missing ...")."""
    if rc == OK:
        return
    why = None
    if req is not None and n.request_last_error is not None and not isinstance(n, _Checker):
        why = n.request_last_error(req)
    if why:
        text = why.decode("utf-8", "replace")
        err = n.error(rc, text.encode())
        head = text.split(": ", 1)[0]
        err.field = head if head.split("[")[0].split(".")[0] == field.split("[")[0] else field
    else:
        err = n.error(rc, f"{field}: {n.strerror(rc).decode()}".encode())
        err.field = field
    raise err


def _need(n: Native, fn: Any, field: str) -> Any:
    if fn is None:
        raise InvalidRequest(
            f"{field} needs a newer liblmsched-agent than {n.version_text} at {n.path}",
            field=field,
        )
    return fn


def _json_text(v: Any, field: str) -> bytes:
    try:
        text = json.dumps(v, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"{field} cannot be sent as JSON: {e}", field=field)
    return _text(text, field)


def _json_default(o: Any) -> Any:
    to_dict = getattr(o, "to_dict", None)
    if to_dict is None:
        raise TypeError(f"{type(o).__name__} is not JSON serializable")
    return to_dict()


def _opt_model(n: Native, req: int, v: Any) -> int:
    return int(n.request_set_model(req, _text(v, "model")))


def _opt_max_tokens(n: Native, req: int, v: Any) -> int:
    return int(n.request_set_max_tokens(req, _int(v, "max_tokens", 1, MAX_TOKENS_MAX)))


def _opt_temperature(n: Native, req: int, v: Any) -> int:
    return int(n.request_set_temperature(req, _float(v, "temperature", 0.0, 10.0)))


def _opt_top_p(n: Native, req: int, v: Any) -> int:
    return int(n.request_set_top_p(req, _float(v, "top_p", 0.0, 1.0)))


def _opt_stop(n: Native, req: int, v: Any) -> int:
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, (list, tuple)):
        raise InvalidRequest("stop must be a string or a list of strings", field="stop")
    if len(stops) > 16:
        raise InvalidRequest(f"stop has {len(stops)} entries, at most 16", field="stop")
    rc = OK
    for i, s in enumerate(stops):
        rc = int(n.request_add_stop(req, _text(s, f"stop[{i}]")))
        if rc != OK:
            break
    return rc


def _opt_seed(n: Native, req: int, v: Any) -> int:
    return int(n.request_set_seed(req, _int(v, "seed", -(2**63), 2**63 - 1)))


def _opt_priority(n: Native, req: int, v: Any) -> int:
    return int(n.request_set_priority(req, _int(v, "priority", 0, 9)))


def _opt_deadline(n: Native, req: int, v: Any) -> int:
    secs = _float(v, "deadline", 0.0, (2**32 - 1) / 1000.0)
    ms = int(math.ceil(secs * 1000))
    if ms <= 0:
        raise InvalidRequest("deadline must be above 0 seconds", field="deadline")
    return int(n.request_set_deadline_ms(req, ms))


def _opt_agent(n: Native, req: int, v: Any) -> int:
    return int(n.request_set_agent(req, _text(v, "agent")))


def _opt_client_id(n: Native, req: int, v: Any) -> int:
    return int(n.request_set_client_id(req, _text(v, "client_id")))


def _opt_tools(n: Native, req: int, v: Any) -> int:
    f = _need(n, n.request_set_tools, "tools")
    if not isinstance(v, (list, tuple)):
        raise InvalidRequest("tools must be a list of tool definitions", field="tools")
    return int(f(req, _json_text(list(v), "tools")))


def _opt_tool_choice(n: Native, req: int, v: Any) -> int:
    if isinstance(v, str):
        if v in ("auto", "none", "required"):
            return int(_need(n, n.request_set_tool_choice, "tool_choice")(req, v.encode()))
        f = _need(n, n.request_set_tool_choice_function, "tool_choice")
        return int(f(req, _text(v, "tool_choice")))
    if not isinstance(v, Mapping):
        raise InvalidRequest("tool_choice must be a string or a dict", field="tool_choice")
    f = _need(n, n.request_set_tool_choice, "tool_choice")
    return int(f(req, _json_text(dict(v), "tool_choice")))


def _opt_response_format(n: Native, req: int, v: Any) -> int:
    f = _need(n, n.request_set_response_format, "response_format")
    if not isinstance(v, Mapping):
        raise InvalidRequest("response_format must be a dict", field="response_format")
    return int(f(req, _json_text(dict(v), "response_format")))


def _opt_parallel_tool_calls(n: Native, req: int, v: Any) -> int:
    f = _need(n, n.request_set_parallel_tool_calls, "parallel_tool_calls")
    if not isinstance(v, bool):
        raise InvalidRequest("parallel_tool_calls must be True or False",
                             field="parallel_tool_calls")
    return int(f(req, 1 if v else 0))


def _opt_extra(n: Native, req: int, v: Any) -> int:
    f = _need(n, n.request_set_extra, "extra")
    if not isinstance(v, Mapping):
        raise InvalidRequest("extra must be a dict of body fields", field="extra")
    return int(f(req, _json_text(dict(v), "extra")))


_SETTERS: Dict[str, Any] = {
    "model": _opt_model,
    "max_tokens": _opt_max_tokens,
    "temperature": _opt_temperature,
    "top_p": _opt_top_p,
    "stop": _opt_stop,
    "seed": _opt_seed,
    "priority": _opt_priority,
    "deadline": _opt_deadline,
    "agent": _opt_agent,
    "client_id": _opt_client_id,
    "tools": _opt_tools,
    "tool_choice": _opt_tool_choice,
    "response_format": _opt_response_format,
    "parallel_tool_calls": _opt_parallel_tool_calls,
    "extra": _opt_extra,
}


def _set_option(n: Native, req: int, k: str, v: Any) -> None:
    if v is None:
        return  # None means "not set", so a default can be passed through
    setter = _SETTERS.get(k)
    if setter is None:  # split_options let only known names through
        raise TypeError(f"unknown option {k!r}")
    rc = setter(n, req, v)
    if rc != OK:
        _check(rc, n, k, req)


def _add_message(n: Native, req: int, i: int, m: Any) -> None:
    if m.__class__ is dict and len(m) == 2:
        # The common case: {"role": str, "content": str}.
        role = m.get("role")
        content = m.get("content")
        if role.__class__ is str and content.__class__ is str:
            rb = role.encode("utf-8")
            cb = content.encode("utf-8")
            if b"\0" not in rb and b"\0" not in cb:
                rc = n.request_add_message(req, rb, cb)
                if rc != OK:
                    _check(rc, n, f"messages[{i}]")
                return
    field = f"messages[{i}]"
    if not isinstance(m, Mapping):
        raise InvalidRequest(
            f"{field} must be a dict with 'role' and 'content', got {type(m).__name__}",
            field=field,
        )
    if "role" not in m:
        raise InvalidRequest(f"{field} has no 'role'", field=f"{field}.role")
    role = _text(m["role"], f"{field}.role")
    content = m.get("content")
    extra = [k for k in m if k not in _MSG_KEYS and m[k] is not None]
    if not extra and (content is None or isinstance(content, str)):
        body = b"" if content is None else _text(content, f"{field}.content")
        _check(n.request_add_message(req, role, body), n, field)
        return
    # Tool calls, a tool's result, content parts: the message as JSON.
    if n.request_add_message_json is None:
        what = f"{field}.{extra[0]}" if extra else f"{field}.content"
        raise InvalidRequest(
            f"{what}: this liblmsched-agent ({n.version_text}) sends only a string 'content'; "
            "tool calls and content parts need a newer one",
            field=what,
        )
    msg = {k: v for k, v in m.items() if v is not None or k == "content"}
    rc = n.request_add_message_json(req, _json_text(msg, field))
    if rc != OK:
        _check(rc, n, field, req)


_SYSTEM_CACHE: Dict[str, bytes] = {}


def _system_bytes(system: str) -> bytes:
    """The system prompt encoded and checked, remembered: agents send the
    same few prompts over and over (up to 64 prompts of up to 64 KiB; the
    cache is emptied when full)."""
    b = _SYSTEM_CACHE.get(system)
    if b is None:
        b = _text(system, "system")
        if len(b) > 65536:
            return b
        if len(_SYSTEM_CACHE) >= 64:
            _SYSTEM_CACHE.clear()
        _SYSTEM_CACHE[system] = b
    return b


def _normalize(
    system: Optional[str], messages: Messages
) -> Tuple[Optional[str], Sequence[Any], int]:
    """(system prompt, messages, index of the first message to send)."""
    if messages.__class__ is list or messages.__class__ is tuple:
        msgs: Sequence[Any] = messages
    elif isinstance(messages, str):
        msgs = ({"role": "user", "content": messages},)
    elif isinstance(messages, Mapping) or not isinstance(messages, Sequence):
        raise InvalidRequest(
            "messages must be a list of {'role': ..., 'content': ...} dicts or a string",
            field="messages",
        )
    else:
        msgs = messages
    first = 0
    if system is None and msgs and isinstance(msgs[0], Mapping) and msgs[0].get("role") == "system":
        # An OpenAI-shaped conversation that starts with its system message:
        # that message is the shared prefix.
        system = msgs[0].get("content")
        first = 1
    if len(msgs) <= first:
        raise InvalidRequest("a request needs at least one message", field="messages")
    return system, msgs, first


def _build(n: Native, system: Optional[str], msgs: Sequence[Any], first: int,
           opts: Mapping[str, Any]) -> int:
    if system is None:
        sys_b = b""
    elif system.__class__ is str:
        sys_b = _system_bytes(system)
    else:
        sys_b = _text(system, "system")
    box = ctypes.c_void_p()
    rc = n.request_alloc(ctypes.byref(box))
    if rc != OK:
        raise n.error(rc)
    req = box.value
    assert req is not None
    try:
        if sys_b:
            rc = n.request_set_system(req, sys_b)
            if rc != OK:
                _check(rc, n, "system")
        for i in range(first, len(msgs)):
            _add_message(n, req, i, msgs[i])
        for k, v in opts.items():
            if v is not None:
                rc = _SETTERS[k](n, req, v)
                if rc != OK:
                    _check(rc, n, k, req)
    except BaseException:
        n.request_free(req)
        raise
    return req


def build(
    n: Native, system: Optional[str], messages: Messages, opts: Mapping[str, Any]
) -> int:
    """A new ``lmsched_request`` (the caller frees it with
    ``request_free``); raises InvalidRequest for a bad argument."""
    system, msgs, first = _normalize(system, messages)
    return _build(n, system, msgs, first, opts)


# Requests already built for a system prompt and options, without their
# messages, kept for the next call with the same ones: an agent sends the
# same prompt and options over and over, and reusing them saves the
# allocation, the setters and their checks (most of what building a request
# costs). A template is in the pool only while no call uses it; the lock
# keeps a template from being taken twice or freed while taken.
_POOL: Dict[Any, List[int]] = {}
_POOL_KEYS = 32  # prompts and option sets remembered
_POOL_PER_KEY = 8  # templates of one kind kept (calls at once)
_POOL_LOCK = threading.Lock()


def acquire(
    n: Native, system: Optional[str], messages: Messages, opts: Mapping[str, Any]
) -> Tuple[int, Any]:
    """A request for these arguments, and the key to hand back with it to
    :func:`release` once the call has copied it."""
    system, msgs, first = _normalize(system, messages)
    key: Any = None
    if n.request_clear_messages is not None and (
            system is None or system.__class__ is str):
        try:
            key = (system, tuple(opts.items()))
            hash(key)
        except TypeError:  # a list or dict among the options: build it anew
            key = None
        else:
            req = None
            with _POOL_LOCK:
                free = _POOL.get(key)
                if free:
                    req = free.pop()
            if req is not None:
                try:
                    for i in range(first, len(msgs)):
                        _add_message(n, req, i, msgs[i])
                except BaseException:
                    release(n, req, key)
                    raise
                return req, key
    return _build(n, system, msgs, first, opts), key


def release(n: Native, req: int, key: Any) -> None:
    """Gives back a request from :func:`acquire`: kept without its messages
    for the next call with the same key, or freed."""
    if key is None:
        n.request_free(req)
        return
    n.request_clear_messages(req)
    evicted: List[int] = []
    with _POOL_LOCK:
        free = _POOL.get(key)
        if free is None:
            if len(_POOL) >= _POOL_KEYS:
                evicted = _POOL.pop(next(iter(_POOL)))
            free = _POOL[key] = []
        if len(free) < _POOL_PER_KEY:
            free.append(req)
            req = 0
    for r in evicted:
        n.request_free(r)
    if req:
        n.request_free(req)
