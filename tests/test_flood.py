"""QA: an agent that prints faster than car logs (`yes`). Timeouts, Ctrl-C, `car kill` and a hub's
shutdown used to wait behind the backlog of lines (unbounded, in memory) and never came."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import List

from car.agent import MAX_QUEUED_LINES, Outbox
from car.layout import RepoLayout

from hub_fixtures import make_hub, started, wait_status
from support import make_repo, pid_alive, read_pids, run_car, start_car, update_config, wait_until

# prints short lines without pause, as `yes` does, ignoring SIGINT and SIGTERM: only SIGKILL ends it
FLOOD = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "a").write(f"{os.getpid()}\\n")
chunk = "y\\n" * 4096
while True:
    sys.stdout.write(chunk)
"""
BOUND_SECONDS = 90  # a hang is a failure; the runs below end in a few seconds


def flood_repo(tmp_path: Path, root: Path, **runner: object) -> Path:
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    make_repo(root, items=("never ticked",), **runner)
    update_config(root, codex={"binary": sys.executable, "args": [str(script), str(tmp_path / "pids")]},
                  runner={"kill_grace_seconds": 1, **runner})
    return root


def state(root: Path) -> dict:
    return json.loads(RepoLayout(root).state.read_text())


def gone(tmp_path: Path) -> bool:
    pids = read_pids(tmp_path / "pids")
    return bool(pids) and not any(pid_alive(p) for p in pids)


def test_the_run_timeout_ends_an_agent_that_never_stops_printing(tmp_path: Path) -> None:
    root = flood_repo(tmp_path, tmp_path / "repo", run_timeout_seconds=2)
    done = run_car("once", cwd=root, timeout=BOUND_SECONDS)
    assert "run_timeout" in done.stdout + done.stderr, done.stdout + done.stderr
    assert state(root)["stop_reason"] == "run_timeout" and gone(tmp_path)
    shown = run_car("log", "--run", "1", cwd=root, timeout=BOUND_SECONDS).stdout  # the log may have rotated
    assert "car: run timeout: ending the agent" in shown and "=== run 1 end" in shown


def flood_then_end(tmp_path: Path, how: str) -> Path:
    """`car run` of a flood, ended once 4 MB of lines are logged; nothing of it is left, its lock is gone."""
    root = flood_repo(tmp_path, tmp_path / "repo", kill_grace_seconds=0)  # no grace: SIGKILL at once
    proc = start_car(root, "run")
    try:
        wait_until(lambda: read_pids(tmp_path / "pids"), 30, "the agent to start")
        log = RepoLayout(root).dir / "codex-autorunner.log"
        wait_until(lambda: log.stat().st_size > 4_000_000, 60, "a flood of lines logged")
        if how == "SIGINT":
            proc.send_signal(signal.SIGINT)
        else:
            assert run_car("kill", cwd=root, timeout=BOUND_SECONDS).returncode == 0
        out, _ = proc.communicate(timeout=BOUND_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert gone(tmp_path), out[-2000:]
    assert state(root)["status"] != "running" and not RepoLayout(root).lock.exists(), out[-2000:]
    assert state(root)["stop_reason"] in ("killed", "interrupted"), state(root)
    return root


def test_ctrl_c_ends_a_flooding_agent_without_logging_a_backlog(tmp_path: Path) -> None:
    root = flood_then_end(tmp_path, "SIGINT")
    shown = run_car("log", "--run", "1", cwd=root, timeout=BOUND_SECONDS).stdout.splitlines()
    ending = next(i for i, line in enumerate(shown) if "car: killed: ending the agent" in line)
    # what had been read and not yet logged when the kill came: at most the outbox's bound, the pipe
    # (64 KiB, 2 bytes a line), the reader's buffer and one write in flight; it was unbounded
    assert len(shown) - ending < MAX_QUEUED_LINES + 50_000, len(shown) - ending


def test_car_kill_from_another_terminal_ends_a_flooding_agent(tmp_path: Path) -> None:
    flood_then_end(tmp_path, "car kill")  # the kill may reach the agent before the loop hears of it


def test_a_hub_shutdown_ends_a_flooding_repo_and_releases_its_lock(tmp_path: Path) -> None:
    hub_root = tmp_path / "hub"
    config = make_hub(hub_root)
    root = flood_repo(tmp_path, hub_root / "alpha")
    with started(config) as hub:
        hub.run("alpha")
        wait_status(hub, "alpha", "running")
        wait_until(lambda: read_pids(tmp_path / "pids"), 30, "the agent to start")
    assert gone(tmp_path)
    assert state(root)["status"] != "running" and not RepoLayout(root).lock.exists(), state(root)


def test_the_outbox_holds_the_reader_at_its_bound_and_lets_events_go_first() -> None:
    box = Outbox(max_lines=3)
    put: List[int] = []

    def reader() -> None:
        for i in range(10):
            box.put_line(f"line {i}")
            put.append(i)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    wait_until(lambda: len(put) == 3, 10, "three lines queued")
    assert thread.is_alive() and len(put) == 3  # held at the bound: memory does not grow
    box.put_event(("interrupt",))  # never waits, and comes before the lines
    assert box.get(timeout=5) == ("interrupt",)
    assert [box.get(timeout=5) for _ in range(10)] == [f"line {i}" for i in range(10)]
    thread.join(10)
    assert not thread.is_alive() and put == list(range(10))
