"""Turn an agent's stdout into readable run-log lines; Codex `--json` events get parsed.

    reader = make_reader()
    for line in agent.lines():
        for text in reader.feed(line):
            log.info(text)
    reader.final_message, reader.usage, reader.failure   # None when unknown
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, fields
from typing import Any

OUTPUT_TAIL_LINES = 5  # of a command's output, shown under its exit line
MAX_LINE_CHARS = 300  # one readable line; keeps a runaway output from flooding the log

# Codex 0.169.0 warns this for every model it has no metadata for (any custom provider); it is
# not a failure. Seen as an `item.completed` item of type "error".
HARMLESS_ERROR = re.compile(r"^Model metadata for `.*` not found\. Defaulting to fallback metadata")
# the events `codex exec --json` can open its stream with (CODEX.md): any other first JSON line is
# another agent's own output, whose "turn.failed" or usage must not be read as Codex's
CODEX_OPENING_EVENTS = ("thread.started", "error")
NO_MESSAGE = "(no message)"  # keeps `failure` truthy when Codex gives no text
_CODEX_EVENT = re.compile(r"^(thread|turn|item)\.[a-z_]+$|^error$")
_KNOWN_ITEMS = ("command_execution", "agent_message", "reasoning", "error", "file_change",
                "todo_list", "web_search", "mcp_tool_call")
_SHELL_WRAPPERS = ("bash", "/bin/bash", "/usr/bin/bash", "sh", "/bin/sh", "zsh", "/bin/zsh")


@dataclass
class TokenUsage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0

    def add(self, other: TokenUsage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Any) -> TokenUsage:
        """Lenient: missing or non-integer counts read as 0."""
        data = data if isinstance(data, dict) else {}
        return cls(**{f.name: _int(data.get(f.name)) for f in fields(cls)})


class OutputReader:
    """Raw lines, for any agent whose output is not Codex events."""

    final_message: str | None = None  # None: the caller uses the run's log lines instead
    usage: TokenUsage | None = None
    failure: str | None = None  # what the agent reported as its failure, if it did
    blocked: bool = False  # the agent said a line starting with BLOCKED: (it needs a human)

    def feed(self, line: str) -> list[str]:
        text = line.rstrip("\r\n")
        self._see(text)
        return [text]

    def _see(self, text: str) -> None:
        """Note a BLOCKED: line in what the agent said (any line of it)."""
        if not self.blocked and "BLOCKED:" in text:
            self.blocked = any(part.lstrip().startswith("BLOCKED:") for part in text.splitlines())


class CodexReader(OutputReader):
    """Parses `codex exec --json` events (CODEX.md); a line that is not an event stays raw."""

    def __init__(self) -> None:
        self.thread_id: str | None = None
        self._plans: dict[str, list[str]] = {}  # todo_list item id -> last lines shown

    def feed(self, line: str) -> list[str]:
        text = line.rstrip("\r\n")
        if not text.strip():
            return []
        event = parse_event(text)
        if event is None:
            self._see(text)
            return [text]
        try:
            return self._on_event(event)
        except Exception:  # a reader must never break a run; malformed input stays visible
            return [text]

    def _on_event(self, event: dict[str, Any]) -> list[str]:
        kind = event["type"]
        if kind == "thread.started":
            self.thread_id = _str(event.get("thread_id")) or None
            return [f"codex thread {self.thread_id}"]
        if kind == "turn.completed":
            usage = TokenUsage.from_json(event.get("usage"))
            if self.usage is None:
                self.usage = TokenUsage()
            self.usage.add(usage)
            return [render_usage(usage)]
        if kind == "turn.failed":
            message = _message(event.get("error")) or NO_MESSAGE
            self.failure = message
            return _prefixed("turn failed: ", message)
        if kind == "error":
            message = _message(event) or NO_MESSAGE
            if not HARMLESS_ERROR.match(message):
                self.failure = message
            return _prefixed("error: ", message)
        if kind.startswith("item.") and isinstance(event.get("item"), dict):
            return self._on_item(kind, event["item"])
        return []  # turn.started and events we do not know: nothing worth a line

    def _on_item(self, kind: str, item: dict[str, Any]) -> list[str]:
        item_type = _str(item.get("type"))
        done = kind == "item.completed"
        if item_type == "command_execution":
            return render_command(item) if done else _command_start(item, kind)
        if item_type == "agent_message" and done:
            self.final_message = _str(item.get("text"))
            self._see(self.final_message)
            return _prefixed("agent: ", self.final_message)
        if item_type == "reasoning" and done:
            return _prefixed("thinking: ", _str(item.get("text")))
        if item_type == "error":  # Codex's non-fatal warnings; fatal ones are top-level events
            return _prefixed("warning: ", _message(item))
        if item_type == "file_change" and done:
            return [_clip(f"file {_str(c.get('kind'))}: {_str(c.get('path'))}")
                    for c in _dicts(item.get("changes"))]
        if item_type == "todo_list":
            return self._plan(item)
        if item_type == "web_search" and not done:
            return [_clip(f"web search: {_str(item.get('query'))}")]
        if item_type == "mcp_tool_call" and done:
            name = f"{_str(item.get('server'))}.{_str(item.get('tool'))}"
            return [_clip(f"mcp {name}: {_str(item.get('status'))}")]
        if done and item_type not in _KNOWN_ITEMS:  # new in some Codex version: name it at least
            return [f"item {item_type or '?'}"]
        return []

    def _plan(self, item: dict[str, Any]) -> list[str]:
        """The plan each time it changes (Codex re-sends it on every update)."""
        lines = [_clip(f"  [{'x' if t.get('completed') else ' '}] {_str(t.get('text'))}")
                 for t in _dicts(item.get("items"))]
        key = _str(item.get("id"))
        if self._plans.get(key) == lines:
            return []
        self._plans[key] = lines
        return ["plan:", *lines]


def make_reader() -> OutputReader:
    """A reader that starts raw and switches to Codex parsing when the first JSON line opens a Codex
    stream ({"type":"thread.started",...} or an error); text lines before it stay raw."""
    return _SniffingReader()


class _SniffingReader(OutputReader):
    """Decides on the first line that is a JSON object, then hands every line to that reader."""

    def __init__(self) -> None:
        self._inner: OutputReader | None = None
        self._blocked_early = False  # a BLOCKED: line before the reader was chosen

    def feed(self, line: str) -> list[str]:
        if self._inner is None:
            first = _json_object(line)
            if first is None:
                # Merged stderr comes first, as many lines as Codex likes (warnings, a RUST_LOG trace):
                # text never decides, and only a flag of it is kept
                text = line.rstrip("\r\n")
                self._blocked_early = self._blocked_early or text.lstrip().startswith("BLOCKED:")
                return [text]
            self._inner = CodexReader() if _str(first.get("type")) in CODEX_OPENING_EVENTS else OutputReader()
        return self._inner.feed(line)

    # Properties shadow the base class's defaults so callers read the chosen reader's results.
    final_message = property(lambda self: self._inner.final_message if self._inner else None)
    usage = property(lambda self: self._inner.usage if self._inner else None)
    failure = property(lambda self: self._inner.failure if self._inner else None)
    blocked = property(lambda self: self._blocked_early or bool(self._inner and self._inner.blocked))


def _json_object(line: str) -> dict[str, Any] | None:
    """The line as a JSON object, or None for any other line."""
    if not line.lstrip().startswith("{"):
        return None  # most text: no parse tried
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_event(line: str) -> dict[str, Any] | None:
    """The line as a Codex event dict, or None when it is not one."""
    event = _json_object(line)
    return event if event is not None and _CODEX_EVENT.match(_str(event.get("type"))) else None


def render_usage(usage: TokenUsage) -> str:
    return (f"tokens: input={usage.input_tokens} cached={usage.cached_input_tokens} "
            f"output={usage.output_tokens} reasoning={usage.reasoning_output_tokens}")


def render_command(item: dict[str, Any]) -> list[str]:
    """`✓ exit 0: cmd` / `✗ exit 2: cmd`, then the tail of its output, indented."""
    cmd = display_command(_str(item.get("command")))
    code = item.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        head = f"{'✓' if code == 0 else '✗'} exit {code}: {cmd}"
    else:  # declined, killed, or still running when the turn ended
        head = f"✗ {_str(item.get('status')) or 'no exit code'}: {cmd}"
    output = _str(item.get("aggregated_output")).rstrip("\n").splitlines()
    tail = [_clip("  " + line) for line in output[-OUTPUT_TAIL_LINES:]]
    if len(output) > OUTPUT_TAIL_LINES:
        tail.insert(0, f"  … {len(output) - OUTPUT_TAIL_LINES} more lines")
    return [_clip(head), *tail]


def display_command(command: str) -> str:
    """`/bin/bash -lc "ls -la"` → `ls -la`, on one line."""
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = []
    if len(argv) == 3 and argv[0] in _SHELL_WRAPPERS and argv[1] in ("-lc", "-c"):
        command = argv[2]
    lines = command.strip().splitlines() or [""]
    more = f" … (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return lines[0] + more


def _command_start(item: dict[str, Any], kind: str) -> list[str]:
    if kind != "item.started":
        return []  # item.updated would repeat the `$` line
    return [_clip("$ " + display_command(_str(item.get("command"))))]


def _prefixed(prefix: str, text: str) -> list[str]:
    """One line per non-blank line of `text`, or just the prefix when there is none."""
    lines = [_clip(prefix + line) for line in text.splitlines() if line.strip()]
    return lines or [prefix.rstrip()]


def _message(obj: Any) -> str:
    return _str(obj.get("message")) if isinstance(obj, dict) else _str(obj)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _str(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"
