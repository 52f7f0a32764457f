"""Files an agent or a person left in a state car did not expect: one line, the run on record, no loss."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from car.errors import CarError, Conflict, LockError
from car.files import write_atomic
from car.layout import HubLayout, RepoLayout
from car.lock import acquire_lock
from car.logfile import LogFile

from hub_fixtures import agent_repos, make_hub, started, wait_status
from support import car_cmd, car_env, make_repo, read_pids, run_car, update_config, wait_until


def script_agent(repo: Path, body: str) -> None:
    """The repo's agent becomes a small Python script run in the repo (stdin: the prompt)."""
    script = repo / "agent.py"
    script.write_text(f"import pathlib, sys\nsys.stdin.read()\ntodo = pathlib.Path('.codex-autorunner/TODO.md')\n"
                      f"{body}\n")
    update_config(repo, codex={"binary": sys.executable, "args": [str(script)]})


def one_line_error(proc, *words: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
    return lines[0]


def run_records(repo: Path) -> list:
    return [json.loads(line) for line in RepoLayout(repo).runs.read_text().splitlines()]


def test_a_todo_the_agent_wrote_in_latin_1_still_counts(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", items=("first", "second"))
    script_agent(repo, "todo.write_bytes(b'# TODO\\n- [x] first caf\\xe9\\n- [ ] second\\n')")
    proc = run_car("once", cwd=repo)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "TODO 1/2 done" in proc.stderr + proc.stdout
    assert [r["end_reason"] for r in run_records(repo)] == [None]
    assert b"caf\xe9" in (repo / ".codex-autorunner/TODO.md").read_bytes()  # read, never rewritten


@pytest.mark.parametrize("spoil", ["directory", "missing"])
def test_a_todo_car_cannot_read_stops_the_loop_before_any_run(tmp_path: Path, spoil: str):
    repo = make_repo(tmp_path / "repo")
    todo = repo / ".codex-autorunner/TODO.md"
    todo.unlink()
    if spoil == "directory":
        todo.mkdir()
    state = RepoLayout(repo).state.read_bytes()
    proc = run_car("run", cwd=repo)
    one_line_error(proc, str(todo), "TODO" if spoil == "missing" else "cannot read")
    assert RepoLayout(repo).state.read_bytes() == state  # no run happened: nothing to record
    assert not RepoLayout(repo).runs.exists()


def test_a_todo_the_agent_deleted_ends_the_loop_with_the_run_on_record(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    script_agent(repo, "todo.unlink()\nprint('deleted it')")
    proc = run_car("run", cwd=repo)
    one_line_error(proc, "the TODO file is missing")
    assert [(r["id"], r["exit_code"], r["end_reason"]) for r in run_records(repo)] == [(1, 0, "interrupted")]
    log = RepoLayout(repo).dir.joinpath("codex-autorunner.log").read_text()
    assert "=== run 1 end (code 0) ===" in log and "deleted it" in log
    state = json.loads(RepoLayout(repo).state.read_text())
    assert state["status"] == "error" and state["stop_reason"] == "interrupted" and state["last_run_finished_at"]


def test_a_log_car_cannot_write_stops_the_start_before_the_agent(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    log = repo / ".codex-autorunner/codex-autorunner.log"
    log.unlink()
    log.mkdir()
    todo = (repo / ".codex-autorunner/TODO.md").read_bytes()
    proc = run_car("once", cwd=repo)
    one_line_error(proc, str(log))
    assert (repo / ".codex-autorunner/TODO.md").read_bytes() == todo  # the agent never ran
    assert not RepoLayout(repo).runs.exists()


def test_writing_into_a_directory_that_is_gone_creates_nothing(tmp_path: Path):
    gone = tmp_path / "repo" / ".codex-autorunner"
    with pytest.raises(FileNotFoundError):
        write_atomic(gone / "state.json", "{}")
    assert not (tmp_path / "repo").exists()


def test_a_repo_moved_away_while_the_hub_runs_it_is_not_made_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FAKE_AGENT_MODE", "hang")
    monkeypatch.setenv("FAKE_AGENT_PIDFILE", str(tmp_path / "pids"))
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    with started(config) as hub:
        hub.run("alpha")
        wait_until(lambda: len(read_pids(tmp_path / "pids")) == 2, 20, "the agent and its child")
        shutil.move(str(root / "alpha"), str(tmp_path / "elsewhere"))
        hub.kill("alpha")
        wait_until(lambda: not hub._runners["alpha"].active, 20, "the loop ended")
        hub.scan()
        assert wait_status(hub, "alpha", "missing").status == "missing"
    assert not (root / "alpha").exists()  # no state.json, lock or log brought it back


def test_a_hub_listing_car_cannot_write_is_one_line_and_frees_the_hub(tmp_path: Path):
    root = tmp_path / "hub"
    make_hub(root)
    agent_repos(root, "alpha")
    HubLayout(root).hub_state.mkdir()
    for _ in range(2):  # the second would say "a hub already serves" had the first left its lock
        proc = run_car("hub", "scan", cwd=root)
        one_line_error(proc, str(HubLayout(root).hub_state), "cannot write")
    assert not HubLayout(root).lock.exists()


def test_a_log_that_cannot_be_opened_is_one_error_at_start(tmp_path: Path):
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / "car.log"
    with pytest.raises(CarError, match="cannot write the log"):
        LogFile(path, 1)


def test_the_hub_lists_a_repo_whose_files_cannot_be_read_as_error(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "fine", "yaml", "hubcfg", "state")
    (root / "yaml/.codex-autorunner/config.yml").write_text("mode: repo\ncodex: [unclosed\n")
    (root / "hubcfg/.codex-autorunner/config.yml").write_text("version: 2\nmode: hub\n")
    RepoLayout(root / "state").state.write_text('{"status": "running", ')
    with started(config) as hub:
        entries = {e.id: e for e in hub.snapshot().repos}
    assert entries["fine"].status == "idle" and entries["fine"].error is None
    for repo_id, words in (("yaml", "config.yml"), ("hubcfg", "hub config"), ("state", "state.json")):
        assert entries[repo_id].status == "error" and words in entries[repo_id].error, entries[repo_id]


@pytest.mark.parametrize("value", ['"abc"', "1.5", "1e400", "-1", "true"])
def test_a_state_json_with_a_wrong_type_is_one_line_and_listed_as_error(tmp_path: Path, value: str):
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    state = RepoLayout(root / "alpha").state
    state.write_text(f'{{"status": "idle", "last_run_id": {value}}}')
    before = state.read_bytes()
    proc = run_car("once", cwd=root / "alpha")
    one_line_error(proc, str(state), "last_run_id", "fix or delete")
    assert state.read_bytes() == before
    with started(config) as hub:
        entry = hub.snapshot().get("alpha")
    assert entry.status == "error" and "last_run_id" in entry.error


def test_a_repo_turned_into_a_symlink_out_of_the_hub_is_missing_and_never_followed(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", "beta")
    with started(config):
        pass
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("beta",):
        shutil.move(str(root / name), str(outside / name))
        (root / name).symlink_to(outside / name)
    state = RepoLayout(outside / "beta").state.read_bytes()
    with started(config) as hub:  # one such entry no longer stops the hub
        entries = {e.id: e for e in hub.snapshot().repos}
        assert entries["alpha"].status == "idle"
        assert entries["beta"].status == "missing" and "symlink that leaves the hub root" in entries["beta"].error
        with pytest.raises(Conflict, match="symlink that leaves the hub root"):
            hub.run("beta")
        shutil.move(str(root / "alpha"), str(outside / "alpha"))  # the same, made while the hub serves
        (root / "alpha").symlink_to(outside / "alpha")
        entry = hub.repo("alpha")  # QA: listed by what it read out there until a scan (idle, or uninitialized)
        assert entry.status == "missing" and "symlink that leaves the hub root" in entry.error
        with pytest.raises(Conflict, match="symlink that leaves the hub root"):
            hub.run("alpha")
        assert hub.repo("alpha").status == "missing"
    assert RepoLayout(outside / "beta").state.read_bytes() == state  # no agent ran out there
    proc = run_car("hub", "status", cwd=root)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("lock", ['{"pid": 99999999999999}', '{"pid": 1e400}', '{"pid": "12"}', "[1]",
                                  '{"pid": 999999, "agent_pgid": "abc", "run_token": [1]}',
                                  '{"pid": 999999, "agent_pgid": -1}', "directory"])
def test_a_lock_car_did_not_write_reads_as_stale_and_every_command_says_so_in_one_line(tmp_path: Path, lock: str):
    repo = make_repo(tmp_path / "repo")
    path = RepoLayout(repo).lock
    if lock == "directory":
        path.mkdir()
    else:
        path.write_text(lock)
    for command in ("status", "stop", "kill", "once"):
        proc = run_car(command, cwd=repo)
        assert "Traceback" not in proc.stderr, (command, proc.stderr)
    assert "stale" in run_car("status", cwd=repo).stdout
    proc = run_car("resume", "--once", cwd=repo)
    if lock == "directory":
        one_line_error(proc, str(path), "remove it by hand")
    else:
        assert proc.returncode == 0 and not path.exists(), proc.stderr


def test_a_lock_that_cannot_be_created_is_one_line_and_creates_nothing(tmp_path: Path):
    gone = tmp_path / "repo" / ".codex-autorunner" / "lock"
    with pytest.raises(LockError, match="cannot create the lock"):
        acquire_lock(gone)
    assert not (tmp_path / "repo").exists()  # no directory made for a repo that is not there


def _after_run_1(repo: Path, spoil) -> subprocess.CompletedProcess:
    """`car run` (which sleeps between runs); `spoil(layout)` is called while it sleeps after run 1."""
    update_config(repo, runner={"sleep_seconds": 2})
    layout = RepoLayout(repo)
    proc = subprocess.Popen(car_cmd("run"), cwd=repo, env=car_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: json.loads(layout.state.read_text()).get("last_run_finished_at"), 20, "run 1 to end")
        spoil(layout)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_state_json_broken_between_runs_is_one_line_and_frees_the_lock(tmp_path: Path):
    """QA: the error was said, but the lock stayed behind: the next `car run` said 'stale lock'."""
    repo = make_repo(tmp_path / "repo", items=("a", "b", "c"))
    proc = _after_run_1(repo, lambda layout: layout.state.write_text("{oops"))
    state = RepoLayout(repo).state
    one_line_error(proc, str(state), "not valid JSON", "fix or delete the file")
    assert not RepoLayout(repo).lock.exists()
    one_line_error(run_car("run", cwd=repo), str(state), "not valid JSON")  # not a stale lock


def test_a_prompt_car_cannot_write_is_one_line_and_the_loop_is_closed_as_error(tmp_path: Path):
    """QA: a write that failed between runs (read-only dir, full disk) was a traceback, and left the lock."""
    repo = make_repo(tmp_path / "repo", items=("a", "b", "c"))

    def spoil(layout: RepoLayout) -> None:
        layout.rendered_prompt.unlink()
        layout.rendered_prompt.mkdir()  # the next run's prompt cannot replace it

    proc = _after_run_1(repo, spoil)
    one_line_error(proc, str(RepoLayout(repo).rendered_prompt), "cannot write")
    assert not RepoLayout(repo).lock.exists()
    state = json.loads(RepoLayout(repo).state.read_text())
    assert (state["status"], state["stop_reason"], state["last_run_id"], state["last_exit_code"]) == \
        ("error", "interrupted", 1, 0)


def test_a_write_whose_last_check_fails_leaves_the_file_as_another_writer_left_it(tmp_path: Path) -> None:
    """A doc saved from the page is looked at again right before it is replaced: the agent's edit made
    while the save wrote and synced its copy is kept and the save refused (QA: 214 of 1,423 agent
    appends were lost to saves racing them; 3 of 1,052 after)."""
    doc = tmp_path / "TODO.md"
    doc.write_text("- [ ] one\n")

    def agent_wrote_meanwhile() -> None:
        doc.write_text("- [ ] one\n- [ ] the agent's\n")  # what another process did while the copy synced
        if doc.read_text() != "- [ ] one\n":
            raise CarError("changed since it was loaded")

    with pytest.raises(CarError, match="changed since it was loaded"):
        write_atomic(doc, "- [x] one\n", check=agent_wrote_meanwhile)
    assert doc.read_text() == "- [ ] one\n- [ ] the agent's\n" and [p.name for p in tmp_path.iterdir()] == ["TODO.md"]
    write_atomic(doc, "- [x] one\n", check=lambda: None)
    assert doc.read_text() == "- [x] one\n"
