"""The REAL Codex CLI (pinned in tests/codex/package.json) against the scripted model server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from car.codex_events import OutputReader, TokenUsage, make_reader

from codex_support import CODEX_ARGS, find_codex
from model_server import ModelServer, write_codex_home

RUN_TIMEOUT_SECONDS = 60
TICK_FIRST_TODO = r"sed -i '0,/- \[ \]/s//- [x]/' TODO.md"
TODO = "# TODO\n- [ ] first thing\n- [ ] second thing\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, timeout=30)
    (repo / "TODO.md").write_text(TODO)
    return repo


def run_codex(repo: Path, script: list[dict[str, Any]],
              stream_idle_timeout_ms: int = 5000) -> tuple[int, list[str], ModelServer]:
    """One `codex exec --json -` against a fresh server: (exit code, output lines, server).

    stderr is merged into stdout as car's engine does, so the reader must cope with both."""
    codex = find_codex()
    prompt_path = repo.parent / "prompt.txt"
    prompt_path.write_text("Tick the first open item of TODO.md.\n")
    with ModelServer(script, max_requests=10, max_lifetime_seconds=RUN_TIMEOUT_SECONDS) as srv:
        home = write_codex_home(repo.parent / "codex-home", srv.base_url, stream_idle_timeout_ms)
        env = {**os.environ, "CODEX_HOME": str(home)}
        with prompt_path.open("rb") as stdin:  # a file, never a pipe that stays open
            proc = subprocess.Popen([str(codex), *CODEX_ARGS], cwd=repo, env=env, stdin=stdin,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=RUN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            # The launcher's native child survives a kill of the launcher alone: kill the group.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
            pytest.fail(f"codex did not finish within {RUN_TIMEOUT_SECONDS} s")
    return proc.returncode, stdout.decode("utf-8", "replace").splitlines(), srv


def read_all(lines: list[str]) -> tuple[OutputReader, list[str]]:
    """Through make_reader(), as the engine does; it must have recognised Codex's events."""
    reader = make_reader()
    readable = [text for line in lines for text in reader.feed(line)]
    assert any(t.startswith("codex thread ") for t in readable), f"not Codex events: {lines}"
    return reader, readable


def test_happy_path_ticks_a_todo_and_reports_usage(repo: Path) -> None:
    script = [
        {"shell": TICK_FIRST_TODO,
         "usage": {"input_tokens": 1200, "cached_tokens": 300, "output_tokens": 40,
                   "reasoning_tokens": 8}},
        {"message": "Ticked the first item.\nNothing else to do ✓",
         "usage": {"input_tokens": 1500, "cached_tokens": 1100, "output_tokens": 25,
                   "reasoning_tokens": 0}},
    ]
    started = time.monotonic()
    code, lines, srv = run_codex(repo, script)
    elapsed = time.monotonic() - started

    assert code == 0, lines
    assert (repo / "TODO.md").read_text() == TODO.replace("- [ ] first", "- [x] first")
    reader, readable = read_all(lines)
    assert f"$ {TICK_FIRST_TODO}" in readable
    assert f"✓ exit 0: {TICK_FIRST_TODO}" in readable
    assert readable[-3:] == ["agent: Ticked the first item.", "agent: Nothing else to do ✓",
                             "tokens: input=2700 cached=1400 output=65 reasoning=8"]
    assert reader.usage == TokenUsage(2700, 1400, 65, 8)  # Codex sums a turn's requests
    assert reader.final_message == "Ticked the first item.\nNothing else to do ✓"
    assert reader.failure is None  # despite the model-metadata warning
    # The second request carries the tool's result back to the model.
    assert len(srv.requests) == 2
    outputs = [i for i in srv.requests[1]["input"] if i.get("type") == "function_call_output"]
    assert [o["call_id"] for o in outputs] == ["call_1"]
    assert elapsed < 30, f"happy path took {elapsed:.1f} s (measured ~0.6 s)"


def test_failed_tool_command_still_exits_0(repo: Path) -> None:
    code, lines, _ = run_codex(repo, [{"shell": "echo oops >&2; exit 3"},
                                      {"message": "It failed."}])
    reader, readable = read_all(lines)
    assert code == 0  # exit 0 does not mean the task succeeded (CODEX.md)
    assert "✗ exit 3: echo oops >&2; exit 3" in readable
    assert "  oops" in readable  # stderr is part of aggregated_output
    assert reader.failure is None and reader.final_message == "It failed."


def test_http_500_exits_1_with_failure(repo: Path) -> None:
    code, lines, srv = run_codex(repo, [{"fault": "http500"}])
    reader, readable = read_all(lines)
    assert code == 1, lines
    assert reader.failure, readable
    assert readable[-1] == f"turn failed: {reader.failure}"
    assert reader.final_message is None and reader.usage is None
    assert (repo / "TODO.md").read_text() == TODO
    assert len(srv.requests) == 1  # request_max_retries = 0: no retry


@pytest.mark.parametrize(("fault", "message"), [
    ("failed", "stream disconnected before completion: scripted response.failed"),
    ("drop", "stream disconnected before completion: stream closed before response.completed"),
    ("stall", "stream disconnected before completion: idle timeout waiting for SSE"),
])
def test_stream_faults_exit_1_with_their_message(repo: Path, fault: str, message: str) -> None:
    code, lines, _ = run_codex(repo, [{"fault": fault}], stream_idle_timeout_ms=1000)
    reader, _ = read_all(lines)
    assert code == 1, lines
    assert reader.failure == message


def test_request_body_offers_exec_command(repo: Path) -> None:
    """Pins the tool schema the fake server relies on; re-check when bumping Codex."""
    _, _, srv = run_codex(repo, [{"message": "nothing to do"}])
    body = srv.requests[0]
    assert body["model"] == "mock-model" and body["stream"] is True
    tools = {t.get("name"): t for t in body["tools"]}
    assert tools["exec_command"]["parameters"]["properties"]["cmd"]["type"] == "string"
    prompts = [c.get("text") for i in body["input"] for c in i.get("content", [])]
    assert "Tick the first open item of TODO.md.\n" in prompts
