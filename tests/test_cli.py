from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from car.cli import WRONG_MODE_REPO_CMD, main
from car.config import RACY_NS, load_config
from car.files import read_jsonl
from car.layout import RepoLayout
from car.lock import LockInfo, inspect_lock, lock_lost_message
from car.status import LockStatus

from support import (
    FAKE_AGENT,
    agent_and_child,
    car_env,
    hang_agent,
    make_git_repo,
    make_repo,
    pid_alive,
    read_pids,
    run_car,
    start_car,
    update_config,
    wait_until,
    write_todo,
)


def finish(proc: subprocess.Popen, timeout: float = 30) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def test_version_and_help() -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    with pytest.raises(SystemExit):
        main(["status", "--help"])


def test_init_then_status_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root = make_git_repo(tmp_path / "r")
    monkeypatch.chdir(root)
    assert main(["init"]) == 0
    assert "initialized" in capsys.readouterr().out
    (root / "src").mkdir()
    monkeypatch.chdir(root / "src")  # nearest config upward
    assert main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "idle" and data["lock_status"] == "unlocked" and data["outstanding_todos"] == 1


def test_repo_flag_overrides_lookup(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--repo", str(repo), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outstanding_todos"] == 2
    assert main(["status", "--repo", str(repo)]) == 0  # after the subcommand too


def test_no_config_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--repo", str(tmp_path), "status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "car init" in err


