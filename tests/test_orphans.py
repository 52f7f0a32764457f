"""A loop that dies without cleanup (kill -9, crash, OOM) leaves its agent running: whatever finds
its stale lock ends that orphan first (car kill, car status, car resume, the hub), and never signals
a group the lock's numbers no longer name. All real processes, every wait bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, List, Optional, Tuple

import pytest

from car.agent import TOKEN_VAR, AgentProcess
from car.config import HubConfig, load_config
from car.engine import Engine
from car.layout import RepoLayout
from car.lock import LockInfo, acquire_lock, inspect_lock, process_start_time, update_lock
from car.logs import open_run_log
from car.recovery import end_orphaned_run, find_orphan, reconcile
from car.state import RepoState, load_state, save_state
from car.status import LockStatus

from hub_fixtures import agent_repos, make_hub, started, wait_status
from support import (
    FAKE_AGENT,
    agent_and_child,
    car_cmd,
    car_env,
    default_sighup,
    make_repo,
    pid_alive,
    read_pids,
    run_car,
    start_car,
    update_config,
    wait_until,
)

# An agent for the run that follows an orphan: it notes which of PROBE_PIDS are alive as it starts.
# Any pid in PROBE_OUT means two agents ran at once.
PROBE_AGENT = textwrap.dedent("""
    import os, sys
    sys.stdin.read()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    pids = [int(p) for p in os.environ["PROBE_PIDS"].split()]
    with open(os.environ["PROBE_OUT"], "w") as fh:
        fh.write(" ".join(str(p) for p in pids if alive(p)) + "\\n")
    print("probe: done", flush=True)
""")

def wait_for_agent(repo: Path, pidfile: Path) -> Tuple[List[int], LockInfo]:
    """The hanging agent's pid and its child's, once the lock records the agent's group and token."""
    pids = agent_and_child(pidfile)
    info = wait_until(lambda: (lambda i: i if i.run_token else None)(inspect_lock(RepoLayout(repo).lock)), 10,
                      "the lock to record the agent")
    return pids, info


@pytest.fixture
def orphaned(repo: Path, tmp_path: Path) -> Iterator[Tuple[List[int], LockInfo]]:
    """`car run` killed -9 mid-run: its hanging agent and the agent's child run on."""
    pidfile = tmp_path / "pids"
    car = start_car(repo, "run", FAKE_AGENT_MODE="hang", FAKE_AGENT_PIDFILE=str(pidfile))
    try:
        try:
            pids, info = wait_for_agent(repo, pidfile)
        finally:
            car.kill()
            car.communicate(timeout=30)
        assert all(pid_alive(p) for p in pids), "the agent died with car: nothing to test"
        assert info.agent_pgid == pids[0]
        assert inspect_lock(RepoLayout(repo).lock).status is LockStatus.LOCKED_STALE
        yield pids, info
    finally:
        kill_left(read_pids(pidfile))


@contextmanager
def ended_at_exit(car: subprocess.Popen, pidfile: Path) -> Iterator[None]:
    """Whatever the test's outcome, car and the agent's processes are gone after it."""
    try:
        yield
    finally:
        if car.poll() is None:
            car.kill()
            car.communicate(timeout=30)
        kill_left(read_pids(pidfile))


def kill_left(pids: List[int]) -> None:
    for pid in pids:  # only if a test failed: never leave a hanging process behind
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def use_probe_agent(repo: Path, tmp_path: Path, pids: List[int]) -> Tuple[Path, dict]:
    probe, out = tmp_path / "probe_agent.py", tmp_path / "probe.out"
    probe.write_text(PROBE_AGENT)
    update_config(repo, codex={"binary": sys.executable, "args": [str(probe)]})
    return out, {"PROBE_PIDS": " ".join(map(str, pids)), "PROBE_OUT": str(out)}


def log_text(repo: Path) -> str:
    return (repo / ".codex-autorunner" / "codex-autorunner.log").read_text()


