from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from car.config import load_config
from car.docs import DocKind
from car.engine import Engine
from car.errors import AgentError, CarError, LockError
from car.files import read_jsonl
from car.layout import RepoLayout
from car.lock import LockInfo, acquire_lock, clear_stale_lock, inspect_lock, lock_lost_message
from car.logs import list_runs, log_files, read_run, run_output
from car.prompt import DEFAULT_TEMPLATE, render_prompt
from car.recovery import reconcile
from car.state import load_state
from car.status import LockStatus, StopReason

from support import (
    agent_and_child,
    git,
    hang_agent,
    pid_alive,
    read_pids,
    run_car,
    unwritable,
    update_config,
    wait_until,
    write_todo,
)


def engine(repo: Path, **runner) -> Engine:
    if runner:
        update_config(repo, runner=runner)
    return Engine(load_config(repo / ".codex-autorunner" / "config.yml"))


def state(repo: Path):
    return load_state(RepoLayout(repo).state)


def log_path(repo: Path) -> Path:
    return repo / ".codex-autorunner" / "codex-autorunner.log"


def loop_in_thread(eng: Engine, once: bool = False):
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("reason", eng.run_loop(once=once)), daemon=True)
    t.start()
    return t, result


def test_loop_runs_until_todo_done(repo: Path) -> None:
    reason = engine(repo).run_loop()
    assert reason is StopReason.TODO_DONE
    s = state(repo)
    assert (s.status, s.stop_reason, s.last_run_id, s.last_exit_code, s.runner_pid) == ("idle", "todo_done", 2, 0, None)
    assert "- [x] first" in (repo / ".codex-autorunner" / "TODO.md").read_text()
    runs = list_runs(log_path(repo), 3)
    assert [(r.id, r.exit_code, r.end) for r in runs] == [(1, 0, "code 0"), (2, 0, "code 0")]
    lines = read_run(log_path(repo), 3, 1)
    assert lines[0].endswith("=== run 1 start ===") and lines[-1].endswith("=== run 1 end (code 0) ===")
    assert any("[run 1] fake-agent: checked off 'first'" in line for line in lines)
    assert inspect_lock(RepoLayout(repo).lock).status is LockStatus.UNLOCKED


def test_once_runs_one_item(repo: Path) -> None:
    assert engine(repo).run_loop(once=True) is StopReason.STOP_AFTER_RUNS
    assert state(repo).last_run_id == 1
    assert "- [ ] second" in (repo / ".codex-autorunner" / "TODO.md").read_text()


def test_empty_todo_stops_without_running_and_keeps_the_last_exit_code(repo: Path) -> None:
    engine(repo).run_loop(once=True)
    write_todo(repo, items=[], done=["all"])
    assert engine(repo).run_loop() is StopReason.TODO_DONE
    s = state(repo)
    assert (s.last_run_id, s.last_exit_code, s.status) == (1, 0, "idle")


