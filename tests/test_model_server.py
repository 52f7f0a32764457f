"""The fake Responses API server, spoken to over real HTTP with urllib."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from model_server import DEFAULT_USAGE, ModelServer, write_codex_home

EXEC_COMMAND = {"type": "function", "name": "exec_command", "parameters": {
    "type": "object", "properties": {"cmd": {"type": "string"}}}}
OLD_SHELL = {"type": "function", "name": "shell", "parameters": {
    "type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}}}
SHELL_COMMAND = {"type": "function", "name": "shell_command", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}}}


def post(url: str, body: dict[str, Any], timeout: float = 5) -> list[tuple[str, Any]]:
    """POST a request; return the SSE events as (event, data) pairs (data is raw if not JSON)."""
    request = urllib.request.Request(url + "/responses", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        return parse_sse(response.read().decode())


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            try:
                events.append((fields["event"], json.loads(fields.get("data", ""))))
            except ValueError:
                events.append((fields["event"], fields.get("data")))
    return events


def test_message_turn_streams_a_whole_response() -> None:
    script = [{"message": "héllo ✓"}, {"message": "second", "usage": {"input_tokens": 7}}]
    with ModelServer(script) as srv:
        events = post(srv.base_url, {"model": "m", "stream": True, "input": [], "tools": []})
        second = post(srv.base_url, {"model": "m", "stream": True, "n": 2})
    assert [e for e, _ in events] == ["response.created", "response.output_item.added",
                                      "response.output_item.done", "response.completed"]
    item = events[2][1]["item"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["content"][0] == {"type": "output_text", "text": "héllo ✓", "annotations": []}
    usage, u = events[3][1]["response"]["usage"], DEFAULT_USAGE
    assert usage == {"input_tokens": u["input_tokens"],
                     "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
                     "output_tokens": u["output_tokens"],
                     "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
                     "total_tokens": u["input_tokens"] + u["output_tokens"]}
    assert second[-1][1]["response"]["usage"]["input_tokens"] == 7
    assert [r.get("n") for r in srv.requests] == [None, 2]  # bodies recorded in order


@pytest.mark.parametrize(("tool", "arguments"), [
    (EXEC_COMMAND, {"cmd": "ls -la"}),
    (SHELL_COMMAND, {"command": "ls -la"}),
    (OLD_SHELL, {"command": ["bash", "-lc", "ls -la"]}),
])
def test_shell_turn_calls_the_tool_the_request_offers(tool: dict, arguments: dict) -> None:
    other = {"type": "function", "name": "view_image", "parameters": {"properties": {}}}
    with ModelServer([{"shell": "ls -la"}]) as srv:
        events = post(srv.base_url, {"stream": True, "tools": [other, tool]})
    item = events[-1][1]["response"]["output"][0]
    assert item["type"] == "function_call" and item["call_id"] == "call_1"
    assert item["name"] == tool["name"]
    assert json.loads(item["arguments"]) == arguments


def test_http500_fault() -> None:
    with ModelServer([{"fault": "http500"}]) as srv:
        with pytest.raises(urllib.error.HTTPError) as caught:
            post(srv.base_url, {})
    assert caught.value.code == 500


def test_failed_fault_sends_response_failed() -> None:
    with ModelServer([{"fault": "failed"}]) as srv:
        events = post(srv.base_url, {})
    assert [e for e, _ in events] == ["response.created", "response.failed"]
    assert events[1][1]["response"]["error"]["message"] == "scripted response.failed"


def test_drop_fault_hangs_up_mid_event() -> None:
    with ModelServer([{"fault": "drop", "message": "never whole"}]) as srv:
        events = post(srv.base_url, {})
    assert [e for e, _ in events] == ["response.created", "response.output_item.added"]
    assert not isinstance(events[1][1], dict)  # half an event: data is cut short


def test_stall_fault_ends_at_once_on_close() -> None:
    srv = ModelServer([{"fault": "stall"}])
    request = urllib.request.Request(srv.base_url + "/responses", data=b"{}")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.readline() == b"event: response.created\n"
        response.readline()  # its data line
        response.readline()  # the blank line that ends the event
        timer = threading.Timer(0.3, srv.close)
        timer.start()
        started = time.monotonic()
        assert response.read() == b""  # nothing more: the stream just ends
        assert time.monotonic() - started < 5
    timer.join(5)


def test_script_exhausted_and_request_cap_answer_500() -> None:
    with ModelServer([{"message": "a"}] * 3, max_requests=2) as srv:
        post(srv.base_url, {})
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(srv.base_url + "/models", timeout=5)  # not served, yet counted
        with pytest.raises(urllib.error.HTTPError) as caught:
            post(srv.base_url, {})
    assert caught.value.code == 500
    assert srv.request_lines == ["POST /v1/responses", "GET /v1/models", "POST /v1/responses"]
    with ModelServer([]) as srv, pytest.raises(urllib.error.HTTPError, match="500"):
        post(srv.base_url, {})


def test_lifetime_bound_shuts_it_down() -> None:
    srv = ModelServer([{"message": "late"}], max_lifetime_seconds=0.2)
    assert srv.wait_closed(5)
    with pytest.raises(OSError):  # URLError (refused) on a closed port
        post(srv.base_url, {}, timeout=2)
    srv.close()  # a second close is harmless


def test_script_form_prints_port_and_records(tmp_path: Path) -> None:
    script, record = tmp_path / "script.json", tmp_path / "record.json"
    script.write_text(json.dumps([{"message": "from a process"}]))
    server = Path(__file__).with_name("model_server.py")
    proc = subprocess.Popen([sys.executable, str(server), "--script", str(script), "--record",
                             str(record), "--max-lifetime-seconds", "30"],
                            stdout=subprocess.PIPE, text=True)
    try:
        first = read_line_within(proc, 10)
        assert first.startswith("PORT ")
        events = post(f"http://127.0.0.1:{int(first.split()[1])}/v1", {"mark": 1})
        assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == "from a process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert json.loads(record.read_text()) == [{"mark": 1}]


def read_line_within(proc: subprocess.Popen, timeout_seconds: float) -> str:
    """One stdout line, or fail after the timeout instead of hanging."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_seconds)
    assert lines, f"no line from the server within {timeout_seconds} s"
    return lines[0]


def test_write_codex_home(tmp_path: Path) -> None:
    home = write_codex_home(tmp_path / "home", "http://127.0.0.1:9/v1", stream_idle_timeout_ms=700)
    assert home == tmp_path / "home"
    text = (home / "config.toml").read_text()
    for line in ['model = "mock-model"', 'model_provider = "mock"', "[analytics]",
                 "enabled = false", "plugins = false", "unbounded_connection_retries = false",
                 'base_url = "http://127.0.0.1:9/v1"', 'wire_api = "responses"',
                 "request_max_retries = 0", "stream_max_retries = 0",
                 "stream_idle_timeout_ms = 700"]:
        assert line in text.splitlines()
