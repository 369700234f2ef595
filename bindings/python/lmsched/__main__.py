"""``python3 -m lmsched``: the ``lmsched chat`` and ``lmsched status`` commands
in Python, with the same options, output and exit status (docs/cli.md), as
an example of the package and a check that it reaches the daemon.

Exit status: 0 success, 1 the request failed (or the library could not be
loaded), 2 usage error, 3 daemon not reachable or no reply in time.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, NoReturn, Optional, Sequence

from . import Client, Error, InvalidRequest, LibraryNotFoundError, NoDaemon, Timeout, __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
CHAT_TIMEOUT_MS = 600000
STATUS_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_MS = 2000
TEXT_MAX = 4 * 1024 * 1024
FIELD_MAX = 200


def _clean(s: str, limit: int = FIELD_MAX) -> str:
    """Control characters as '?', cut at limit bytes with '...'."""
    out = "".join("?" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in s)
    b = out.encode("utf-8")
    if len(b) > limit:
        out = b[: limit - 3].decode("utf-8", "ignore") + "..."
    return out


def _report(err: Error) -> int:
    detail = err.message
    if err.field is not None and err.field not in detail:
        detail += f" (field: {err.field})"
    if detail and detail != err.description:
        print(f"lmsched: {err.name}: {err.description}: {_clean(detail, 1023)}", file=sys.stderr)
    else:
        print(f"lmsched: {err.name}: {err.description}", file=sys.stderr)
    if isinstance(err, (NoDaemon, Timeout)):
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def _error_json(err: Error) -> None:
    print(
        json.dumps(
            {"error": {"code": err.name, "number": err.code, "message": err.message}}, indent=2
        )
    )


# ---- the status table (as scheduler/cli/cli.c renders it) -------------------


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


def _num(obj: Any, key: str) -> Optional[float]:
    v = _get(obj, key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(obj: Any, key: str) -> str:
    v = _get(obj, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "unknown"
    return str(v) if isinstance(v, int) else f"{v:.0f}"


def _str(obj: Any, key: str) -> str:
    v = _get(obj, key)
    return _clean(v) if isinstance(v, str) else "unknown"


def _bytes(obj: Any, key: str) -> str:
    v = _num(obj, key)
    if v is None or v < 0:
        return "unknown"
    if v < 1024:
        return f"{v:.0f} B"
    units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    u = 0
    v /= 1024
    while v >= 1024 and u + 1 < len(units):
        v /= 1024
        u += 1
    return f"{v:.1f} {units[u]}"


def _fmt_secs(secs: float) -> str:
    if secs >= 1e12:
        return f"{secs:.0f}s"
    s = int(secs)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _secs(obj: Any, key: str) -> str:
    v = _num(obj, key)
    return "unknown" if v is None or v < 0 else _fmt_secs(v)


def _ms(obj: Any, key: str) -> str:
    v = _num(obj, key)
    if v is None or v < 0:
        return "unknown"
    if v < 999.5:
        return f"{v:.0f} ms"
    if v < 59950:
        return f"{v / 1000:.1f} s"
    return _fmt_secs(v / 1000)


def _count(obj: Any, key: str) -> str:
    v = _num(obj, key)
    if v is None or v < 0:
        return "unknown"
    for lim, div, fmt in (
        (1000, 1, "{:.0f}"),
        (9950, 1e3, "{:.1f}k"),
        (999500, 1e3, "{:.0f}k"),
        (9950000, 1e6, "{:.1f}M"),
        (999500000, 1e6, "{:.0f}M"),
    ):
        if v < lim:
            return fmt.format(v / div)
    return f"{v / 1e9:.1f}G"


def _classes(classes: Any) -> str:
    if not isinstance(classes, dict) or not classes:
        return ""
    items = []
    for k, v in classes.items():
        items.append(f"{_clean(k, 47)} {v if isinstance(v, int) else '?'}")
    return " (" + ", ".join(items) + ")"


def render_status(doc: Dict[str, Any]) -> str:
    """The table ``lmsched status`` prints for a status document."""
    be, mem = _get(doc, "backend"), _get(doc, "memory")
    queue, req = _get(doc, "queue"), _get(doc, "requests")
    lat, tok = _get(doc, "latency_ms"), _get(doc, "tokens")
    lines: List[str] = []
    lines.append(
        f"lmsched {_str(doc, 'version')}  up {_secs(doc, 'uptime_s')}  pid {_int(doc, 'pid')}  "
        f"listen {_str(doc, 'listen')}  policy {_str(doc, 'policy')}"
    )
    healthy = _get(be, "healthy")
    health = "healthy" if healthy is True else "unreachable" if healthy is False else "health unknown"
    line = (
        f"backend   {_str(be, 'url')}  {_str(be, 'kind')}  {health}  model {_str(be, 'model')}  "
        f"ctx {_int(be, 'context_length')}  slots {_int(be, 'slots')}"
    )
    if isinstance(_get(be, "last_error"), str):
        line += f"  last error: {_str(be, 'last_error')}"
        if _get(be, "checked_ago_s") is not None:
            line += f" (checked {_secs(be, 'checked_ago_s')} ago)"
    lines.append(line)
    frac = _num(mem, "ram_fraction")
    lines.append(
        f"memory    RAM {_bytes(mem, 'total_bytes')} x "
        f"{'unknown' if frac is None else f'{frac:.2f}'} - model {_bytes(mem, 'model_size_bytes')} "
        f"= budget {_bytes(mem, 'budget_bytes')}; KV/request {_bytes(mem, 'kv_per_request_bytes')} "
        f"-> max {_int(mem, 'max_concurrent')} concurrent ({_str(mem, 'limited_by')})"
    )
    lines.append(
        f"queue     {_int(queue, 'depth')} / {_int(queue, 'max')}        "
        f"in flight {_int(doc, 'inflight')} / {_int(mem, 'max_concurrent')}"
    )
    line = (
        f"requests  received {_int(req, 'received')}  completed {_int(req, 'completed')}  "
        f"failed {_int(req, 'failed')}{_classes(_get(req, 'failed_by_class'))}  "
        f"retried {_int(req, 'retried')}  busy {_int(req, 'rejected_busy')}"
    )
    bad = _num(req, "bad_messages")
    if bad is not None and bad > 0:
        line += f"  bad messages {_int(req, 'bad_messages')}"
    lines.append(line)
    qw, ttft, total = _get(lat, "queue_wait"), _get(lat, "ttft"), _get(lat, "total")
    lines.append(
        f"latency   queue wait p50 {_ms(qw, 'p50')}  p95 {_ms(qw, 'p95')}    "
        f"ttft p50 {_ms(ttft, 'p50')}  p95 {_ms(ttft, 'p95')}    "
        f"total p50 {_ms(total, 'p50')}  p95 {_ms(total, 'p95')}"
    )
    prompt, cached = _num(tok, "prompt"), _num(tok, "cached")
    share = ""
    if prompt is not None and cached is not None and prompt > 0 and cached >= 0:
        share = f" ({100.0 * cached / prompt:.0f}%)"
    lines.append(
        f"tokens    prompt {_count(tok, 'prompt')}  completion {_count(tok, 'completion')}  "
        f"cached {_count(tok, 'cached')}{share}"
    )
    groups = _get(doc, "groups")
    if isinstance(groups, list) and groups:
        lines.append(
            f"groups    {'queue':<5} {'inflight':<8} {'slots':<10} {'requests':<8} {'hit':<6} "
            "system prompt"
        )
        for g in groups:
            sl = _get(g, "cached_in_slots")
            slots = ",".join(str(x) for x in sl) if isinstance(sl, list) and sl else "-"
            hit = _num(g, "hit_rate")
            hits = "-" if hit is None else f"{hit * 100.0:.0f}%"
            lines.append(
                f"          {_int(g, 'queued'):<5} {_int(g, 'inflight'):<8} {slots:<10} "
                f"{_int(g, 'requests'):<8} {hits:<6} \"{_str(g, 'label')}\""
            )
    return "\n".join(lines) + "\n"


# ---- commands ---------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _positive_ms(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 2147483647, got '{text}'")
    if not 1 <= v <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 2147483647, got '{text}'")
    return v


def _ranged(kind: type, lo: float, hi: float) -> Any:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not lo <= v <= hi:
            if kind is int:
                raise argparse.ArgumentTypeError(
                    f"expected an integer from {int(lo)} to {int(hi)}, got '{text}'")
            raise argparse.ArgumentTypeError(f"expected a number from {lo:g} to {hi:g}, got '{text}'")
        return v

    return parse


def _read_text(what: str, path: str) -> str:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(TEXT_MAX + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(TEXT_MAX + 1)
    except OSError as e:
        raise SystemExit(_usage_error(f"cannot open {what} '{path}': {e.strerror}"))
    if len(data) > TEXT_MAX:
        raise SystemExit(_usage_error(f"the {what} is over the {TEXT_MAX} byte limit"))
    if b"\0" in data:
        raise SystemExit(_usage_error(f"the {what} contains a NUL byte"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SystemExit(_usage_error(f"the {what} is not UTF-8"))


def _usage_error(msg: str) -> int:
    print(f"lmsched chat: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _open(url: Optional[str], timeout_ms: int) -> Client:
    connect = min(timeout_ms, CONNECT_TIMEOUT_MS) / 1000.0
    return Client(url, connect_timeout=connect)


_OPTION_FLAGS = {
    "tools": "--tools",
    "tool_choice": "--tool-choice",
    "response_format": "--response-format",
    "extra": "--extra",
    "max_tokens": "--max-tokens",
    "temperature": "--temperature",
    "priority": "--priority",
    "seed": "--seed",
    "model": "--model",
    "agent": "--agent",
    "system": "system prompt",
}


def _invalid(err: Error) -> int:
    """A request refused before it was sent: a usage error naming the flag."""
    field = err.field or ""
    head = field.split("[")[0].split(".")[0]
    what = _OPTION_FLAGS.get(head, "user text" if head.startswith("messages") else "request")
    detail = err.message
    if err.field and err.field not in detail:
        detail = f"{err.field}: {detail}"
    return _usage_error(f"invalid {what}: {detail}")


def _json_arg(what: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise SystemExit(_usage_error(f"invalid {what}: not JSON: {e}"))


def _tool_choice(text: str) -> Any:
    if text[:1] in ("{", '"'):
        return _json_arg("--tool-choice", text)
    return text  # auto, none, required, or a function's name


def _print_reply(reply: Any, as_json: bool, compact: bool = False) -> None:
    if as_json:
        if compact:
            print(json.dumps(reply.to_dict(), separators=(",", ":"), ensure_ascii=False))
        else:
            print(json.dumps(reply.to_dict(), indent=2, ensure_ascii=False))
        return
    if reply.reasoning:
        sys.stderr.write(reply.reasoning if reply.reasoning.endswith("\n") else reply.reasoning + "\n")
    content = reply.content
    out = content
    if (content and not content.endswith("\n")) or (not content and not reply.tool_calls):
        out += "\n"
    for tc in reply.tool_calls:
        out += f"tool_call {tc.id or '-'} {tc.name or '-'} {tc.arguments}\n"
    sys.stdout.write(out)


class _StreamPrinter:
    """Prints each piece as it comes, as `lmsched chat --stream` does."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out_open = self.out_any = self.err_open = False

    def end_reasoning(self) -> None:
        if self.err_open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.err_open = False

    def piece(self, d: Any) -> None:
        if self.as_json:
            if d.kind == "tool_call":
                doc: Dict[str, Any] = {"tool_call": {"index": d.index, "id": d.id,
                                                     "name": d.name, "arguments": d.text}}
            else:
                doc = {d.kind: d.text}
            sys.stdout.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n")
        elif d.kind == "reasoning":
            if d.text:
                sys.stderr.write(d.text)
                self.err_open = not d.text.endswith("\n")
                sys.stderr.flush()
            return
        elif d.kind == "content":
            self.end_reasoning()
            if d.text:
                sys.stdout.write(d.text)
                self.out_open = not d.text.endswith("\n")
                self.out_any = True
        elif d.kind == "tool_call":
            self.end_reasoning()
            if d.id is not None:
                if self.out_open:
                    sys.stdout.write("\n")
                sys.stdout.write(f"tool_call {d.id or '-'} {d.name or '-'} ")
                self.out_any = True
            sys.stdout.write(d.text)
            self.out_open = True
        sys.stdout.flush()

    def finish(self) -> None:
        self.end_reasoning()
        if self.out_open:
            sys.stdout.write("\n")
            self.out_open = False