# the CLI after `car run` was killed -9 ----------------------------------------------------------
def test_kill_ends_the_orphaned_agent_and_its_child(repo: Path, orphaned) -> None:
    pids, info = orphaned
    killed = run_car("kill", cwd=repo)
    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.splitlines() == [
        f"car: the loop's owner (pid {info.pid}) died and left its run going; ended 2 process(es) of that "
        f"run (agent group {pids[0]}); `car resume` continues the loop"]
    assert not any(pid_alive(p) for p in pids)
    state = load_state(RepoLayout(repo).state)
    assert (state.status, state.stop_reason) == ("error", "interrupted")  # and its run is closed
    assert "ended 2 process(es) of that run" in log_text(repo)
    assert log_text(repo).rstrip().endswith("=== run 1 end (interrupted) ===")
    again = run_car("kill", cwd=repo)
    assert (again.returncode, again.stdout) == (0, f"car: no loop is running in {repo}; nothing to kill\n")


def test_kill_with_a_broken_config_ends_the_orphan_and_leaves_closing_its_run_to_the_real_log(
        repo: Path, tmp_path: Path) -> None:
    """Review: with config.yml broken, `car kill` stood in the defaults and closed a dead loop's run in
    the default log, though the run's own log is log.path's; now it ends the orphan, and the run is
    closed in its own log once the config reads again."""
    update_config(repo, log={"path": ".codex-autorunner/own.log"})
    pidfile, layout = tmp_path / "pids", RepoLayout(repo)
    default_log = repo / ".codex-autorunner" / "codex-autorunner.log"  # made by `car init`, empty
    car = start_car(repo, "run", FAKE_AGENT_MODE="hang", FAKE_AGENT_PIDFILE=str(pidfile))
    with ended_at_exit(car, pidfile):
        pids, info = wait_for_agent(repo, pidfile)
        car.kill()
        car.communicate(timeout=30)
        good = layout.config.read_text()
        layout.config.write_text("version: 2\nmode: repo\nrunner: [\n")
        killed = run_car("kill", cwd=repo)
        assert killed.returncode == 0, killed.stderr
        assert killed.stdout.splitlines() == [
            f"car: the loop's owner (pid {info.pid}) died and left its run going; ended 2 process(es) of that "
            f"run (agent group {pids[0]}); once .codex-autorunner/config.yml reads again, `car status` closes "
            "that run in its log and history"]
        assert "invalid YAML" in killed.stderr and "goes on with the default settings" in killed.stderr
        assert not any(pid_alive(p) for p in pids)
        assert default_log.read_text() == ""
        own_log = repo / ".codex-autorunner" / "own.log"
        assert "=== run 1 end" not in own_log.read_text()
        assert load_state(layout.state).status == "running"  # left for the command that can find the log
        layout.config.write_text(good)
        status = run_car("status", cwd=repo)
        assert status.returncode == 0, status.stderr
        assert own_log.read_text().rstrip().endswith("=== run 1 end (interrupted) ===")
        assert default_log.read_text() == ""
        state = load_state(layout.state)
        assert (state.status, state.stop_reason) == ("error", "interrupted")
        assert [r["id"] for r in map(json.loads, layout.runs.read_text().splitlines())] == [1]


def test_resume_ends_the_orphan_before_it_starts_a_new_agent(repo: Path, orphaned, tmp_path: Path) -> None:
    pids, info = orphaned
    out, probe_env = use_probe_agent(repo, tmp_path, pids)
    resumed = run_car("resume", "--once", cwd=repo, env=car_env(**probe_env))
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.splitlines()
    assert lines[0].startswith(f"car: the loop's owner (pid {info.pid}) died and left its run going; ended 2")
    assert lines[1] == "car: cleared the stale lock"
    assert out.read_text() == "\n", f"the new agent started while the orphan ran: {out.read_text()}"
    assert not any(pid_alive(p) for p in pids)
    assert load_state(RepoLayout(repo).state).last_run_id == 2


def test_status_ends_the_orphan_before_it_closes_the_run(repo: Path, orphaned) -> None:
    pids, info = orphaned
    status = run_car("status", "--json", cwd=repo)
    assert status.returncode == 0, status.stderr
    assert status.stderr.splitlines() == [
        f"car: warning: the loop's owner (pid {info.pid}) died and left its run going; ended 2 process(es) "
        f"of that run (agent group {pids[0]})",
        "car: warning: the last run's owner died; its run is now closed as interrupted"]
    assert not any(pid_alive(p) for p in pids)
    data = json.loads(status.stdout)
    assert (data["state_status"], data["stop_reason"], data["lock_status"]) == ("error", "interrupted",
                                                                                "locked_stale")


