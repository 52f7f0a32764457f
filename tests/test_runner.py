from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from car.config import load_config
from car.errors import ConfigError, Conflict, LockError
from car.layout import RepoLayout
from car.runner import RepoRunner

from support import agent_and_child, hang_agent, pid_alive, update_config, wait_until, write_todo


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=4)
    yield executor
    executor.shutdown(wait=True)


def make_runner(repo: Path, pool: ThreadPoolExecutor) -> RepoRunner:
    return RepoRunner(load_config(RepoLayout(repo).config), pool)


def test_running_from_start_to_end_including_the_sleep_between_runs(repo: Path, pool) -> None:
    update_config(repo, runner={"sleep_seconds": 1.5})
    changes = []
    runner = RepoRunner(load_config(RepoLayout(repo).config), pool,
                        on_change=lambda: changes.append(runner.view().status))  # as the hub observes
    runner.start()
    # between run 1 and run 2 the loop sleeps: still "running", never "locked"
    wait_until(lambda: json.loads(RepoLayout(repo).state.read_text()).get("last_run_finished_at"),
               what="run 1 to finish")
    view = runner.view()
    assert view.status == "running" and view.running and view.lock_status == "locked_alive"
    runner.wait(timeout=30)
    assert runner.view().status == "idle" and not runner.active
    assert "locked" not in changes


def test_start_twice_is_a_conflict_and_stop_ends_after_the_run(repo: Path, pool, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_AGENT_SLEEP", "0.5")
    write_todo(repo, ["a", "b", "c"])
    runner = make_runner(repo, pool)
    runner.start()
    with pytest.raises(Conflict, match="already running"):
        runner.start()
    with pytest.raises(Conflict) as resumed:  # QA: it named the lock as held by this very process
        runner.resume()
    assert str(resumed.value) == f"{repo.name} is already running"
    wait_until(lambda: runner.view().current_run_id == 1, what="run 1")
    runner.request_stop()
    runner.wait(timeout=30)
    view = runner.view()
    assert (view.stop_reason, view.last_run_id, view.status) == ("stopped", 1, "idle")
    with pytest.raises(Conflict, match="no loop is running"):
        runner.request_stop()


def test_kill_ends_the_run_group_and_keeps_this_process(repo: Path, pool, monkeypatch, tmp_path) -> None:
    pidfile = hang_agent(monkeypatch, tmp_path)
    runner = make_runner(repo, pool)
    runner.start()
    pids = agent_and_child(pidfile)
    runner.kill()
    runner.wait(timeout=30)
    assert not any(pid_alive(p) for p in pids)
    assert runner.view().stop_reason == "killed"


def test_a_loop_of_another_process_is_locked_and_reached_through_the_stop_file(repo: Path, pool, tmp_path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        RepoLayout(repo).lock.write_text(json.dumps({"pid": other.pid, "pid_started": None, "started_at": "x"}))
        runner = make_runner(repo, pool)
        assert runner.view().status == "locked"
        with pytest.raises(LockError, match=f"held by pid {other.pid}"):
            runner.start()
        with pytest.raises(LockError):
            runner.resume()  # resume never clears a live lock
        runner.request_stop()
        assert RepoLayout(repo).stop.read_text() == "stop\n"
        assert pid_alive(other.pid)  # nobody signals the lock holder
    finally:
        other.kill()
        other.wait()


def test_resume_clears_a_stale_lock_and_runs(repo: Path, pool) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    RepoLayout(repo).lock.write_text(json.dumps({"pid": dead.pid, "pid_started": "1", "started_at": "x"}))
    runner = make_runner(repo, pool)
    with pytest.raises(LockError, match="stale"):
        runner.start()
    runner.resume(once=True)
    runner.wait(timeout=30)
    assert runner.view().last_run_id == 1 and runner.view().lock_status == "unlocked"


def test_log_lines_reach_the_runners_feed(repo: Path, pool) -> None:
    runner = make_runner(repo, pool)
    runner.start(once=True)
    runner.wait(timeout=30)
    _, lines = runner.feed.read_since(0, timeout=0)
    assert any(line.endswith("=== run 1 start ===") for line in lines)
    assert any("fake-agent: checked off 'first'" in line for line in lines)
    runner.close()


def test_config_edits_apply_at_the_next_start(repo: Path, pool) -> None:
    runner = make_runner(repo, pool)
    update_config(repo, runner={"stop_after_runs": 1, "no_progress_runs": 3})
    write_todo(repo, ["a", "b", "c"])
    runner.start()
    runner.wait(timeout=30)
    assert runner.view().last_run_id == 1 and runner.view().stop_reason == "stop_after_runs"
    (repo / ".codex-autorunner" / "config.yml").write_text("runner: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        runner.start()
    assert not runner.active