def cmd_chat(args: argparse.Namespace) -> int:
    if args.system is not None and args.system_file is not None:
        return _usage_error("give --system or --system-file, not both")
    stdin_users = [x for x in (args.text, args.system_file, args.tools, args.response_format)
                   if x == "-"]
    if len(stdin_users) > 1:
        return _usage_error("stdin can hold only one of the system prompt, the user text, "
                            "--tools and --response-format")
    system = args.system
    if args.system_file is not None:
        system = _read_text("system prompt", args.system_file)
    text = _read_text("user text", "-") if args.text == "-" else args.text
    opts: Dict[str, Any] = {"agent": args.agent, "timeout": args.timeout / 1000.0}
    for k in ("model", "max_tokens", "temperature", "priority", "seed"):
        if getattr(args, k) is not None:
            opts[k] = getattr(args, k)
    if args.tools is not None:
        opts["tools"] = _json_arg("--tools", _read_text("--tools file", args.tools))
    if args.tool_choice is not None:
        opts["tool_choice"] = _tool_choice(args.tool_choice)
    if args.response_format is not None:
        opts["response_format"] = _json_arg(
            "--response-format", _read_text("--response-format file", args.response_format))
    if args.extra is not None:
        opts["extra"] = _json_arg("--extra", args.extra)
    system = system if system is not None else ""
    printer = _StreamPrinter(args.json)
    try:
        with _open(args.url, args.timeout) as client:
            if not args.stream:
                reply = client.chat(system, text, **opts)
            else:
                with client.stream(system, text, **opts) as s:
                    try:
                        for d in s:
                            printer.piece(d)
                    except BrokenPipeError:
                        return EXIT_FAILED  # the reader went away: closing cancels
                    finally:
                        printer.finish()
                if s.result is None:  # pragma: no cover - the iteration raised
                    return EXIT_FAILED
                reply = s.result
    except InvalidRequest as err:
        return _invalid(err)
    except Error as err:
        sys.stdout.flush()
        if args.json:
            _error_json(err)
        return _report(err)
    if not args.stream:
        _print_reply(reply, args.json)
    elif args.json:
        _print_reply(reply, True, compact=True)
    elif not printer.out_any:
        sys.stdout.write("\n")  # an answer with nothing to show still ends its line
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    try:
        with _open(args.url, args.timeout) as client:
            doc = client.status(timeout=args.timeout / 1000.0)
    except Error as err:
        if args.json:
            _error_json(err)
        return _report(err)
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(render_status(doc))
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python3 -m lmsched",
        description="Talk to the lmsched daemon from Python: `chat` sends one request, "
        "`status` shows what the daemon is doing (as the lmsched command does).",
        epilog="Exit status: 0 success, 1 the request failed, 2 usage error, "
        "3 daemon not reachable or no reply in time.",
    )
    p.add_argument("--version", action="version", version=f"lmsched (Python) {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{chat,status}", parser_class=_Parser)
    sub.required = True
    url_help = "daemon URL (default: $LMSCHED_URL, else ipc://$XDG_RUNTIME_DIR/lmsched.sock)"

    c = sub.add_parser(
        "chat",
        help="send one chat request through the daemon",
        description="Send one request (a system prompt and one user message) through the "
        "daemon and print the reply's content. A user text of '-' is read from stdin.",
    )
    c.add_argument("text", help="the user text ('-': stdin)")
    c.add_argument("--system", metavar="TEXT", help="the system prompt (default: empty)")
    c.add_argument("--system-file", metavar="F", help="read the system prompt from F ('-': stdin)")
    c.add_argument("--model", metavar="M", help="the model to ask for")
    c.add_argument("--max-tokens", type=_ranged(int, 1, 1048576), metavar="N")
    c.add_argument("--temperature", type=_ranged(float, 0, 10), metavar="T")
    c.add_argument("--seed", type=_ranged(int, -(2**63), 2**63 - 1), metavar="N",
                   help="sampling seed (a signed 64-bit integer)")
    c.add_argument("--priority", type=_ranged(int, 0, 9), metavar="P", help="0 to 9, default 5")
    c.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    c.add_argument("--tools", metavar="FILE",
                   help="tool definitions: a JSON array (OpenAI's shape) in FILE ('-': stdin)")
    c.add_argument("--tool-choice", metavar="C",
                   help="auto, none, required, a function name, or a JSON object")
    c.add_argument("--response-format", metavar="FILE",
                   help='structured output: a JSON object in FILE, e.g. {"type":"json_object"}')
    c.add_argument("--extra", metavar="JSON",
                   help="more fields for the LLM server's request body, a JSON object")
    c.add_argument("--agent", default="lmsched-chat", metavar="NAME",
                   help="agent name for the daemon's logs (default lmsched-chat)")
    c.add_argument("--timeout", type=_positive_ms, default=CHAT_TIMEOUT_MS, metavar="MS",
                   help=f"give up after MS milliseconds (default {CHAT_TIMEOUT_MS})")
    c.add_argument("--url", metavar="URL", help=url_help)
    c.add_argument("--json", action="store_true",
                   help="print a JSON object instead of the content (with --stream: one JSON "
                   "line per piece, then the reply)")
    c.set_defaults(run=cmd_chat)

    s = sub.add_parser(
        "status",
        help="show what the daemon is doing",
        description="Show the daemon's backend, memory budget, queue, request counts, "
        "latencies and tokens.",
    )
    s.add_argument("--json", action="store_true", help="print the status document as JSON")
    s.add_argument("--url", metavar="URL", help=url_help)
    s.add_argument("--timeout", type=_positive_ms, default=STATUS_TIMEOUT_MS, metavar="MS",
                   help=f"give up after MS milliseconds (default {STATUS_TIMEOUT_MS})")
    s.set_defaults(run=cmd_status)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except LibraryNotFoundError as e:
        print(f"lmsched: {e}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