def test_repo_command_at_a_hub_root_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    cfg = tmp_path / ".codex-autorunner" / "config.yml"
    cfg.parent.mkdir()
    cfg.write_text("version: 2\nmode: hub\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert WRONG_MODE_REPO_CMD.split("{")[0] in err and "mode: hub" in err and str(cfg) in err
    assert err.count("\n") == 1


def test_bad_config_is_one_line_naming_the_line(repo: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (repo / ".codex-autorunner" / "config.yml").write_text("version: 2\nrunner:\n  sleep_seconds: soon\n")
    monkeypatch.chdir(repo)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "config.yml:3: runner.sleep_seconds: expected a number" in err and "Traceback" not in err


def test_missing_agent_binary_is_reported_before_a_run(repo: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    update_config(repo, codex={"binary": "/nowhere/codex"})
    monkeypatch.chdir(repo)
    assert main(["run"]) == 1
    assert "codex.binary" in capsys.readouterr().err
    assert not (repo / ".codex-autorunner" / "codex-autorunner.log").read_text()
    assert main(["doctor"]) == 1
    assert "FAIL  agent binary /nowhere/codex does not exist" in capsys.readouterr().out


def test_doctor_passes_on_a_good_repo(repo: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(repo)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "ok    git repository" in out


def test_doctor_names_a_directory_where_a_doc_goes_and_checks_on(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys) -> None:
    todo = repo / ".codex-autorunner" / "TODO.md"
    todo.unlink()
    todo.mkdir()
    monkeypatch.chdir(repo)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  doc todo: {todo} is not a file (a directory?); move it away and run `car init`" in out
    assert "ok    git repository" in out and "1 problem(s) found" in out


def test_run_and_log_by_run_id(repo: Path) -> None:
    proc = run_car("run", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert "loop ended: todo_done" in proc.stdout
    out = run_car("log", "--run", "2", cwd=repo).stdout.splitlines()
    assert out[0].endswith("=== run 2 start ===") and out[-1].endswith("=== run 2 end (code 0) ===")
    missing = run_car("log", "--run", "9", cwd=repo)
    assert missing.returncode == 1 and "runs 1..2 are in the log" in missing.stderr
    assert len(run_car("log", "--tail", "3", cwd=repo).stdout.splitlines()) == 3


def test_failed_run_exits_1(repo: Path) -> None:
    proc = run_car("once", cwd=repo, env=car_env(FAKE_AGENT_MODE="fail"))
    assert proc.returncode == 1 and "agent_failed" in proc.stdout


def test_second_run_in_the_same_repo_exits_1_naming_the_holder(repo: Path, tmp_path: Path) -> None:
    first = start_car(repo, "run", FAKE_AGENT_MODE="hang", FAKE_AGENT_PIDFILE=str(tmp_path / "pids"))
    try:
        wait_until(lambda: read_pids(tmp_path / "pids"), what="first loop's agent")
        started = time.monotonic()
        second = run_car("run", cwd=repo, timeout=10)
        assert second.returncode == 1
        assert f"held by pid {first.pid}" in second.stderr
        assert time.monotonic() - started < 10
    finally:
        first.send_signal(signal.SIGTERM)
        finish(first)


def test_sigterm_ends_the_agent_records_the_run_and_unlocks(repo: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    proc = start_car(repo, "run", FAKE_AGENT_MODE="hang", FAKE_AGENT_PIDFILE=str(pidfile))
    pids = agent_and_child(pidfile)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    assert "loop ended: killed" in out
    assert not any(pid_alive(p) for p in pids)
    layout = RepoLayout(repo)
    assert not layout.lock.exists()
    state = json.loads(layout.state.read_text())
    assert state["status"] == "idle" and state["stop_reason"] == "killed" and state["runner_pid"] is None
    assert "=== run 1 end (code" in (repo / ".codex-autorunner" / "codex-autorunner.log").read_text()


def test_kill_dash_9_of_car_run_is_reconciled(repo: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    proc = start_car(repo, "run", FAKE_AGENT_MODE="hang", FAKE_AGENT_PIDFILE=str(pidfile))
    pids = agent_and_child(pidfile)
    proc.kill()
    finish(proc)
    try:
        status = run_car("status", "--json", cwd=repo)
        data = json.loads(status.stdout)
        assert data["state_status"] == "error" and data["stop_reason"] == "interrupted"
        assert data["lock_status"] == "locked_stale" and data["status"] == "locked"
        assert "closed as interrupted" in status.stderr
        log = (repo / ".codex-autorunner" / "codex-autorunner.log").read_text()
        assert log.rstrip().endswith("=== run 1 end (interrupted) ===")
        # the run was still going until status ended it: that is its end, and the history keeps it
        runs = read_jsonl(RepoLayout(repo).runs)
        assert [(r["id"], r["end_reason"], r["exit_code"]) for r in runs] == [(1, "interrupted", None)]
        ended = next(line for line in log.splitlines() if "left its run going" in line).split(" ", 1)[0]
        assert runs[0]["finished_at"] == data["last_run_finished_at"] >= ended
        assert "last run:   1 (no exit code, started " in run_car("status", cwd=repo).stdout
        again = run_car("run", cwd=repo)
        assert again.returncode == 1 and "stale lock" in again.stderr and "car resume" in again.stderr
        resumed = run_car("resume", "--once", cwd=repo, env=car_env(FAKE_AGENT_MODE="ok"))
        assert resumed.returncode == 0, resumed.stderr
        assert "cleared the stale lock" in resumed.stdout
        assert json.loads((repo / ".codex-autorunner" / "state.json").read_text())["last_run_id"] == 2
        assert [r["id"] for r in read_jsonl(RepoLayout(repo).runs)] == [1, 2]
    finally:
        for pid in pids:  # the agent outlived car run -9: that is what kill -9 does
            if pid_alive(pid):
                import os
                os.kill(pid, signal.SIGKILL)


def test_stop_between_runs_and_kill_from_another_process(repo: Path, tmp_path: Path) -> None:
    write_todo(repo, ["a", "b", "c", "d"])
    proc = start_car(repo, "run", FAKE_AGENT_MODE="slow", FAKE_AGENT_SLEEP="0.3", FAKE_AGENT_LINES="3")
    wait_until(lambda: (repo / ".codex-autorunner" / "lock").exists(), what="the loop to lock")
    stop = run_car("stop", cwd=repo)
    assert stop.returncode == 0 and "stop requested" in stop.stdout
    out = finish(proc)
    assert "loop ended: stopped" in out
    assert json.loads((repo / ".codex-autorunner" / "state.json").read_text())["last_run_id"] == 1

    pidfile = tmp_path / "pids"
    proc = start_car(repo, "run", FAKE_AGENT_MODE="hang", FAKE_AGENT_PIDFILE=str(pidfile))
    pids = agent_and_child(pidfile)
    killed = run_car("kill", cwd=repo)
    assert killed.returncode == 0 and "killed the current run" in killed.stdout
    assert "loop ended: killed" in finish(proc)
    assert pid_alive(proc.pid) is False and not any(pid_alive(p) for p in pids)
    assert run_car("stop", cwd=repo).stdout.startswith("car: no loop is running")


@pytest.mark.parametrize("command, unwanted", [
    ("status", ("car.engine", "car.agent", "car.git", "car.logs")),
    ("once", ()),
])
def test_repo_commands_load_only_what_they_need(repo: Path, command: str, unwanted: tuple) -> None:
    """Start-up is most of a short command's cost (issue 5): no YAML once the config is cached."""
    load_config(RepoLayout(repo).config, clock_ns=lambda: time.time_ns() + 2 * RACY_NS)  # cache it now
    code = "import sys; from car.launch import main; main(sys.argv[1:]); print('modules:', *sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code, command], cwd=repo, env=car_env(), capture_output=True,
                         text=True, timeout=60)
    modules = set(out.stdout.splitlines()[-1].split()[1:])
    assert "car.cli" in modules, out.stdout + out.stderr
    unwanted = ("yaml", "car.bootstrap", "car.hub", "car.runner", "car.usage", "car.web", *unwanted)
    assert not [name for name in unwanted if name in modules]


def test_doctor_does_not_wait_on_an_agent_that_hangs_on_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`--version` of an agent that ignores it and hangs (with a child holding its output): doctor
    gives up after VERSION_SECONDS and leaves none of it running."""
    pidfile = hang_agent(monkeypatch, tmp_path)
    repo = make_repo(tmp_path / "repo")
    agent = repo / "agent.sh"  # the fake agent itself as the binary: it takes --version for a prompt
    agent.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_AGENT} \"$@\"\n")
    agent.chmod(0o755)
    update_config(repo, codex={"binary": str(agent), "args": []})
    began = time.monotonic()
    proc = run_car("doctor", cwd=repo, timeout=30)
    assert time.monotonic() - began < 20 and "Traceback" not in proc.stderr, proc.stderr
    assert f"agent {agent}" in proc.stdout
    pids = read_pids(pidfile)
    assert len(pids) == 2 and wait_until(lambda: not any(pid_alive(p) for p in pids), 10, "the agent ended")


def test_a_negative_tail_is_a_usage_error(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    proc = run_car("log", "--tail", "-5", cwd=repo)
    assert proc.returncode == 2 and "expected a whole number >= 0" in proc.stderr and "Traceback" not in proc.stderr


def test_init_in_a_subdirectory_of_a_car_repo_is_a_usage_error(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    sub = repo / "src" / "deep"
    sub.mkdir(parents=True)
    proc = run_car("init", cwd=sub)
    assert proc.returncode == 2 and "already set up" in proc.stderr and "--repo" in proc.stderr, proc.stderr
    assert not (sub / ".codex-autorunner").exists()
    assert run_car("init", "--repo", str(sub), cwd=sub).returncode == 0  # on purpose, it is allowed
    assert (sub / ".codex-autorunner" / "config.yml").is_file()


def test_init_in_a_child_of_a_hub_sets_up_the_child(tmp_path: Path):
    hub = tmp_path / "hub"
    hub.mkdir()
    assert run_car("hub", "init", cwd=hub).returncode == 0
    child = make_git_repo(hub / "child")
    assert run_car("init", cwd=child).returncode == 0
    assert (child / ".codex-autorunner" / "config.yml").is_file()


def test_a_second_run_after_the_lock_was_removed_by_hand_stops_the_first_and_keeps_its_lock(
        repo: Path, tmp_path: Path) -> None:
    """QA: `rm .codex-autorunner/lock` during a run let a second `car run` start next to the first."""
    write_todo(repo, ["a", "b", "c", "d", "e", "f"])
    lock = RepoLayout(repo).lock
    first_pids, first_go = tmp_path / "first", tmp_path / "first-go"
    first = start_car(repo, "run", FAKE_AGENT_WAIT_FOR=str(first_go), FAKE_AGENT_PIDFILE=str(first_pids))
    second = None
    try:
        wait_until(lambda: inspect_lock(lock).agent_pgid, 20, "the first loop's agent in the lock")
        lock.unlink()
        second = start_car(repo, "run", FAKE_AGENT_WAIT_FOR=str(tmp_path / "second-go"))
        wait_until(lambda: inspect_lock(lock).agent_pgid and inspect_lock(lock).pid == second.pid, 20,
                   "the second loop's agent in its lock")
        first_go.touch()  # the first loop's run ends: two loops ran side by side until now
        out = finish(first)
        message = lock_lost_message(lock, LockInfo(LockStatus.LOCKED_ALIVE, pid=second.pid))
        assert first.returncode == 1 and out.splitlines()[-1] == f"car: {message}", out
        assert inspect_lock(lock).pid == second.pid  # the first loop left the second's lock alone
        agents = read_pids(first_pids)
        assert len(agents) == 1 and not any(pid_alive(p) for p in agents)  # one run, and it is over
        assert f"car: {message}" in (repo / ".codex-autorunner" / "codex-autorunner.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                finish(proc)
    assert second is not None and second.returncode == 0 and not lock.exists()  # it released its own lock


def test_a_copy_of_a_running_repo_can_run_while_the_original_runs_on(repo: Path, tmp_path: Path) -> None:
    """QA: `cp -r` of a running repo showed the copy as locked by the original's loop."""
    go, pids = tmp_path / "go", tmp_path / "pids"
    original = start_car(repo, "run", FAKE_AGENT_WAIT_FOR=str(go), FAKE_AGENT_PIDFILE=str(pids))
    try:
        wait_until(lambda: inspect_lock(RepoLayout(repo).lock).agent_pgid, 20, "the original's agent in its lock")
        copy = tmp_path / "copy"
        subprocess.run(["cp", "-a", str(repo), str(copy)], check=True, timeout=30)
        status = json.loads(run_car("status", "--json", cwd=copy).stdout)
        assert status["lock_status"] == "locked_stale" and not status["running"]
        resumed = run_car("resume", "--once", cwd=copy)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "TODO 1/2 done" in resumed.stdout and not RepoLayout(copy).lock.exists()
        agent = read_pids(pids)[0]
        assert pid_alive(agent) and inspect_lock(RepoLayout(repo).lock).pid == original.pid  # untouched
        go.touch()
        original.send_signal(signal.SIGTERM)
        finish(original)
    finally:
        if original.poll() is None:
            original.kill()
            finish(original)


@pytest.mark.parametrize("command, ended", [("stop", "stopped"), ("kill", "killed")])
def test_stop_and_kill_from_another_process_cut_the_sleep_between_runs(repo: Path, command: str,
                                                                       ended: str) -> None:
    """QA: `car stop` / `car kill` from another terminal waited out the whole runner.sleep_seconds."""
    update_config(repo, runner={"sleep_seconds": 30})
    state = RepoLayout(repo).state
    proc = start_car(repo, "run")
    try:
        wait_until(lambda: json.loads(state.read_text()).get("last_run_finished_at"), 20, "run 1 to end")
        asked = run_car(command, cwd=repo)
        assert asked.returncode == 0, asked.stdout + asked.stderr
        out = finish(proc, timeout=10)  # far less than the 30 s sleep
        assert f"loop ended: {ended}" in out
        assert json.loads(state.read_text())["last_run_id"] == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            finish(proc)


BAD_CONFIGS = {
    "a bad value": ("runner:\n  idle_timeout_seconds: 30m\n", "runner.idle_timeout_seconds: expected a number"),
    "broken YAML": ("runner: [\n", "invalid YAML"),
}


def break_config(repo: Path, text: str) -> Path:
    """The repo's config.yml made unreadable for car (a loop running with the good one goes on)."""
    path = RepoLayout(repo).config
    path.write_text("version: 2\nmode: repo\n" + text)
    return path


def config_warning(err: str, path: Path, problem: str, command: str) -> str:
    """The one warning line `car stop` / `car kill` give for a config they cannot read."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"car: warning: {path}") and problem in lines[0], err
    assert f"`car {command}` goes on" in lines[0] and "Traceback" not in err
    return lines[0]


def test_a_disk_that_fills_up_mid_run_ends_the_loop_in_one_line(repo: Path, tmp_path: Path) -> None:
    """QA: a disk that filled up during `car run` ended car with a 40-line traceback (from the lock's
    update after the run) and left state.json saying running. Here no file of car's may grow past 0
    bytes from the middle of the run on (RLIMIT_FSIZE: EFBIG, as ENOSPC, while a file can still be
    removed); car says which file and what to do, in one line, and `car status` closes the run after."""
    import resource

    pidfile = tmp_path / "pids"
    proc = start_car(repo, "run", FAKE_AGENT_MODE="slow", FAKE_AGENT_SLEEP="0.3", FAKE_AGENT_LINES="5",
                     FAKE_AGENT_PIDFILE=str(pidfile))
    try:
        wait_until(lambda: inspect_lock(RepoLayout(repo).lock).agent_pgid, 20, "the agent in the lock")
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (0, 0))  # python ignores SIGXFSZ: writes fail
        out = finish(proc, 60)  # stdout and stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    said = [line for line in out.splitlines() if line.startswith("car: ") and "log" not in line.split(";")[0]]
    assert len(said) == 1 and str(RepoLayout(repo).lock.parent) in said[0], out
    assert "free some disk space, then run the command again" in said[0], out
    status = run_car("status", "--json", cwd=repo)  # with room again, the run is closed as interrupted
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state_status"] == "error", status.stdout


@pytest.mark.parametrize("bad", BAD_CONFIGS)
def test_kill_ends_a_running_loop_although_its_config_went_bad(repo: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    """QA: with a bad value (or broken YAML) edited into config.yml during a run, `car kill` exited 2
    with the config error and the agent ran on; it needs only the lock, and the kill grace."""
    pidfile = hang_agent(monkeypatch, tmp_path)
    proc = start_car(repo, "run")
    try:
        pids = agent_and_child(pidfile)
        text, problem = BAD_CONFIGS[bad]
        path = break_config(repo, text)
        killed = run_car("kill", cwd=repo)
        assert killed.returncode == 0, killed.stdout + killed.stderr
        line = config_warning(killed.stderr, path, problem, "kill")
        assert "the default settings (runner.kill_grace_seconds: 10)" in line
        assert "killed the current run" in killed.stdout
        assert "loop ended: killed" in finish(proc)
        assert wait_until(lambda: not any(pid_alive(p) for p in [proc.pid, *pids]), 10, "the loop and its agent")
        status = run_car("status", cwd=repo)  # status stays strict: it is where the error is reported
        assert status.returncode == 2 and problem in status.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            finish(proc)
        for pid in read_pids(pidfile):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_stop_ends_a_running_loop_after_its_run_although_its_config_went_bad(repo: Path, tmp_path: Path) -> None:
    write_todo(repo, ["a", "b", "c", "d"])
    pidfile = tmp_path / "pids"
    proc = start_car(repo, "run", FAKE_AGENT_MODE="slow", FAKE_AGENT_SLEEP="0.3", FAKE_AGENT_LINES="5",
                     FAKE_AGENT_PIDFILE=str(pidfile))
    try:
        wait_until(lambda: inspect_lock(RepoLayout(repo).lock).agent_pgid, 20, "the agent in the lock")
        text, problem = BAD_CONFIGS["a bad value"]
        path = break_config(repo, text)
        stop = run_car("stop", cwd=repo)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        config_warning(stop.stderr, path, problem, "stop")
        assert "ends its loop after the current run" in stop.stdout
        assert "loop ended: stopped" in finish(proc)
        state = json.loads(RepoLayout(repo).state.read_text())
        assert state["last_run_id"] == 1 and state["last_exit_code"] == 0  # the run went to its end
        agents = read_pids(pidfile)
        assert len(agents) == 1 and not any(pid_alive(p) for p in [proc.pid, *agents])
    finally:
        if proc.poll() is None:
            proc.kill()
            finish(proc)


@pytest.mark.parametrize("command", ["stop", "kill"])
def test_stop_and_kill_keep_off_a_hub_whose_config_is_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys, command: str) -> None:
    """A hub's root is no repo: a config that says mode: hub is never stood in for by a repo's defaults."""
    cfg = tmp_path / ".codex-autorunner" / "config.yml"
    cfg.parent.mkdir()
    cfg.write_text("version: 2\nmode: hub\nhub: [\n")
    monkeypatch.chdir(tmp_path)
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid YAML" in err and "warning" not in err
    assert not (cfg.parent / "stop").exists()


@pytest.mark.parametrize("content, problem", [
    ("#!/nonexistent/interp\necho hi\n", "No such file or directory"),
    (bytes(range(256)) * 4, "Exec format error"),
], ids=["bad shebang", "random bytes"])
def test_doctor_fails_an_agent_that_cannot_be_started(repo: Path, monkeypatch: pytest.MonkeyPatch, capsys,
                                                      content, problem: str) -> None:
    """QA: doctor said `ok agent` for an executable that exec refuses; `car once` then failed."""
    agent = repo / "agent"
    agent.write_bytes(content.encode() if isinstance(content, str) else content)
    agent.chmod(0o755)
    update_config(repo, codex={"binary": str(agent), "args": []})
    monkeypatch.chdir(repo)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    line = next((x for x in out.splitlines() if f"agent {agent}" in x), out)
    assert line.startswith(f"FAIL  cannot start agent {agent}: {problem}") and "codex.binary" in line, line
    if isinstance(content, str):
        assert "/nonexistent/interp" in line  # what to fix: the script's first line
    assert "1 problem(s) found" in out and "ok    git repository" in out


def test_doctor_keeps_an_agent_that_starts_but_prints_no_version(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys) -> None:
    agent = repo / "agent.sh"
    agent.write_text("#!/bin/sh\nexit 1\n")
    agent.chmod(0o755)
    update_config(repo, codex={"binary": str(agent), "args": []})
    monkeypatch.chdir(repo)
    assert main(["doctor"]) == 0
    assert f"ok    agent {agent}\n" in capsys.readouterr().out


def test_stop_says_whether_a_run_is_going(repo: Path) -> None:
    """QA: `car stop` while the loop slept between runs said it 'ends its loop after the current run'."""
    write_todo(repo, ["a", "b", "c", "d"])
    update_config(repo, runner={"sleep_seconds": 30})
    state, lock = RepoLayout(repo).state, RepoLayout(repo).lock
    proc = start_car(repo, "run")
    try:
        wait_until(lambda: json.loads(state.read_text()).get("last_run_finished_at"), 20, "run 1 to end")
        wait_until(lambda: not inspect_lock(lock).run_token, 10, "the loop to sleep between runs")
        stop = run_car("stop", cwd=repo)
        assert stop.returncode == 0 and stop.stdout == f"car: stopped; the loop of pid {proc.pid} has ended\n", \
            stop.stdout + stop.stderr
        assert not lock.exists() and "loop ended: stopped" in finish(proc, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            finish(proc)

    proc = start_car(repo, "run", FAKE_AGENT_MODE="slow", FAKE_AGENT_SLEEP="0.3", FAKE_AGENT_LINES="3")
    try:
        wait_until(lambda: inspect_lock(lock).agent_pgid, 20, "the agent in the lock")
        stop = run_car("stop", cwd=repo)
        assert stop.stdout == f"car: stop requested; pid {proc.pid} ends its loop after the current run\n"
        assert "loop ended: stopped" in finish(proc)
        assert json.loads(state.read_text())["last_run_id"] == 2  # the run went on to its end
    finally:
        if proc.poll() is None:
            proc.kill()
            finish(proc)


def test_status_json_of_a_run_in_another_process_says_when_it_started(repo: Path, tmp_path: Path) -> None:
    """QA: `car status --json` gave current_run_id but current_run_started_at null while `car run` ran."""
    pidfile = tmp_path / "pids"
    proc = start_car(repo, "run", FAKE_AGENT_MODE="hang", FAKE_AGENT_PIDFILE=str(pidfile))
    try:
        agent_and_child(pidfile)
        status = run_car("status", "--json", cwd=repo, timeout=30)
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["running"] is True and data["current_run_id"] == 1
        assert data["current_run_started_at"] is not None
        assert data["current_run_started_at"] == data["last_run_started_at"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_commands_run_with_the_collector_on_and_start_up_frozen(repo: Path) -> None:
    """launch freezes what importing the CLI made (a short command's exit then skips it) and turns
    the collector back on before the command runs: a loop or the hub runs for days."""
    code = ("import gc, sys, car.cli; from car.launch import main\n"
            "car.cli.main = lambda args: print('during', gc.isenabled(), gc.get_freeze_count() > 1000) or 0\n"
            "main(['status']); print('after', gc.isenabled())")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=car_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["during", "True", "True", "after", "True"], out.stdout + out.stderr
