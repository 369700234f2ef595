"""What a chat call gives back (:class:`ChatResult`, with :class:`Usage` and
:class:`Timings`) and what a batch item may be (:class:`Request`).

Results are plain Python objects copied out of the C result at once, so they
outlive the client and may be passed between threads and pickled.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = ["Usage", "Timings", "ToolCall", "ChatResult", "Delta", "Request", "Message", "Messages"]

#: One message in the OpenAI shape: ``{"role": "user", "content": "..."}``.
Message = Mapping[str, Any]
#: A conversation: a list of messages, or one string (a single user message).
Messages = Union[str, Sequence[Message]]


class Usage:
    """Token counts as the LLM server reported them; ``None`` for a count it
    did not report.

    Attributes:
        prompt_tokens: tokens of the whole prompt.
        completion_tokens: tokens generated.
        cached_tokens: prompt tokens the server took from its prompt cache.
    """

    __slots__ = ("prompt_tokens", "completion_tokens", "cached_tokens")

    def __init__(
        self,
        prompt_tokens: Optional[int],
        completion_tokens: Optional[int],
        cached_tokens: Optional[int],
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cached_tokens = cached_tokens

    @property
    def prefilled_tokens(self) -> Optional[int]:
        """Prompt tokens the server had to compute (prompt minus cached)."""
        if self.prompt_tokens is None:
            return None
        return self.prompt_tokens - (self.cached_tokens or 0)

    def to_dict(self) -> Dict[str, Optional[int]]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Usage) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"Usage(prompt_tokens={self.prompt_tokens}, "
            f"completion_tokens={self.completion_tokens}, cached_tokens={self.cached_tokens})"
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Usage, (self.prompt_tokens, self.completion_tokens, self.cached_tokens))


class Timings:
    """Where the time went, in milliseconds, as the daemon measured it.

    Attributes:
        queue_ms: time queued in the scheduler.
        ttft_ms: time to first token, from dispatch to the LLM server;
            ``None`` when no token arrived.
        total_ms: total time inside the scheduler.
    """

    __slots__ = ("queue_ms", "ttft_ms", "total_ms")

    def __init__(
        self, queue_ms: Optional[float], ttft_ms: Optional[float], total_ms: Optional[float]
    ) -> None:
        self.queue_ms = queue_ms
        self.ttft_ms = ttft_ms
        self.total_ms = total_ms

    def to_dict(self) -> Dict[str, Optional[float]]:
        return {"queue_ms": self.queue_ms, "ttft_ms": self.ttft_ms, "total_ms": self.total_ms}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timings) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Timings(queue_ms={self.queue_ms}, ttft_ms={self.ttft_ms}, total_ms={self.total_ms})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Timings, (self.queue_ms, self.ttft_ms, self.total_ms))


class ToolCall:
    """A tool call the model asked for, in the OpenAI shape.

    Attributes:
        id: the call's id (send it back as ``tool_call_id``).
        type: ``"function"``.
        name: the function's name.
        arguments: the arguments, a JSON text as the model wrote it.
    """

    __slots__ = ("id", "type", "name", "arguments")

    def __init__(self, id: str, name: str, arguments: str, type: str = "function") -> None:
        self.id = id
        self.type = type
        self.name = name
        self.arguments = arguments

    def to_dict(self) -> Dict[str, Any]:
        """The OpenAI shape, ready to go back into an assistant message's
        ``tool_calls``."""
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def to_cli_dict(self) -> Dict[str, Any]:
        """The flat shape ``lmsched chat --json`` prints."""
        return {"id": self.id, "type": self.type, "name": self.name, "arguments": self.arguments}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ToolCall) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ToolCall(id={self.id!r}, name={self.name!r}, arguments={self.arguments!r})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (ToolCall, (self.id, self.name, self.arguments, self.type))


class ChatResult:
    """The reply to one chat request.

    Attributes:
        content: the reply's text (``""`` when the model only called tools).
        tool_calls: the tool calls the model asked for (empty when none).
        finish_reason: the server's (``"stop"``, ``"length"``,
            ``"tool_calls"`` ...), or ``None``.
        model: the model that answered, or ``None`` when not reported.
        usage: token counts, :class:`Usage`.
        timings: queue, time to first token and total, :class:`Timings`.
        retries: how many times the daemon retried the request after a
            transient error of the LLM server ("Channel Error" ...).
        reasoning: the model's reasoning text when the server sent one
            separately (``reasoning_content``), else ``None``.
        logprobs: the server's ``logprobs.content`` list when the request
            asked for it (``extra={"logprobs": True}``), else ``None``.
    """

    __slots__ = (
        "content",
        "tool_calls",
        "finish_reason",
        "model",
        "usage",
        "timings",
        "retries",
        "reasoning",
        "logprobs",
    )

    def __init__(
        self,
        content: str,
        finish_reason: Optional[str],
        model: Optional[str],
        usage: Usage,
        timings: Timings,
        retries: int,
        tool_calls: Optional[List[ToolCall]] = None,
        reasoning: Optional[str] = None,
        logprobs: Optional[List[Any]] = None,
    ) -> None:
        self.content = content
        self.finish_reason = finish_reason
        self.model = model
        self.usage = usage
        self.timings = timings
        self.retries = retries
        self.tool_calls: List[ToolCall] = tool_calls if tool_calls is not None else []
        self.reasoning = reasoning
        self.logprobs = logprobs

    def message(self) -> Dict[str, Any]:
        """The reply as an assistant message in the OpenAI shape, to append
        to the conversation for the next turn."""
        msg: Dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [tc.to_dict() for tc in self.tool_calls]
        return msg

    def to_dict(self) -> Dict[str, Any]:
        """The document ``lmsched chat --json`` prints (plus ``tool_calls``
        when there are some)."""
        doc: Dict[str, Any] = {
            "content": self.content,
            "finish_reason": self.finish_reason,
            "model": self.model,
            "usage": self.usage.to_dict(),
            "timings": self.timings.to_dict(),
            "retries": self.retries,
        }
        # As `lmsched chat --json`: these keys only when the answer has them.
        if self.reasoning is not None:
            doc["reasoning"] = self.reasoning
        if self.tool_calls:
            doc["tool_calls"] = [tc.to_cli_dict() for tc in self.tool_calls]
        if self.logprobs is not None:
            doc["logprobs"] = self.logprobs
        return doc

    def __str__(self) -> str:
        return self.content

    def __repr__(self) -> str:
        text = self.content if len(self.content) <= 40 else self.content[:37] + "..."
        extra = f", tool_calls={len(self.tool_calls)}" if self.tool_calls else ""
        return (
            f"ChatResult(content={text!r}, finish_reason={self.finish_reason!r}{extra}, "
            f"usage={self.usage!r}, retries={self.retries})"
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (
            ChatResult,
            (
                self.content,
                self.finish_reason,
                self.model,
                self.usage,
                self.timings,
                self.retries,
                self.tool_calls,
                self.reasoning,
                self.logprobs,
            ),
        )


class Delta:
    """One piece of a streamed answer.

    Attributes:
        kind: ``"content"`` (a piece of the answer's text), ``"reasoning"``
            (a piece of a reasoning model's thoughts) or ``"tool_call"`` (a
            tool call's head, or a piece of its arguments).
        text: the piece (for a tool call, a piece of its arguments; ``""``
            for a head without any).
        index: the tool call's position (0 for content and reasoning).
        id, name: the tool call's id and function name, in its first delta
            only; ``None`` otherwise.
    """

    __slots__ = ("kind", "text", "index", "id", "name")

    def __init__(self, kind: str, text: str, index: int = 0, id: Optional[str] = None,
                 name: Optional[str] = None) -> None:
        self.kind = kind
        self.text = text
        self.index = index
        self.id = id
        self.name = name

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Delta) and (self.kind, self.text, self.index, self.id,
                                             self.name) == (other.kind, other.text, other.index,
                                                            other.id, other.name)

    def __repr__(self) -> str:
        extra = ""
        if self.kind == "tool_call":
            extra = f", index={self.index}, id={self.id!r}, name={self.name!r}"
        return f"Delta({self.kind!r}, {self.text!r}{extra})"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Delta, (self.kind, self.text, self.index, self.id, self.name))


class Request:
    """One request of a batch: the arguments of ``chat`` kept for later.

    ``batch_chat`` also takes a dict (``{"system": ..., "messages": ...,
    **options}``) or a tuple ``(system, messages)`` /
    ``(system, messages, options)`` for each item.
    """

    __slots__ = ("system", "messages", "options")

    def __init__(self, system: Optional[str], messages: Messages, **options: Any) -> None:
        self.system = system
        self.messages = messages
        self.options: Dict[str, Any] = options

    @classmethod
    def coerce(cls, item: Any) -> "Request":
        """A :class:`Request` from any of the shapes a batch accepts;
        raises ``TypeError`` for anything else."""
        if isinstance(item, Request):
            return item
        if isinstance(item, Mapping):
            opts = dict(item)
            if "messages" not in opts:
                raise TypeError("a batch item given as a dict needs a 'messages' key")
            system = opts.pop("system", None)
            messages = opts.pop("messages")
            return cls(system, messages, **opts)
        if isinstance(item, tuple) and len(item) in (2, 3):
            opts2: Mapping[str, Any] = item[2] if len(item) == 3 else {}
            if not isinstance(opts2, Mapping):
                raise TypeError("the third element of a batch item tuple must be a dict of options")
            return cls(item[0], item[1], **opts2)
        raise TypeError(
            "a batch item must be a lmsched.Request, a dict with 'messages' (and 'system', "
            f"options), or a tuple (system, messages[, options]); got {type(item).__name__}"
        )

    def __repr__(self) -> str:
        return f"Request(system={self.system!r}, messages={self.messages!r}, **{self.options!r})"

