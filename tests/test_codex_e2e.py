"""End to end: car driving the REAL Codex CLI (tests/codex/package.json) against the scripted
model server, in real git repos, with an isolated CODEX_HOME. These never skip."""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from car.agent import TOKEN_VAR, sweep_token
from car.cli_usage import add_hub_usage_command, add_usage_command
from car.config import load_config
from car.engine import Engine
from car.layout import RepoLayout
from car.lock import inspect_lock
from car.state import load_state

from codex_support import (
    CAR_TIMEOUT_SECONDS,
    TICK,
    codex_env,
    describe,
    free_port,
    model,
    pids_running,
    pids_with_env,
    process_environ,
    run_texts,
    runs_jsonl,
    tick_run,
    tick_run_tokens,
    use_real_codex,
    user_prompt,
)
from hub_fixtures import make_hub
from model_server import write_codex_home
from support import car_cmd, car_env, make_repo, run_car, wait_until
from web_fixtures import hub_server

LONG_TOOL = "sleep 300; echo finished"


@pytest.fixture
def codex_repo(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "repo", items=("first", "second", "third"))
    use_real_codex(repo)
    return repo


def car(repo: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    return run_car(*args, cwd=repo, env=car_env(**codex_env(home)), timeout=CAR_TIMEOUT_SECONDS)


def usage_json(repo: Path, capsys: pytest.CaptureFixture) -> Dict[str, Any]:
    """`car usage --json` through a parser like car.cli's (the command is hooked in there)."""
    parser = argparse.ArgumentParser(prog="car")
    parser.add_argument("--repo", type=Path, default=None)
    add_usage_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["usage", "--json", "--repo", str(repo)])
    capsys.readouterr()
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)


def test_doctor_names_the_codex_version(codex_repo: Path, tmp_path: Path) -> None:
    r = run_car("doctor", cwd=codex_repo, timeout=CAR_TIMEOUT_SECONDS)
    assert r.returncode == 0, r.stdout + r.stderr
    agent_line = next(line for line in r.stdout.splitlines() if line.startswith("ok    agent "))
    assert agent_line.endswith("(codex-cli 0.169.0)"), agent_line