def test_agent_failure_is_an_error_state(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", "fail")
    assert engine(repo).run_loop() is StopReason.AGENT_FAILED
    s = state(repo)
    assert (s.status, s.last_exit_code, s.stop_reason) == ("error", 3, "agent_failed")
    text = log_path(repo).read_text()
    assert "fake-agent: error: the build is broken" in text and "=== run 1 end (code 3) ===" in text


def test_stop_after_runs_counts_runs_of_this_loop(repo: Path) -> None:
    write_todo(repo, ["a", "b", "c", "d"])
    assert engine(repo, stop_after_runs=2).run_loop() is StopReason.STOP_AFTER_RUNS
    assert state(repo).last_run_id == 2
    assert engine(repo, stop_after_runs=1).run_loop() is StopReason.STOP_AFTER_RUNS
    assert state(repo).last_run_id == 3  # not compared with the absolute run id


def test_no_progress_stops_the_loop(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", "noop")
    assert engine(repo, no_progress_runs=2).run_loop() is StopReason.NO_PROGRESS
    assert state(repo).last_run_id == 2


def test_git_is_asked_for_progress_only_when_no_progress_runs_can_stop_the_loop(
        repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = tmp_path / "git-calls"
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_AGENT_MODE", "noop")
    engine(repo).run_loop(once=True)
    assert not calls.exists()  # `car once` never stops on no progress
    engine(repo, no_progress_runs=None, stop_after_runs=2).run_loop()
    assert not calls.exists()
    engine(repo, no_progress_runs=2, stop_after_runs=None).run_loop()
    assert calls.read_text().splitlines() == ["status --porcelain=v2 --branch --untracked-files=all"] * 3


def test_blocked_line_stops_after_the_run(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", "blocked")
    assert engine(repo).run_loop() is StopReason.BLOCKED
    assert state(repo).last_run_id == 1 and state(repo).stop_reason == "blocked"


def test_wallclock_limit(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", "silent")
    assert engine(repo, max_wallclock_seconds=1).run_loop() is StopReason.WALLCLOCK
    assert state(repo).stop_reason == "wallclock"


def test_request_stop_ends_after_the_current_run(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_SLEEP", "0.5")
    write_todo(repo, ["a", "b", "c"])
    eng = engine(repo)
    t, result = loop_in_thread(eng)
    wait_until(lambda: eng.current_run_id == 1, what="run 1 to start")
    eng.request_stop()
    t.join(20)
    assert result["reason"] is StopReason.STOPPED
    s = state(repo)
    assert (s.last_run_id, s.last_exit_code, s.status) == (1, 0, "idle")  # run 1 finished normally


def test_stop_file_from_another_process_ends_after_the_run(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_SLEEP", "0.5")
    write_todo(repo, ["a", "b", "c"])
    eng = engine(repo)
    t, result = loop_in_thread(eng)
    wait_until(lambda: eng.current_run_id == 1, what="run 1 to start")
    RepoLayout(repo).stop.write_text("stop\n")
    t.join(20)
    assert result["reason"] is StopReason.STOPPED and state(repo).last_run_id == 1


def test_an_old_stop_file_does_not_stop_a_new_loop(repo: Path) -> None:
    RepoLayout(repo).stop.write_text("stop\n")
    assert engine(repo).run_loop() is StopReason.TODO_DONE
    assert not RepoLayout(repo).stop.exists()


def test_kill_ends_the_agent_and_its_child(repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pidfile = hang_agent(monkeypatch, tmp_path)
    eng = engine(repo)
    t, result = loop_in_thread(eng)
    pids = agent_and_child(pidfile)
    assert all(pid_alive(p) for p in pids)
    eng.kill()
    t.join(20)
    assert result["reason"] is StopReason.KILLED
    assert not any(pid_alive(p) for p in pids), "a process of the killed run survived"
    s = state(repo)
    assert (s.status, s.stop_reason) == ("idle", "killed") and s.last_exit_code is not None
    assert "=== run 1 end (code " in log_path(repo).read_text()
    assert inspect_lock(RepoLayout(repo).lock).status is LockStatus.UNLOCKED


def test_kill_escalates_when_the_agent_ignores_sigint(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    pidfile = hang_agent(monkeypatch, tmp_path)
    monkeypatch.setenv("FAKE_AGENT_IGNORE_INT", "1")
    eng = engine(repo, kill_grace_seconds=1)
    t, result = loop_in_thread(eng)
    pids = agent_and_child(pidfile)
    eng.kill()
    t.join(20)
    assert result["reason"] is StopReason.KILLED
    assert not any(pid_alive(p) for p in pids)


def test_kill_reaches_a_process_in_its_own_session(repo: Path, tmp_path: Path) -> None:
    # like a Codex tool command: a new session escapes group signals; the run marker sweep ends it
    script = tmp_path / "agent.py"
    pidfile = tmp_path / "escaped"
    script.write_text(
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(300)\n")
    update_config(repo, codex={"binary": sys.executable, "args": [str(script)]})
    eng = engine(repo)
    t, result = loop_in_thread(eng)
    pid = wait_until(lambda: pidfile.exists() and pidfile.read_text() and int(pidfile.read_text()),
                     what="escaped process")
    eng.kill()
    t.join(20)
    assert result["reason"] is StopReason.KILLED
    wait_until(lambda: not pid_alive(pid), timeout=5, what="the escaped process to be swept")


def test_an_agent_that_closes_its_output_and_works_on_is_waited_for(repo: Path, tmp_path: Path) -> None:
    """QA: an agent that sent its output elsewhere mid-run was killed at once and its run called failed."""
    agent = tmp_path / "quiet-agent"
    agent.write_text("#!/bin/sh\ncat >/dev/null\necho working\nexec >/dev/null 2>&1\nsleep 1\n"
                     "sed -i 's/- \\[ \\] first/- [x] first/' .codex-autorunner/TODO.md\n")
    agent.chmod(0o755)
    update_config(repo, codex={"binary": str(agent), "args": []})
    engine(repo).run_loop(once=True)
    s = state(repo)
    assert (s.last_exit_code, s.stop_reason) == (0, "stop_after_runs")
    assert "- [x] first" in (repo / ".codex-autorunner" / "TODO.md").read_text()


def test_run_timeout_watchdog(repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pidfile = hang_agent(monkeypatch, tmp_path)
    assert engine(repo, run_timeout_seconds=1).run_loop() is StopReason.RUN_TIMEOUT
    assert not any(pid_alive(p) for p in read_pids(pidfile))
    s = state(repo)
    assert (s.status, s.stop_reason) == ("error", "run_timeout")
    assert "car: run timeout: ending the agent" in log_path(repo).read_text()


def test_idle_timeout_watchdog(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", "silent")
    assert engine(repo, idle_timeout_seconds=1).run_loop() is StopReason.IDLE_TIMEOUT
    assert state(repo).stop_reason == "idle_timeout"


def test_output_keeps_the_idle_watchdog_quiet(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", "slow")
    monkeypatch.setenv("FAKE_AGENT_LINES", "6")
    monkeypatch.setenv("FAKE_AGENT_SLEEP", "0.4")
    assert engine(repo, idle_timeout_seconds=1).run_loop(once=True) is StopReason.STOP_AFTER_RUNS


def test_a_prompt_over_200kb_reaches_the_agent_whole(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    spec = "".join(f"spec line {i} " + "y" * 80 + "\n" for i in range(3000))
    (repo / ".codex-autorunner" / "SPEC.md").write_text(spec)
    out = tmp_path / "prompt-seen"
    monkeypatch.setenv("FAKE_AGENT_PROMPT_OUT", str(out))
    engine(repo).run_loop(once=True)
    seen = out.read_text()
    assert len(seen.encode()) > 200_000
    assert spec in seen
    assert seen == RepoLayout(repo).rendered_prompt.read_text()


def test_a_deleted_prompt_template_falls_back_to_the_default(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    (repo / ".codex-autorunner" / "prompt.txt").unlink()
    out = tmp_path / "prompt-seen"
    monkeypatch.setenv("FAKE_AGENT_PROMPT_OUT", str(out))
    eng = engine(repo)
    docs = {k.value: eng.config.doc_path(k.value).read_text() for k in DocKind}  # as the run starts
    assert eng.run_loop(once=True) is StopReason.STOP_AFTER_RUNS
    assert out.read_text() == render_prompt(DEFAULT_TEMPLATE, docs, "", eng.config.prompt.prev_run_max_chars)


def test_previous_output_feeds_the_next_prompt(repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = tmp_path / "prompt-seen"
    monkeypatch.setenv("FAKE_AGENT_PROMPT_OUT", str(out))
    engine(repo).run_loop()
    assert "fake-agent: checked off 'first'" in out.read_text()  # run 2's prompt holds run 1's output
    assert run_output(log_path(repo), 3, 1).endswith("fake-agent: checked off 'first'")


def test_flood_of_output_is_logged_whole(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", "flood")
    monkeypatch.setenv("FAKE_AGENT_LINES", "20000")
    engine(repo).run_loop(once=True)
    lines = read_run(log_path(repo), 3, 1)
    assert sum("fake-agent: line " in line for line in lines) == 20000


def test_rotation_happens_between_runs_and_runs_are_read_from_backups(repo: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    update_config(repo, log={"max_bytes": 3000, "backup_count": 3})
    monkeypatch.setenv("FAKE_AGENT_MODE", "flood")
    monkeypatch.setenv("FAKE_AGENT_LINES", "20")
    write_todo(repo, ["a", "b", "c"])
    engine(repo).run_loop()
    files = log_files(log_path(repo), 3)
    assert len(files) >= 3
    for f in files:  # every file holds whole runs: each start has its end in the same file
        text = f.read_text()
        assert text.count(" start ===") == text.count(" end (")
    assert read_run(log_path(repo), 3, 1)[-1].endswith("=== run 1 end (code 0) ===")
    assert [r.id for r in list_runs(log_path(repo), 3)] == [1, 2, 3]


def test_auto_commit_stages_the_agents_changes(repo: Path) -> None:
    update_config(repo, git={"auto_commit": True})
    git(repo, "commit", "-q", "--allow-empty", "-m", "base")
    engine(repo).run_loop(once=True)
    assert git(repo, "log", "-1", "--format=%s").strip() == "[codex] run #1"
    assert "work.txt" in git(repo, "show", "--name-only", "--format=", "HEAD")
    assert git(repo, "status", "--porcelain") == ""


def test_auto_commit_with_nothing_to_commit_or_no_git(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    update_config(repo, git={"auto_commit": True})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")  # the seeded .codex-autorunner/.gitignore is tracked
    monkeypatch.setenv("FAKE_AGENT_MODE", "noop")
    assert engine(repo).run_loop(once=True) is StopReason.STOP_AFTER_RUNS
    assert "auto-commit" not in log_path(repo).read_text()
    import shutil
    shutil.rmtree(repo / ".git")
    monkeypatch.setenv("FAKE_AGENT_MODE", "ok")
    assert engine(repo).run_loop(once=True) is StopReason.STOP_AFTER_RUNS
    assert state(repo).status == "idle"


def test_missing_binary_is_reported_before_any_run(repo: Path) -> None:
    update_config(repo, codex={"binary": "no-such-agent-binary"})
    with pytest.raises(AgentError, match=r"'no-such-agent-binary' not found on PATH.*codex.binary"):
        engine(repo).run_loop()
    assert state(repo).last_run_id is None
    assert inspect_lock(RepoLayout(repo).lock).status is LockStatus.UNLOCKED


def test_live_lock_blocks_and_names_the_holder(repo: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = RepoLayout(repo).lock
        lock.write_text(json.dumps({"pid": holder.pid, "pid_started": None, "started_at": "then"}))
        assert inspect_lock(lock).status is LockStatus.LOCKED_ALIVE
        with pytest.raises(LockError, match=f"held by pid {holder.pid}"):
            engine(repo).run_loop()
        with pytest.raises(LockError):
            clear_stale_lock(lock)
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_reported_and_cleared_only_by_resume(repo: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = RepoLayout(repo).lock
    lock.write_text(json.dumps({"pid": dead.pid, "pid_started": "1", "started_at": "then"}))
    assert inspect_lock(lock).status is LockStatus.LOCKED_STALE
    with pytest.raises(LockError, match=r"stale lock.*car resume"):
        engine(repo).run_loop()
    assert clear_stale_lock(lock) and not lock.exists()


def test_recycled_pid_reads_as_stale(repo: Path) -> None:
    lock = RepoLayout(repo).lock
    lock.write_text(json.dumps({"pid": os.getpid(), "pid_started": "12345", "started_at": "then"}))
    assert inspect_lock(lock).status is LockStatus.LOCKED_STALE  # our pid, another start time


def test_acquired_lock_holds_pid_and_start_time(repo: Path) -> None:
    info = acquire_lock(RepoLayout(repo).lock)
    assert info.pid == os.getpid() and info.pid_started and info.status is LockStatus.LOCKED_ALIVE


def test_reconcile_closes_a_run_whose_owner_died(repo: Path) -> None:
    layout = RepoLayout(repo)
    engine(repo).run_loop(once=True)
    s = json.loads(layout.state.read_text())
    s.update(status="running", last_run_id=2, last_exit_code=None, last_run_started_at="2026-01-01T00:00:00.000Z",
             last_run_finished_at=None, runner_pid=999999)
    layout.state.write_text(json.dumps(s))
    with log_path(repo).open("a") as fh:
        fh.write("2026-01-01T00:00:00.000Z === run 2 start ===\n2026-01-01T00:00:07.250Z [run 2] working\n")
    layout.lock.write_text(json.dumps({"pid": 999999, "pid_started": "1", "started_at": "then"}))
    config = load_config(layout.config)
    assert reconcile(config)
    after = state(repo)
    assert (after.status, after.stop_reason, after.runner_pid) == ("error", "interrupted", None)
    lines = read_run(log_path(repo), 3, 2)
    assert lines[-1].endswith("=== run 2 end (interrupted) ===")
    assert "pid 999999) died during this run; last heard of it at 2026-01-01T00:00:07.250Z" in lines[-2]
    # nothing of the run was left to end: it ended some time after its last line, not when car noticed
    assert after.last_run_finished_at == "2026-01-01T00:00:07.250Z"
    runs = read_jsonl(layout.runs)
    assert [r["id"] for r in runs] == [1, 2]  # the run history keeps the interrupted run
    assert runs[1] == {"id": 2, "started_at": "2026-01-01T00:00:00.000Z", "finished_at": "2026-01-01T00:00:07.250Z",
                       "exit_code": None, "end_reason": "interrupted", "usage": None, "output": None}
    assert not reconcile(config)  # once only
    assert len(read_jsonl(layout.runs)) == 2
    assert layout.lock.exists()  # reconcile never clears a lock


def test_a_repo_back_before_its_loop_lets_go_of_the_lock_gets_its_state_closed(repo: Path, tmp_path: Path) -> None:
    """The repo moved away just as its loop closes state.json, and back before the lock is released:
    the lock is found again and released, so the state must not stay "running" beside it."""
    away = tmp_path / "away"

    class MovedWhileClosing(Engine):
        moved = False

        def _finish(self, reason: StopReason) -> bool:
            if self.moved:
                return super()._finish(reason)
            self.moved = True
            repo.rename(away)
            try:
                return super()._finish(reason)  # nothing to write to: the repo is away
            finally:
                away.rename(repo)

    eng = MovedWhileClosing(load_config(RepoLayout(repo).config))
    assert eng.run_loop(once=True) is StopReason.STOP_AFTER_RUNS and eng.moved
    after = state(repo)
    assert (after.status, after.stop_reason, after.runner_pid) == ("idle", "stop_after_runs", None)
    assert not RepoLayout(repo).lock.exists()


# the lock taken from under a running loop -----------------------------------------------------
def test_a_lock_removed_during_a_run_ends_the_loop_after_that_run(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    pidfile, go = tmp_path / "pids", tmp_path / "go"
    monkeypatch.setenv("FAKE_AGENT_WAIT_FOR", str(go))
    monkeypatch.setenv("FAKE_AGENT_PIDFILE", str(pidfile))
    write_todo(repo, ["a", "b", "c"])
    lock = RepoLayout(repo).lock
    eng = engine(repo)
    outcome: dict = {}

    def loop() -> None:
        try:
            outcome["reason"] = eng.run_loop()
        except Exception as exc:
            outcome["error"] = exc

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    wait_until(lambda: inspect_lock(lock).agent_pgid, what="the lock to record the agent")
    lock.unlink()  # by hand, as the agent works
    go.touch()  # now the run may end
    t.join(30)
    assert not t.is_alive()
    message = lock_lost_message(lock, LockInfo(LockStatus.UNLOCKED))
    assert isinstance(outcome.get("error"), LockError) and str(outcome["error"]) == message, outcome
    assert not lock.exists()  # never made again
    agents = read_pids(pidfile)
    assert len(agents) == 1 and not any(pid_alive(p) for p in agents)  # no second run, nothing left running
    s = state(repo)
    assert (s.status, s.stop_reason, s.runner_pid, s.last_run_id, s.last_exit_code) == ("error", "interrupted",
                                                                                         None, 1, 0)
    assert s.last_run_finished_at
    lines = read_run(log_path(repo), 3, 1)
    assert lines[-2].endswith(f"[run 1] car: {message}") and lines[-1].endswith("=== run 1 end (code 0) ===")


def test_a_lock_taken_over_between_runs_ends_the_loop_before_the_next(repo: Path) -> None:
    write_todo(repo, ["a", "b", "c"])
    layout = RepoLayout(repo)
    config = load_config(layout.config)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def after_run_1() -> None:  # on the loop's thread, once run 1 is on record: between the runs
        if load_state(layout.state).last_run_finished_at and inspect_lock(layout.lock).pid == os.getpid():
            layout.lock.write_text(json.dumps({"pid": holder.pid, "pid_started": None, "started_at": "now"}))

    try:
        with pytest.raises(LockError) as raised:
            Engine(config, on_change=after_run_1).run_loop()
        taken = inspect_lock(layout.lock)
        assert str(raised.value) == lock_lost_message(layout.lock, taken) and f"pid {holder.pid}" in str(raised.value)
        assert taken.pid == holder.pid  # the other owner's lock stays
        s = state(repo)
        assert (s.last_run_id, s.status, s.runner_pid) == (1, "running", os.getpid())  # left to the lock's owner
        assert log_path(repo).read_text().rstrip().endswith(f"car: {raised.value}")
    finally:
        holder.kill()
        holder.wait()


def test_a_prompt_too_big_for_an_agent_is_warned_of_in_the_run_naming_the_largest_doc(repo: Path) -> None:
    spec = repo / ".codex-autorunner" / "SPEC.md"
    spec.write_text("# SPEC\n" + "a line of a spec that grew far too long\n" * 30_000)  # ~1.2 MB
    assert engine(repo).run_loop(once=True) is StopReason.STOP_AFTER_RUNS
    lines = read_run(log_path(repo), 3, 1)
    warning = next(line for line in lines if "car: warning: the prompt is" in line)
    assert f"the largest part is {spec} (1,200,007): trim it" in warning
    spec.write_text("# SPEC\n")
    assert engine(repo).run_loop(once=True) is StopReason.TODO_DONE  # run 2 ticked the last item
    assert not any("car: warning" in line for line in read_run(log_path(repo), 3, 2))


def test_a_state_json_car_cannot_write_is_one_line_and_the_lock_is_released(repo: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: a state write that failed mid-loop raised a bare OSError and left the lock behind."""
    go = tmp_path / "go"
    monkeypatch.setenv("FAKE_AGENT_WAIT_FOR", str(go))
    eng = engine(repo)
    outcome: dict = {}
    t = threading.Thread(target=lambda: outcome.setdefault("error", _raised(lambda: eng.run_loop(once=True))))
    t.start()
    wait_until(lambda: eng.current_run_id == 1, what="run 1 to start")
    layout = RepoLayout(repo)
    layout.state.unlink()
    layout.state.mkdir()  # the run's end cannot replace it
    go.touch()
    t.join(30)
    error = outcome["error"]
    assert type(error) is CarError and str(error).startswith(f"{layout.state}: cannot write (Is a directory)")
    assert inspect_lock(layout.lock).status is LockStatus.UNLOCKED
    assert "=== run 1 end (code 0) ===" in log_path(repo).read_text()  # the run itself is on record


def _raised(call) -> BaseException:
    try:
        call()
    except BaseException as exc:
        return exc
    raise AssertionError("expected an error")


def test_the_wallclock_limit_cuts_the_sleep_and_starts_no_run_after_it(repo: Path) -> None:
    """QA: the loop slept its whole sleep past the limit, then started a run that was killed at once."""
    write_todo(repo, ["a", "b", "c"])
    eng = engine(repo, sleep_seconds=30, max_wallclock_seconds=2)
    t, result = loop_in_thread(eng)
    t.join(15)
    overslept = t.is_alive()
    if overslept:  # end it, so that it does not outlive the test
        eng.kill()
        t.join(30)
    assert not overslept, "the loop slept past max_wallclock_seconds"
    assert result["reason"] is StopReason.WALLCLOCK
    s = state(repo)
    assert (s.last_run_id, s.last_exit_code, s.stop_reason) == (1, 0, "wallclock")


def test_run_ids_go_on_after_state_json_was_deleted(repo: Path) -> None:
    """QA: deleting state.json (as an error message advises) numbered the next run 1 again."""
    write_todo(repo, ["a", "b", "c"])
    engine(repo).run_loop(once=True)
    RepoLayout(repo).state.unlink()
    engine(repo).run_loop(once=True)
    assert state(repo).last_run_id == 2
    assert [r.id for r in list_runs(log_path(repo), 3)] == [1, 2]
    records = [json.loads(line) for line in RepoLayout(repo).runs.read_text().splitlines()]
    assert [r["id"] for r in records] == [1, 2]


def test_run_ids_go_on_after_state_json_and_runs_jsonl_were_both_deleted(repo: Path) -> None:
    """QA: with both gone, runs were numbered from 1 again while the log held runs 1-2: `car log --run 1`
    then showed only the newest run 1."""
    write_todo(repo, ["a", "b", "c", "d"])
    engine(repo).run_loop(once=True)
    engine(repo).run_loop(once=True)
    RepoLayout(repo).state.unlink()
    RepoLayout(repo).runs.unlink()
    engine(repo).run_loop(once=True)
    assert state(repo).last_run_id == 3
    assert [r.id for r in list_runs(log_path(repo), 3)] == [1, 2, 3]


def test_a_runs_file_that_cannot_be_appended_stops_the_loop_before_the_agent_runs(repo: Path) -> None:
    """QA: runs.jsonl left by another user (here: immutable) was found only after the agent's work,
    and state.json then said 'interrupted' while the log said 'end (code 0)'."""
    write_todo(repo, ["a", "b", "c"])
    engine(repo).run_loop(once=True)
    todo = (repo / ".codex-autorunner" / "TODO.md").read_text()
    runs = RepoLayout(repo).runs
    with unwritable(runs):
        done = run_car("once", cwd=repo)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith(f"car: {runs}: cannot write (") and "Traceback" not in done.stderr, done.stderr
    assert (repo / ".codex-autorunner" / "TODO.md").read_text() == todo  # the agent never ran
    assert (state(repo).status, state(repo).last_run_id) == ("idle", 1) and not RepoLayout(repo).lock.exists()
    assert run_car("once", cwd=repo).returncode == 0 and state(repo).last_run_id == 2
