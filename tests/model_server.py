"""A scripted fake of the OpenAI Responses API (SSE) for driving the real Codex CLI offline.

A script is a list of turns, one per POST /v1/responses:
    {"shell": "cmd"}        a function_call to the shell tool the request offers
    {"message": "text"}     a final assistant message (ends the exec)
    {"fault": "http500" | "failed" | "drop" | "stall"}
Any turn may carry "usage": {"input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"}.
Several agents at once (e.g. a hub running two repos): pass {text: turns} instead of one list;
each request plays the next turn of the first script whose text its body contains (Codex sends
its working directory in every request, so a repo's path makes a good key).

    with ModelServer([{"shell": "ls"}, {"message": "done"}]) as srv:
        home = write_codex_home(tmp_path / "home", srv.base_url)

As a script (`python3 tests/model_server.py --script s.json`) it prints `PORT <n>` then serves.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_USAGE = {"input_tokens": 1000, "cached_tokens": 200, "output_tokens": 50,
                 "reasoning_tokens": 10}
SHELL_TOOL_NAMES = ("exec_command", "shell_command", "shell")  # newest first
FAULTS = ("http500", "failed", "drop", "stall")


def find_shell_tool(tools: list[dict[str, Any]]) -> tuple[str, str, bool]:
    """(tool name, argument key, argument is a list) of the shell tool offered in `tools[]`."""
    by_name = {t.get("name"): t for t in tools if isinstance(t, dict)}
    name = next((n for n in SHELL_TOOL_NAMES if n in by_name), "exec_command")
    props = (by_name.get(name) or {}).get("parameters", {}).get("properties", {})
    key = "cmd" if "cmd" in props or "command" not in props else "command"
    return name, key, props.get(key, {}).get("type") == "array"


def render_usage(turn: dict[str, Any]) -> dict[str, Any]:
    u = {**DEFAULT_USAGE, **turn.get("usage", {})}
    return {"input_tokens": u["input_tokens"],
            "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
            "output_tokens": u["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
            "total_tokens": u["input_tokens"] + u["output_tokens"]}


def render_items(turn: dict[str, Any], body: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The output items of turn number `n`: an optional message, then an optional tool call."""
    items: list[dict[str, Any]] = []
    if "message" in turn:
        items.append({"type": "message", "id": f"msg_{n}", "role": "assistant",
                      "status": "completed",
                      "content": [{"type": "output_text", "text": turn["message"],
                                   "annotations": []}]})
    if "shell" in turn:
        name, key, as_list = find_shell_tool(body.get("tools", []))
        cmd = ["bash", "-lc", turn["shell"]] if as_list else turn["shell"]
        items.append({"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}",
                      "name": name, "arguments": json.dumps({key: cmd}), "status": "completed"})
    return items


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # stderr noise would drown the test output

    def do_GET(self) -> None:
        self.server.owner.note_request(f"GET {self.path}", None)
        self._send_json(404, {"error": {"message": f"no route for GET {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"unparsed": raw.decode("utf-8", "replace")}
        turn, n = self.server.owner.note_request(f"POST {self.path}", body)
        if not self.path.rstrip("/").endswith("/responses"):
            self._send_json(404, {"error": {"message": f"no route for POST {self.path}"}})
        elif turn is None:
            self._send_json(500, {"error": {"message": "model_server: script exhausted or "
                                            "request cap reached", "type": "server_error"}})
        elif turn.get("fault") == "http500":
            self._send_json(500, {"error": {"message": "scripted http500",
                                            "type": "server_error"}})
        else:
            try:
                self._stream(turn, body, n)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client left; nothing to tell it

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _event(self, event_type: str, payload: dict[str, Any]) -> None:
        data = json.dumps({"type": event_type, **payload})
        self.wfile.write(f"event: {event_type}\ndata: {data}\n\n".encode())
        self.wfile.flush()

    def _stream(self, turn: dict[str, Any], body: dict[str, Any], n: int) -> None:
        # HTTP/1.0 without Content-Length: closing the connection ends the stream.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        response = {"id": f"resp_{n}", "object": "response", "status": "in_progress",
                    "model": body.get("model", "mock-model"), "output": []}
        self._event("response.created", {"response": response})
        fault = turn.get("fault")
        if fault == "stall":
            self.server.owner.stopped.wait()
            return
        if fault == "failed":
            error = {"code": "server_error", "message": "scripted response.failed"}
            self._event("response.failed",
                        {"response": {**response, "status": "failed", "error": error}})
            return
        items = render_items(turn, body, n)
        if fault == "drop":  # half an event, then hang up before response.completed
            self.wfile.write(b"event: response.output_item.added\ndata: {\"ty")
            self.wfile.flush()
            self.close_connection = True
            return
        for index, item in enumerate(items):
            self._event("response.output_item.added", {"output_index": index, "item": item})
            self._event("response.output_item.done", {"output_index": index, "item": item})
        done = {**response, "status": "completed", "output": items, "usage": render_usage(turn)}
        self._event("response.completed", {"response": done})


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled stream must not keep the process alive
    owner: ModelServer


class ModelServer:
    """Serves `script` on 127.0.0.1:0; bounded by `max_requests` and `max_lifetime_seconds`."""

    def __init__(self, script: list[dict[str, Any]] | dict[str, list[dict[str, Any]]],
                 max_requests: int = 50, max_lifetime_seconds: float = 120.0) -> None:
        self.scripts = {k: list(v) for k, v in script.items()} if isinstance(script, dict) else {"": list(script)}
        for turn in (t for turns in self.scripts.values() for t in turns):
            assert turn.get("fault") in (None, *FAULTS), f"unknown fault in {turn}"
        self.max_requests = max_requests
        self.requests: list[dict[str, Any]] = []  # bodies of POST .../responses, in order
        self.request_lines: list[str] = []  # every request, e.g. "GET /v1/models"
        self.stopped = threading.Event()  # set first by close(): ends stalled streams
        self._done = threading.Event()
        self._guard = threading.Lock()
        self._turns_used = {key: 0 for key in self.scripts}  # per script
        self._closed = False
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        # A short poll interval: shutdown() waits for it, and tests close servers often.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="model-server", daemon=True)
        self._timer = threading.Timer(max_lifetime_seconds, self.close)
        self._timer.daemon = True
        self._thread.start()
        self._timer.start()

    def note_request(self, line: str, body: dict[str, Any] | None) -> tuple[dict | None, int]:
        """Record a request; return its turn (None past the cap or the script) and its number."""
        with self._guard:
            self.request_lines.append(line)
            if body is None or not line.rstrip("/").endswith("/responses"):
                return None, 0
            self.requests.append(body)
            key = self._script_for(body)
            over_cap = len(self.request_lines) > self.max_requests
            if over_cap or key is None or self._turns_used[key] >= len(self.scripts[key]):
                return None, 0
            self._turns_used[key] += 1
            return self.scripts[key][self._turns_used[key] - 1], len(self.requests)

    def _script_for(self, body: dict[str, Any]) -> str | None:
        """The key of the script this request plays: the first whose text the body holds."""
        text = json.dumps(body, ensure_ascii=False)
        return next((key for key in self.scripts if key and key in text),
                    "" if "" in self.scripts else None)

    def close(self) -> None:
        """Stop serving; ends stalled streams at once. Safe to call twice, from any thread."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
        self.stopped.set()
        self._timer.cancel()
        if threading.current_thread() is not self._thread:
            self._httpd.shutdown()  # would deadlock on the serving thread itself
        self._httpd.server_close()
        self._done.set()

    def wait_closed(self, timeout_seconds: float) -> bool:
        """True once the listening socket is closed (by close() or the lifetime bound)."""
        return self._done.wait(timeout_seconds)

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_codex_home(home_dir: Path, base_url: str, stream_idle_timeout_ms: int = 5000) -> Path:
    """Write `home_dir/config.toml` pointing Codex at `base_url`; return `home_dir` (CODEX_HOME)."""
    home_dir = Path(home_dir)
    home_dir.mkdir(parents=True, exist_ok=True)
    # Every line matters offline: see /work/shared/CODEX.md ("Pointing it at a model server").
    (home_dir / "config.toml").write_text(f"""\
model = "mock-model"
model_provider = "mock"

[analytics]
enabled = false

[features]
plugins = false
unbounded_connection_retries = false

[model_providers.mock]
name = "Mock"
base_url = {json.dumps(base_url)}
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = {int(stream_idle_timeout_ms)}
""")
    return home_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", type=Path, required=True, help="JSON list of turns")
    parser.add_argument("--max-requests", type=int, default=50)
    parser.add_argument("--max-lifetime-seconds", type=float, default=120.0)
    parser.add_argument("--record", type=Path, help="write request bodies here (JSON) on exit")
    args = parser.parse_args(argv)
    srv = ModelServer(json.loads(args.script.read_text()), args.max_requests,
                      args.max_lifetime_seconds)
    for sig in (signal.SIGTERM, signal.SIGINT):  # handlers only set the flag
        signal.signal(sig, lambda *_: srv.stopped.set())
    print(f"PORT {srv.port}", flush=True)
    srv.stopped.wait()
    srv.close()
    if args.record:
        args.record.write_text(json.dumps(srv.requests, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