def test_run_refuses_the_stale_lock_but_ends_the_orphan_first(repo: Path, orphaned) -> None:
    pids, _ = orphaned
    again = run_car("run", cwd=repo)
    assert again.returncode == 1 and "stale lock" in again.stderr
    assert not any(pid_alive(p) for p in pids)


# SIGHUP ------------------------------------------------------------------------------------------
def test_sighup_ends_the_agent_and_records_the_run_like_sigterm(repo: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    car = start_car(repo, "run", FAKE_AGENT_MODE="hang", FAKE_AGENT_PIDFILE=str(pidfile))
    with ended_at_exit(car, pidfile):
        pids, _ = wait_for_agent(repo, pidfile)
        car.send_signal(signal.SIGHUP)
        out, _ = car.communicate(timeout=30)
        alive = [p for p in pids if pid_alive(p)]
    assert car.returncode == 0 and "loop ended: killed" in out, out
    assert alive == []
    layout = RepoLayout(repo)
    assert not layout.lock.exists()
    state = load_state(layout.state)
    assert (state.status, state.stop_reason, state.runner_pid) == ("idle", "killed", None)
    assert "=== run 1 end (code" in log_text(repo)


def start_on_a_terminal(repo: Path, pidfile: Path, stderr: Optional[IO[bytes]] = None) -> Tuple[subprocess.Popen, int]:
    """`car run` with a hanging agent, on a terminal of its own (stderr too, unless given): car and
    the terminal's far end, whose closing is the window closing."""
    import fcntl
    import pty
    import termios

    terminal, tty = pty.openpty()

    def take_the_terminal() -> None:  # after setsid: car leads a session, and this is its terminal
        default_sighup()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    car = subprocess.Popen(car_cmd("run"), cwd=repo, env=car_env(FAKE_AGENT_MODE="hang",
                                                                 FAKE_AGENT_PIDFILE=str(pidfile)),
                           stdin=tty, stdout=tty, stderr=stderr or tty, start_new_session=True,
                           preexec_fn=take_the_terminal)
    os.close(tty)
    return car, terminal


def test_closing_the_terminal_of_car_run_ends_its_agent(repo: Path, tmp_path: Path) -> None:
    """The real thing: car run on a terminal of its own, whose far end then goes away."""
    pidfile = tmp_path / "pids"
    car, terminal = start_on_a_terminal(repo, pidfile)
    with ended_at_exit(car, pidfile):
        pids, _ = wait_for_agent(repo, pidfile)
        os.close(terminal)  # the terminal window closes: the kernel hangs up car's session
        car.wait(timeout=30)
        alive = [p for p in pids if pid_alive(p)]
    # its own exit code (killed, as for SIGTERM): its last line, to a terminal that is gone (EIO), is dropped
    assert car.returncode == 0, "car died of the hangup, or of printing to the terminal that is gone"
    assert alive == []
    assert not RepoLayout(repo).lock.exists()
    assert load_state(RepoLayout(repo).state).stop_reason == "killed"


def test_the_last_line_to_a_terminal_that_is_gone_is_no_traceback(repo: Path, tmp_path: Path) -> None:
    """As above, with stderr kept in a file: what car says after the hangup is nothing at all."""
    pidfile, errors = tmp_path / "pids", tmp_path / "stderr"
    with errors.open("wb") as stderr:
        car, terminal = start_on_a_terminal(repo, pidfile, stderr)
    with ended_at_exit(car, pidfile):
        wait_for_agent(repo, pidfile)
        os.close(terminal)
        car.wait(timeout=30)
    assert (car.returncode, errors.read_text()) == (0, "")
    assert load_state(RepoLayout(repo).state).stop_reason == "killed"


# which group is the run's ------------------------------------------------------------------------
def spawn_orphan(tmp_path: Path, token: str = "", **env: str) -> Tuple[subprocess.Popen, List[int]]:
    """The fake agent, hanging with a child, in a session of its own; `token` as its run marker."""
    pidfile = tmp_path / f"orphan-{token or 'none'}"
    env = dict(os.environ, FAKE_AGENT_MODE="hang", FAKE_AGENT_PIDFILE=str(pidfile), **env)
    if token:
        env[TOKEN_VAR] = token
    proc = subprocess.Popen([sys.executable, str(FAKE_AGENT)], env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=tmp_path)
    return proc, agent_and_child(pidfile)


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def write_stale_lock(repo: Path, agent_pgid: int, token: str, agent_started: Optional[str] = None) -> None:
    RepoLayout(repo).lock.write_text(json.dumps({
        "pid": dead_pid(), "pid_started": "1", "started_at": "then", "agent_pgid": agent_pgid,
        "run_token": token, "agent_started": agent_started}))


def reap(proc: subprocess.Popen, pids: List[int]) -> None:
    kill_left(pids)
    proc.wait(timeout=10)


def test_a_group_whose_id_was_reused_is_never_signalled(repo: Path, tmp_path: Path) -> None:
    """After a reboot the recorded group id may name a stranger's group: no marker, another start."""
    stranger, pids = spawn_orphan(tmp_path)
    try:
        write_stale_lock(repo, stranger.pid, "aa" * 12, agent_started="1")
        assert find_orphan(inspect_lock(RepoLayout(repo).lock)) == (None, [])
        killed = run_car("kill", cwd=repo)
        assert killed.returncode == 0 and "nothing to kill" in killed.stdout
        assert all(pid_alive(p) for p in pids)
    finally:
        reap(stranger, pids)


def test_the_leaders_start_time_proves_a_group_whose_members_lost_the_marker(repo: Path, tmp_path: Path) -> None:
    agent, pids = spawn_orphan(tmp_path)  # no marker: as if the agent had cleared its environment
    try:
        write_stale_lock(repo, agent.pid, "bb" * 12, agent_started=process_start_time(agent.pid))
        orphan = end_orphaned_run(load_config(RepoLayout(repo).config))
        assert orphan is not None and (orphan.pgid, sorted(orphan.pids)) == (agent.pid, sorted(pids))
        assert not any(pid_alive(p) for p in pids)
    finally:
        reap(agent, pids)


def test_a_live_owner_is_never_signalled_by_recovery(repo: Path, tmp_path: Path) -> None:
    token = "cc" * 12
    agent, pids = spawn_orphan(tmp_path, token)
    try:
        lock = RepoLayout(repo).lock
        acquire_lock(lock)  # held by this process: a live owner
        assert update_lock(lock, agent.pid, token)
        save_state(RepoLayout(repo).state, RepoState(status="running", last_run_id=1))
        config = load_config(RepoLayout(repo).config)
        assert end_orphaned_run(config) is None and not reconcile(config)
        assert all(pid_alive(p) for p in pids)
    finally:
        reap(agent, pids)


# the hub ---------------------------------------------------------------------------------------
@contextmanager
def hub_orphan(tmp_path: Path, token: str, state: RepoState) -> Iterator[Tuple[HubConfig, Path, List[int]]]:
    """A hub whose repo `alpha` has a stale lock (its owner dead) and a live orphaned run (an agent
    and its child carrying `token`), with `state` in its state.json; the orphan is reaped after."""
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    repo = root / "alpha"
    agent, pids = spawn_orphan(tmp_path, token)
    try:
        write_stale_lock(repo, agent.pid, token)
        save_state(RepoLayout(repo).state, state)
        yield config, repo, pids
    finally:
        reap(agent, pids)


def test_hub_resume_ends_the_orphan_of_a_dead_owner_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # an older car closed the run but left the agent: the hub's scan has no run to close
    closed = RepoState(status="error", last_run_id=1, stop_reason="interrupted")
    with hub_orphan(tmp_path, "dd" * 12, closed) as (config, repo, pids):
        out, probe_env = use_probe_agent(repo, tmp_path, pids)
        for key, value in probe_env.items():
            monkeypatch.setenv(key, value)
        with started(config) as hub:
            assert hub.repo("alpha").lock_status.value == "locked_stale"
            assert all(pid_alive(p) for p in pids)
            hub.resume("alpha", once=True)
            entry = wait_status(hub, "alpha", "idle")
            assert entry.last_run_id == 2 and entry.lock_status.value == "unlocked"
        assert out.read_text() == "\n", f"the new agent started while the orphan ran: {out.read_text()}"
        assert not any(pid_alive(p) for p in pids)
        assert "died and left its run going; ended 2 process(es)" in config.log_path.read_text()


def test_a_hub_started_after_a_crash_ends_the_orphan_before_closing_its_run(tmp_path: Path):
    with hub_orphan(tmp_path, "ee" * 12, RepoState(status="running", last_run_id=1)) as (config, _, pids):
        with started(config) as hub:
            entry = hub.repo("alpha")
            assert (entry.stop_reason, entry.lock_status.value) == ("interrupted", "locked_stale")
            assert not any(pid_alive(p) for p in pids)
        assert "alpha: the loop's owner" in config.log_path.read_text()


def test_the_run_marker_is_in_the_lock_before_the_agent_exists(tmp_path: Path):
    """Should car die right after the spawn, before it records the agent, the marker already
    in the lock still lets a later kill, resume or status find the run's processes."""
    repo = make_repo(tmp_path / "repo")
    seen: List[Tuple[str, Optional[str]]] = []

    def spawn(argv: List[str], cwd: Path, prompt: Path, token: str) -> AgentProcess:
        seen.append((token, inspect_lock(RepoLayout(repo).lock).run_token))
        return AgentProcess.spawn(argv, cwd, prompt, token)

    Engine(load_config(RepoLayout(repo).config), spawn=spawn).run_loop(once=True)
    assert len(seen) == 1 and seen[0][0] and seen[0][0] == seen[0][1]


def test_a_loop_of_another_process_dying_while_the_hub_serves_is_closed_at_its_poll(tmp_path: Path):
    """`car run` in a terminal on a hub repo is killed -9: the hub, which only watched that loop, ends
    the agent it left going and closes its run, instead of listing a run under way that nobody runs."""
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    pidfile = tmp_path / "pids"
    with started(config) as hub:
        proc = start_car(root / "alpha", "run", FAKE_AGENT_MODE="hang", FAKE_AGENT_PIDFILE=str(pidfile))
        try:
            pids = agent_and_child(pidfile)
            entry = wait_status(hub, "alpha", "locked")
            assert entry.lock_status.value == "locked_alive" and entry.current_run_id == 1
            proc.kill()
            proc.wait(10)
            wait_until(lambda: not any(pid_alive(p) for p in pids), 20, "the orphaned agent and child to be ended")
            entry = wait_until(lambda: (lambda e: e if e.stop_reason == "interrupted" else None)(hub.repo("alpha")),
                               20, "the run to be closed")
            assert entry.current_run_id is None and entry.last_run_finished_at
            assert (entry.status.value, entry.lock_status.value) == ("locked", "locked_stale")  # for resume
        finally:
            proc.kill()
            reap(proc, read_pids(pidfile) if pidfile.exists() else [])
    log = config.log_path.read_text()
    assert f"alpha: the loop's owner (pid {proc.pid}) died and left its run going; ended 2 process(es)" in log
    assert "alpha: the last run's owner died; closed it as interrupted" in log


def test_a_run_whose_loop_could_not_close_it_is_closed_at_the_hubs_poll(tmp_path: Path):
    """QA: a loop whose last writes failed (a full disk) released its lock but left state.json saying
    running; the hub listed the repo as idle, its run never closed, until a GET of its state."""
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    with started(config) as hub:
        assert hub.repo("alpha").status.value == "idle"
        alpha = load_config(RepoLayout(root / "alpha").config)
        log = open_run_log(alpha)
        log.start_run(1)
        log.write("working", 1)
        log.close()
        save_state(RepoLayout(root / "alpha").state, RepoState(status="running", last_run_id=1,
                                                               last_run_started_at="2026-11-25T00:00:00Z"))
        entry = wait_until(lambda: (lambda e: e if e.stop_reason == "interrupted" else None)(hub.repo("alpha")),
                           20, "the run to be closed at the hub's poll")
        assert (entry.status.value, entry.lock_status.value) == ("error", "unlocked")
        assert load_state(RepoLayout(root / "alpha").state).status == "error"
    text = alpha.log_path.read_text()  # no owner pid to name: the lock was released
    assert "car: the loop of this run ended without closing it; last heard of it at" in text and "pid None" not in text
    assert text.rstrip().endswith("=== run 1 end (interrupted) ===")