def test_once_then_run_ticks_every_item_until_todo_done(
        codex_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = (tick_run("Ticked the first item.", 1000) + tick_run("Ticked the second item.", 2000)
              + tick_run("Ticked the third item.", 3000))
    with model(tmp_path, script) as (srv, home):
        once = car(codex_repo, home, "once")
        assert once.returncode == 0, once.stdout + once.stderr
        assert "loop ended: stop_after_runs" in once.stdout
        assert load_state(RepoLayout(codex_repo).state).stop_reason == "stop_after_runs"
        loop = car(codex_repo, home, "run")
    assert loop.returncode == 0, loop.stdout + loop.stderr
    assert "loop ended: todo_done (last run 3, exit code 0, TODO 3/3 done)" in loop.stdout

    todo = (codex_repo / ".codex-autorunner/TODO.md").read_text()
    assert "- [ ]" not in todo and todo.count("- [x]") == 3
    state = load_state(RepoLayout(codex_repo).state)
    assert (state.status, state.stop_reason, state.last_run_id, state.last_exit_code,
            state.runner_pid) == ("idle", "todo_done", 3, 0, None)
    assert state.last_run_finished_at and inspect_lock(RepoLayout(codex_repo).lock).pid is None

    messages = ["Ticked the first item.", "Ticked the second item.", "Ticked the third item."]
    for run_id, message in enumerate(messages, start=1):
        texts = run_texts(codex_repo, run_id)
        assert f"$ {TICK}" in texts and f"✓ exit 0: {TICK}" in texts, texts
        assert f"agent: {message}" in texts, texts
        assert any(t.startswith("codex thread ") for t in texts), texts
        assert not [t for t in texts if t.lstrip().startswith("{")], f"raw JSON in the log: {texts}"

    records = runs_jsonl(codex_repo)
    assert [r["id"] for r in records] == [1, 2, 3]
    assert [r["usage"] for r in records] == [tick_run_tokens(b) for b in (1000, 2000, 3000)]
    assert [r["output"] for r in records] == messages
    assert [(r["exit_code"], r["end_reason"]) for r in records] == [(0, None)] * 3

    report = usage_json(codex_repo, capsys)
    assert report["run_count"] == report["runs_with_usage"] == 3
    assert [r["usage"] for r in report["runs"]] == [r["usage"] for r in records]
    assert report["total"] == {key: sum(r["usage"][key] for r in records) for key in records[0]["usage"]}

    # Two requests per run; each run's first prompt carries the previous run's final message.
    assert len(srv.requests) == 6
    prompts = [user_prompt(srv.requests[i]) for i in (0, 2, 4)]
    assert "<PREVIOUS_RUN_OUTPUT>\n\n</PREVIOUS_RUN_OUTPUT>" in prompts[0]
    for prompt, previous in zip(prompts[1:], messages):
        assert f"<PREVIOUS_RUN_OUTPUT>\n{previous}\n</PREVIOUS_RUN_OUTPUT>" in prompt


# ending a run during a long tool command ----------------------------------------------------
def wait_for_long_tool(repo: Path, home: Path) -> Tuple[int, str]:
    """The pid of the model's `sleep 300` (run by Codex through bash -lc) and its run marker,
    once the log shows the command too (the event can trail the process by a few ms)."""
    def started() -> list:
        shown = f"$ {LONG_TOOL}" in run_texts(repo, 1)
        return shown and pids_running(["sleep", "300"], "CODEX_HOME", str(home))

    pids = wait_until(started, timeout=45, what="the model's `sleep 300` to start and be logged")
    return pids[0], process_environ(pids[0]).get(TOKEN_VAR, "")


def assert_nothing_left(home: Path, token: str, sleep_pid: int) -> None:
    left = pids_with_env(TOKEN_VAR, token)
    assert not left, f"processes of the run left: {describe(left)}"
    assert not pids_running(["sleep", "300"], "CODEX_HOME", str(home))
    assert not [p for p in pids_with_env("CODEX_HOME", str(home)) if p == sleep_pid]
    left = pids_with_env("CODEX_HOME", str(home))  # codex, its launcher, its shells: all gone
    assert not left, f"codex processes left: {describe(left)}"


def assert_killed(repo: Path) -> None:
    state = load_state(RepoLayout(repo).state)
    assert (state.status, state.stop_reason, state.last_run_id) == ("idle", "killed", 1)
    texts = run_texts(repo, 1)
    assert f"$ {LONG_TOOL}" in texts, texts
    assert not [t for t in texts if t.strip() == "finished" or t.startswith("✓")], texts
    assert runs_jsonl(repo)[-1]["end_reason"] == "killed"
    assert "- [x]" not in (repo / ".codex-autorunner/TODO.md").read_text()


def end_leftovers(home: Path) -> None:
    """After a failed test: nothing of this test may outlive it."""
    for pid in pids_with_env("CODEX_HOME", str(home)):
        token = process_environ(pid).get(TOKEN_VAR)
        if token:
            sweep_token(token)


def test_kill_in_process_during_a_long_tool_command(
        codex_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with model(tmp_path, [{"shell": LONG_TOOL}, {"message": "never reached"}]) as (_, home):
        for key, value in codex_env(home).items():  # car hands its environment to the agent
            monkeypatch.setenv(key, value)
        engine = Engine(load_config(RepoLayout(codex_repo).config))
        outcome: Dict[str, Any] = {}
        thread = threading.Thread(target=lambda: outcome.update(reason=engine.run_loop()),
                                  daemon=True, name="e2e-loop")
        thread.start()
        try:
            sleep_pid, token = wait_for_long_tool(codex_repo, home)
            assert token and token == inspect_lock(RepoLayout(codex_repo).lock).run_token
            started = time.monotonic()
            engine.kill()
            thread.join(timeout=30)
            assert not thread.is_alive(), "the loop did not end within 30 s of kill()"
            elapsed = time.monotonic() - started
        finally:
            engine.kill()
            thread.join(timeout=30)
            end_leftovers(home)
    assert outcome["reason"].value == "killed"
    assert_nothing_left(home, token, sleep_pid)
    assert_killed(codex_repo)
    assert elapsed < 10, f"kill took {elapsed:.1f} s (SIGINT ends Codex's turn in ~0.1 s)"


def test_car_kill_from_another_process_during_a_long_tool_command(
        codex_repo: Path, tmp_path: Path) -> None:
    with model(tmp_path, [{"shell": LONG_TOOL}, {"message": "never reached"}]) as (_, home):
        env = car_env(**codex_env(home))
        loop = subprocess.Popen(car_cmd("run"), cwd=codex_repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            sleep_pid, token = wait_for_long_tool(codex_repo, home)
            killed = run_car("kill", cwd=codex_repo, env=env, timeout=CAR_TIMEOUT_SECONDS)
            assert killed.returncode == 0, killed.stdout + killed.stderr
            out, _ = loop.communicate(timeout=30)
        finally:
            if loop.poll() is None:
                loop.kill()
                loop.communicate(timeout=10)
            end_leftovers(home)
    assert "loop ended: killed" in out, out
    assert_nothing_left(home, token, sleep_pid)
    assert_killed(codex_repo)


# model errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(("fault", "message"), [
    ("http500", "experiencing high demand"),  # Codex 0.169.0's words for any HTTP 5xx
    ("stall", "stream disconnected before completion: idle timeout waiting for SSE"),
])
def test_model_error_fails_the_run_and_stops_the_loop(
        codex_repo: Path, tmp_path: Path, fault: str, message: str) -> None:
    with model(tmp_path, [{"fault": fault}], stream_idle_timeout_ms=1000) as (srv, home):
        r = car(codex_repo, home, "run")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "loop ended: agent_failed" in r.stdout
    state = load_state(RepoLayout(codex_repo).state)
    assert (state.status, state.stop_reason, state.last_run_id, state.last_exit_code) == \
        ("error", "agent_failed", 1, 1)
    texts = run_texts(codex_repo, 1)
    failed = [t for t in texts if t.startswith("turn failed: ")]
    assert failed and message in failed[-1], texts
    assert texts[-1].startswith("car: the agent failed: ") and message in texts[-1], texts
    record = runs_jsonl(codex_repo)[-1]
    assert (record["end_reason"], record["usage"], record["output"]) == ("agent_failed", None, None)
    assert len(srv.requests) == 1  # no retries, and the loop did not start a second run


def test_events_far_over_64_kib_are_read_as_events(codex_repo: Path, tmp_path: Path) -> None:
    """QA: a command's whole output and a long message each come as ONE JSON line; cut at 64 KiB they
    went to the log as raw JSON, the exit code was lost, and a BLOCKED: message was missed."""
    blocked = "BLOCKED: the deploy key is missing. " + "z" * 70_000
    with model(tmp_path, [{"shell": "seq 1 40000; exit 2"}, {"message": blocked}]) as (_srv, home):
        r = car(codex_repo, home, "run")
    assert r.returncode == 0 and "loop ended: blocked" in r.stdout, r.stdout + r.stderr
    texts = run_texts(codex_repo, 1)
    assert "✗ exit 2: seq 1 40000; exit 2" in texts and "  40000" in texts, texts[:20]
    assert not any(t.startswith("{") for t in texts), [t[:80] for t in texts if t.startswith("{")]
    assert max(map(len, texts)) <= 300  # readable lines, not the event
    output = runs_jsonl(codex_repo)[-1]["output"]  # the message, as the next prompt gets it: its end
    assert output.endswith("z" * 1000) and 1000 < len(output) <= 6000
    assert load_state(RepoLayout(codex_repo).state).stop_reason == "blocked"


def test_refused_connection_cannot_hang_the_loop(codex_repo: Path, tmp_path: Path) -> None:
    home = write_codex_home(tmp_path / "codex-home", f"http://127.0.0.1:{free_port()}/v1")
    # If Codex retried forever, car's idle watchdog would end the run: bounded either way.
    use_real_codex(codex_repo, idle_timeout_seconds=20, run_timeout_seconds=40)
    started = time.monotonic()
    r = car(codex_repo, home, "run")
    elapsed = time.monotonic() - started
    assert r.returncode == 1, r.stdout + r.stderr
    state = load_state(RepoLayout(codex_repo).state)
    assert state.stop_reason in ("agent_failed", "idle_timeout"), state
    assert state.last_run_id == 1 and elapsed < 60
    texts = run_texts(codex_repo, 1)
    if state.stop_reason == "agent_failed":  # what 0.169.0 does: no retries, exit 1 at once
        assert "car: the agent failed: Connection failed: error sending request" in texts, texts


def test_idle_watchdog_ends_a_run_codex_would_wait_on(codex_repo: Path, tmp_path: Path) -> None:
    """A stalled stream with Codex's own idle timeout at 10 min: car's watchdog ends the run."""
    use_real_codex(codex_repo, idle_timeout_seconds=3, kill_grace_seconds=4)
    with model(tmp_path, [{"fault": "stall"}], stream_idle_timeout_ms=600_000) as (_, home):
        started = time.monotonic()
        r = car(codex_repo, home, "run")
        elapsed = time.monotonic() - started
    assert r.returncode == 1, r.stdout + r.stderr
    state = load_state(RepoLayout(codex_repo).state)
    assert (state.status, state.stop_reason, state.last_run_id) == ("error", "idle_timeout", 1)
    assert "car: idle timeout: ending the agent" in run_texts(codex_repo, 1)
    assert runs_jsonl(codex_repo)[-1]["end_reason"] == "idle_timeout"
    assert 3 <= elapsed < 30, f"{elapsed:.1f} s"
    left = pids_with_env("CODEX_HOME", str(home))
    assert not left, f"codex processes left: {describe(left)}"


# the hub: two repos at once through the HTTP API -----------------------------------------------
def test_hub_runs_two_repos_at_once_until_todo_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "hub"
    make_hub(root)
    repos = {name: make_repo(root / name, items=("one", "two")) for name in ("alpha", "beta")}
    for repo in repos.values():
        use_real_codex(repo)
    # One server for both agents; each request is matched to its repo by the cwd Codex sends.
    scripts = {str(repo.resolve()): tick_run(f"{name} run 1 done.", 1000)
               + tick_run(f"{name} run 2 done.", 2000) for name, repo in repos.items()}
    with model(tmp_path, scripts) as (srv, home):
        for key, value in codex_env(home).items():  # the hub's agents inherit its environment
            monkeypatch.setenv(key, value)
        with hub_server(root) as served:
            for name in repos:
                reply = served.client.post(f"/hub/repos/{name}/run")
                assert reply.status == 200, reply.text
                assert reply.json["repo"]["status"] == "running", reply.json

            def finished() -> Any:
                listing = {r["id"]: r for r in served.client.get("/hub/repos").json["repos"]}
                done = all(listing[n]["status"] == "idle" and listing[n]["stop_reason"] for n in repos)
                return listing if done else None

            listing = wait_until(finished, timeout=CAR_TIMEOUT_SECONDS, interval=0.2,
                                 what="both repos' loops to end")
    for name, repo in repos.items():
        entry = listing[name]
        assert (entry["stop_reason"], entry["todo_done"], entry["todo_total"], entry["last_run_id"],
                entry["last_exit_code"]) == ("todo_done", 2, 2, 2, 0), entry
        records = runs_jsonl(repo)
        assert [r["usage"] for r in records] == [tick_run_tokens(1000), tick_run_tokens(2000)]
        assert [r["output"] for r in records] == [f"{name} run 1 done.", f"{name} run 2 done."]
        assert f"agent: {name} run 2 done." in run_texts(repo, 2)
    # at once: each repo's loop started before the other's ended
    spans = {name: (runs_jsonl(repo)[0]["started_at"], runs_jsonl(repo)[-1]["finished_at"])
             for name, repo in repos.items()}
    assert spans["alpha"][0] < spans["beta"][1] and spans["beta"][0] < spans["alpha"][1], spans
    assert len(srv.requests) == 8

    parser = argparse.ArgumentParser(prog="car")
    add_hub_usage_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["usage", "--json", "--hub", str(root)])
    capsys.readouterr()
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    one_repo = {k: tick_run_tokens(1000)[k] + tick_run_tokens(2000)[k] for k in tick_run_tokens(0)}
    assert {r["id"]: r["total"] for r in report["repos"]} == {"alpha": one_repo, "beta": one_repo}
    assert report["total"] == {k: 2 * v for k, v in one_repo.items()} and report["run_count"] == 4
