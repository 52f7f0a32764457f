"""`car hub ...` as a user runs it: real `python -m car` processes, signals, exit codes, messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from car import cli_hub
from car.cli import WRONG_MODE_HUB_CMD, WRONG_MODE_REPO_CMD, main
from car.cli_hub import (
    BAD_HUB_PATH,
    INIT_FAILED_IN_SCAN,
    INSIDE_HUB,
    MADE_HUB,
    NO_HUB,
    NO_HUB_AT,
    NO_HUB_INSIDE,
    inside_hub_repo,
    inside_repo,
    no_hub_in_repo,
)
from car.layout import CAR_DIR, GITIGNORE_TEXT, HubLayout, RepoLayout
from car.lock import inspect_lock

from hub_fixtures import agent_repos, git_repos, make_hub, stamp, started
from support import car_cmd, car_env, hang_agent, pid_alive, read_pids, run_car, wait_until


def start_serve(root: Path, tmp_path: Path, name: str = "serve") -> subprocess.Popen:
    """`car hub serve --port 0` with its output in files (a full pipe would block it)."""
    out = (tmp_path / f"{name}.out").open("w")
    err = (tmp_path / f"{name}.err").open("w")
    return subprocess.Popen(car_cmd("hub", "serve", "--port", "0"), cwd=root, env=car_env(),
                            stdout=out, stderr=err)


def stop_proc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


# hub init / scan / status ----------------------------------------------------------------
def test_hub_init_writes_config_empty_manifest_and_gitignore(tmp_path: Path):
    done = run_car("hub", "init", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    layout = HubLayout(tmp_path)
    assert yaml.safe_load(layout.config.read_text())["mode"] == "hub"
    assert yaml.safe_load(layout.config.read_text())["hub"]["auto_init_missing"] is True
    assert yaml.safe_load((layout.dir / "manifest.yml").read_text()) == {"version": 1, "repos": []}
    assert layout.gitignore.read_text() == GITIGNORE_TEXT
    before = stamp(layout.config)
    again = run_car("hub", "init", cwd=tmp_path)
    assert again.returncode == 0 and "kept" in again.stdout and stamp(layout.config) == before


def refused(done: subprocess.CompletedProcess, expected: str) -> None:
    """Exit 2 with exactly this one line (and nothing on stdout)."""
    assert (done.returncode, done.stdout, done.stderr) == (2, "", "car: " + expected + "\n"), done.stderr


def test_hub_init_refuses_inside_a_set_up_repo_naming_it(tmp_path: Path):
    agent_repos(tmp_path, "alpha")  # `car init`'s repo, no hub around it
    alpha = (tmp_path / "alpha").resolve()
    (alpha / "src").mkdir()
    for where, args in ((alpha, ()), (alpha, ("--hub", ".")), (alpha / "src", ("--hub", "."))):
        refused(run_car("hub", "init", *args, cwd=where),
                inside_repo(where, alpha))
    assert not (alpha / "src" / CAR_DIR).exists()
    assert yaml.safe_load(RepoLayout(alpha).config.read_text())["mode"] == "repo"


def test_hub_init_refuses_inside_a_hub_and_names_the_hub_and_its_repo(tmp_path: Path):
    root = tmp_path / "hub"
    make_hub(root)
    git_repos(root, "fresh")  # not initialized yet: the nearest config upward is the hub's
    agent_repos(root, "ready")
    root = root.resolve()
    for name in ("fresh", "ready"):
        repo = root / name
        refused(run_car("hub", "init", "--hub", ".", cwd=repo),
                inside_hub_repo(repo, repo, root))
        (repo / "lib").mkdir()
        refused(run_car("hub", "init", cwd=repo / "lib"),
                inside_hub_repo(repo / "lib", repo, root))
    assert not (root / "fresh" / CAR_DIR).exists() and not (root / "ready" / "lib" / CAR_DIR).exists()
    (root / "sub").mkdir()
    for args in ((), ("--hub", str(root / "sub"))):
        refused(run_car("hub", "init", *args, cwd=root / "sub"), INSIDE_HUB.format(where=root / "sub", root=root))
    assert run_car("hub", "init", "--hub", str(root), cwd=tmp_path).returncode == 0  # the hub itself: idempotent


def test_hub_init_with_a_hub_path_that_does_not_exist_creates_nothing(tmp_path: Path):
    typo = (tmp_path / "typo" / "path").resolve()
    refused(run_car("hub", "init", "--hub", str(typo), cwd=tmp_path),
            BAD_HUB_PATH.format(where=typo, what="does not exist"))
    assert not (tmp_path / "typo").exists()
    (tmp_path / "file").write_text("")
    refused(run_car("hub", "init", "--hub", "file", cwd=tmp_path),
            BAD_HUB_PATH.format(where=(tmp_path / "file").resolve(), what="is not a directory"))


@pytest.mark.parametrize("command", ["scan", "status", "serve", "usage"])
def test_hub_commands_with_a_hub_path_that_holds_no_hub_say_so(tmp_path: Path, command: str):
    typo = (tmp_path / "typo").resolve()
    refused(run_car("hub", command, "--hub", str(typo), cwd=tmp_path),
            BAD_HUB_PATH.format(where=typo, what="does not exist"))
    assert not typo.exists()
    plain = (tmp_path / "plain").resolve()
    plain.mkdir()
    if command in ("status", "usage"):  # scan and serve make a plain directory a hub, as `hub init` would
        refused(run_car("hub", command, "--hub", str(plain), cwd=tmp_path), NO_HUB_AT.format(where=plain))
        assert list(plain.iterdir()) == []
    elif command == "scan":
        made = run_car("hub", "scan", "--hub", str(plain), cwd=tmp_path)
        assert made.returncode == 0 and MADE_HUB.format(where=plain) in made.stderr, made.stderr
        assert HubLayout(plain).config.is_file()
    root = (tmp_path / "hub").resolve()
    make_hub(root)
    (root / "sub").mkdir()
    agent_repos(root, "alpha")
    (root / "alpha" / "src").mkdir()
    for where in (root / "sub", root / "alpha" / "src"):
        refused(run_car("hub", command, "--hub", str(where), cwd=tmp_path),
                NO_HUB_INSIDE.format(where=where, root=root))
        assert list(where.iterdir()) == []
    agent_repos(tmp_path, "solo")
    solo = (tmp_path / "solo").resolve()
    (solo / "src").mkdir()
    for where in (solo, solo / "src"):
        refused(run_car("hub", command, "--hub", str(where), cwd=tmp_path), no_hub_in_repo(where, solo))
    refused(run_car("hub", command, "--hub", str(root / "alpha"), cwd=tmp_path),
            NO_HUB_INSIDE.format(where=root / "alpha", root=root))


def test_hub_scan_without_a_config_makes_a_hub_root_and_prints_the_table(tmp_path: Path):
    git_repos(tmp_path, "beta", "alpha")
    done = run_car("hub", "scan", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert MADE_HUB.format(where=tmp_path.resolve()) in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["ID", "PATH", "STATUS", "LAST", "RUN", "TODO"]
    assert lines[1].split() == ["alpha", "alpha", "idle", "-", "0/1"]
    assert lines[2].split() == ["beta", "beta", "idle", "-", "0/1"]
    manifest = stamp(HubLayout(tmp_path).dir / "manifest.yml")
    again = run_car("hub", "scan", "--json", cwd=tmp_path)
    assert again.returncode == 0 and "made it a hub root" not in again.stderr
    data = json.loads(again.stdout)
    assert [r["id"] for r in data["repos"]] == ["alpha", "beta"] and data["last_scan_at"]
    assert stamp(HubLayout(tmp_path).dir / "manifest.yml") == manifest


def test_hub_scan_that_cannot_init_a_repo_prints_the_table_and_exits_1_with_one_line(tmp_path: Path):
    root = tmp_path / "hub"
    make_hub(root)
    git_repos(root, "alpha", "broken")
    (root / "broken" / CAR_DIR).write_text("in the way")
    done = run_car("hub", "scan", cwd=root)
    assert done.returncode == 1, done.stderr
    assert done.stderr == "car: " + INIT_FAILED_IN_SCAN.format(ids="broken") + "\n"
    assert [line.split()[:3] for line in done.stdout.splitlines()[1:3]] == [
        ["alpha", "alpha", "idle"], ["broken", "broken", "init_error"]]
    assert "broken: " in done.stdout and "move it away and init again" in done.stdout
    as_json = run_car("hub", "scan", "--json", cwd=root)
    assert as_json.returncode == 1 and as_json.stderr == done.stderr
    assert {r["id"]: r["status"] for r in json.loads(as_json.stdout)["repos"]} == {
        "alpha": "idle", "broken": "init_error"}
    (root / "broken" / CAR_DIR).unlink()
    fixed = run_car("hub", "scan", cwd=root)
    assert fixed.returncode == 0 and fixed.stderr == "", fixed.stderr


def test_hub_status_needs_a_hub_and_reads_without_the_hub_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    done = run_car("hub", "status", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "car: " + NO_HUB.format(car=CAR_DIR, cfg="config.yml", where=tmp_path.resolve())
    monkeypatch.setenv("FAKE_AGENT_MODE", "hang")
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", "beta")
    with started(config) as hub:  # this process is the hub: its pid is in the hub lock and alpha's lock
        hub.run("alpha")
        wait_until(lambda: hub.repo("alpha").current_run_id, 15, "alpha's run")
        done = run_car("hub", "status", "--json", cwd=root)
        assert done.returncode == 0, done.stderr
        by_id = {r["id"]: r for r in json.loads(done.stdout)["repos"]}
        assert by_id["alpha"]["status"] == "running" and by_id["alpha"]["current_run_id"] == 1
        assert by_id["beta"]["status"] == "idle"
        table = run_car("hub", "status", cwd=root)
        assert "#1 running since" in table.stdout


# wrong mode ------------------------------------------------------------------------------
def test_commands_in_the_wrong_mode_exit_2_with_one_line(tmp_path: Path):
    root = tmp_path / "hub"
    make_hub(root)
    agent_repos(root, "alpha")
    hub_cfg = (root / CAR_DIR / "config.yml").resolve()
    repo_cfg = (root / "alpha" / CAR_DIR / "config.yml").resolve()
    for command in ("run", "status", "stop"):
        done = run_car(command, cwd=root)
        assert done.returncode == 2
        assert done.stderr == "car: " + WRONG_MODE_REPO_CMD.format(cmd=command, path=hub_cfg) + "\n"
    for command in ("scan", "status", "serve"):
        done = run_car("hub", command, cwd=root / "alpha")
        assert done.returncode == 2
        assert done.stderr == "car: " + WRONG_MODE_HUB_CMD.format(cmd=command, path=repo_cfg) + "\n"
    assert not (root / "alpha" / CAR_DIR / "manifest.yml").exists()


# hub serve -------------------------------------------------------------------------------
def test_a_second_hub_exits_1_at_once_naming_the_first(tmp_path: Path):
    root = tmp_path / "hub"
    make_hub(root)
    git_repos(root, "alpha")
    first = start_serve(root, tmp_path)
    try:
        wait_until(lambda: inspect_lock(HubLayout(root).lock).pid == first.pid, 20, "the first hub's lock")
        began = time.monotonic()
        second = run_car("hub", "serve", "--port", "0", cwd=root, timeout=30)
        elapsed = time.monotonic() - began
        assert second.returncode == 1
        assert f"pid {first.pid}" in second.stderr and second.stderr.count("\n") == 1
        print(f"second hub gave up after {elapsed:.2f}s")
        assert elapsed < 2.0, f"the second hub took {elapsed:.2f}s to give up"
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    assert not HubLayout(root).lock.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_every_agent_releases_locks_and_flushes_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int):
    pidfile = hang_agent(monkeypatch, tmp_path)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", "beta")
    config.manifest_path.write_text("version: 1\nrepos:\n- {id: alpha, path: alpha, auto_run: true}\n"
                                    "- {id: beta, path: beta, auto_run: true}\n")
    proc = start_serve(root, tmp_path)
    try:
        pids = wait_until(lambda: len(read_pids(pidfile)) == 4 and read_pids(pidfile), 30, "two agents, two children")
        assert all(inspect_lock(RepoLayout(root / n).lock).pid == proc.pid for n in ("alpha", "beta"))
        wait_until(lambda: HubLayout(root).hub_state.exists() and "running" in HubLayout(root).hub_state.read_text(),
                   10, "hub_state.json with the running repos")
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, (tmp_path / "serve.err").read_text()
    finally:
        stop_proc(proc)
    assert not any(pid_alive(p) for p in pids)
    assert not any(RepoLayout(root / n).lock.exists() for n in ("alpha", "beta"))
    assert not HubLayout(root).lock.exists()
    state = json.loads(HubLayout(root).hub_state.read_text())
    assert [(r["id"], r["status"]) for r in state["repos"]] == [("alpha", "idle"), ("beta", "idle")]
    assert [json.loads(RepoLayout(root / n).state.read_text())["stop_reason"] for n in ("alpha", "beta")] == [
        "killed", "killed"]
    assert "hub stopped" in config.log_path.read_text()


def test_serve_without_the_web_layer_runs_the_supervisor_until_a_signal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    root = tmp_path / "hub"
    make_hub(root)
    git_repos(root, "alpha")
    monkeypatch.chdir(root)
    monkeypatch.setitem(sys.modules, "car.web.server", None)  # `import` now raises ImportError
    serving = threading.Event()
    note = cli_hub._note

    def noted(text: str) -> None:
        note(text)
        if "no web server" in text:
            serving.set()

    monkeypatch.setattr(cli_hub, "_note", noted)

    def send_sigterm_once_started() -> None:
        assert serving.wait(20), "hub serve never said it runs without the web layer"
        assert inspect_lock(HubLayout(root).lock).pid == os.getpid()
        os.kill(os.getpid(), signal.SIGTERM)  # caught by main()'s handler, on the main thread

    thread = threading.Thread(target=send_sigterm_once_started)
    thread.start()
    try:
        assert main(["hub", "serve"]) == 0
    finally:
        thread.join()
    err = capsys.readouterr().err
    assert "no web server in this build" in err and "1 repos" in err
    assert not HubLayout(root).lock.exists() and (root / "alpha" / CAR_DIR / "config.yml").is_file()



def test_hub_status_says_how_a_run_without_exit_code_ended(tmp_path: Path):
    root = tmp_path / "hub"
    make_hub(root)
    agent_repos(root, "alpha")
    RepoLayout(root / "alpha").state.write_text(json.dumps({
        "status": "error", "last_run_id": 3, "last_exit_code": None, "stop_reason": "interrupted",
        "last_run_started_at": "2026-11-24T10:00:00.000Z", "last_run_finished_at": "2026-11-24T10:01:00.000Z"}))
    assert run_car("hub", "scan", cwd=root).returncode == 0
    table = run_car("hub", "status", cwd=root)
    assert table.returncode == 0 and "#3 interrupted at 2026-11-24T10:01:00.000Z" in table.stdout, table.stdout
    assert "exit None" not in table.stdout
