"""HubSupervisor with real git repos, the fake agent as real processes, and bounded waits."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Tuple

import pytest
import yaml

from car.errors import Conflict, InitError, LockError, NotFound
from car.hub import HubSupervisor
from car.layout import GITIGNORE_TEXT, HubLayout, RepoLayout
from car.lock import inspect_lock
from car.state import RepoState, load_state, save_state
from car.status import LockStatus

from hub_fixtures import agent_repos, git_repos, hub_config, make_hub, stamp, started, wait_status
from support import (
    agent_and_child,
    backdate,
    car_cmd,
    car_env,
    hang_agent,
    pid_alive,
    read_pids,
    wait_until,
    write_todo,
)


def manifest_of(root: Path) -> list:
    return yaml.safe_load((root / ".codex-autorunner" / "manifest.yml").read_text())["repos"]


def slow_agent(monkeypatch: pytest.MonkeyPatch, seconds_per_line: float = 0.2, lines: int = 100) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", "slow")
    monkeypatch.setenv("FAKE_AGENT_SLEEP", str(seconds_per_line))
    monkeypatch.setenv("FAKE_AGENT_LINES", str(lines))


# discovery, init, manifest ---------------------------------------------------------------
def test_scan_appends_new_repos_and_initializes_them(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    git_repos(root, "beta", "alpha")
    (root / "notes").mkdir()
    with started(config) as hub:
        snapshot = hub.snapshot()
    assert [(r.id, r.status.value) for r in snapshot.repos] == [("alpha", "idle"), ("beta", "idle")]
    assert manifest_of(root) == [{"id": "alpha", "path": "alpha", "enabled": True, "auto_run": False},
                                 {"id": "beta", "path": "beta", "enabled": True, "auto_run": False}]
    for name in ("alpha", "beta"):
        layout = RepoLayout(root / name)
        assert layout.gitignore.read_bytes() == b"*\n!/.gitignore\n" == GITIGNORE_TEXT.encode()
        assert layout.config.is_file() and layout.state.is_file()
        assert (layout.dir / "TODO.md").is_file()
    assert snapshot.repos[0].todo_total == 1 and snapshot.last_scan_at


def test_without_auto_init_new_repos_stay_uninitialized(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root, auto_init_missing=False)
    git_repos(root, "alpha")
    with started(config) as hub:
        assert hub.repo("alpha").status.value == "uninitialized"
        with pytest.raises(Conflict, match="not initialized"):
            hub.run("alpha")
        assert hub.init("alpha").status.value == "idle"
    assert RepoLayout(root / "alpha").config.is_file()


def test_a_repo_gone_from_disk_is_missing_and_kept(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    git_repos(root, "alpha", "beta")
    with started(config) as hub:
        subprocess.run(["rm", "-rf", str(root / "beta")], check=True, timeout=30)
        assert hub.repo("beta").status.value == "missing"  # noticed without a scan
        snapshot = hub.scan()
        assert [(r.id, r.status.value) for r in snapshot.repos] == [("alpha", "idle"), ("beta", "missing")]
        with pytest.raises(Conflict, match="missing"):
            hub.runner("beta")
    assert [e["id"] for e in manifest_of(root)] == ["alpha", "beta"]


def test_an_init_error_stays_with_its_repo_and_can_be_retried(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    git_repos(root, "alpha", "file", "dirconf")
    (root / "file" / ".codex-autorunner").write_text("in the way")
    (root / "dirconf" / ".codex-autorunner" / "config.yml").mkdir(parents=True)  # fails even as root
    with started(config) as hub:
        by_id = {r.id: r for r in hub.snapshot().repos}
        assert by_id["alpha"].status.value == "idle"
        for bad in ("file", "dirconf"):
            assert by_id[bad].status.value == "init_error" and by_id[bad].error
        assert "is not a directory" in by_id["file"].error
        with pytest.raises(Conflict, match="init failed"):
            hub.run("file")
        (root / "file" / ".codex-autorunner").unlink()
        assert hub.init("file").status.value == "idle"
        with pytest.raises(InitError, match=r"^dirconf: init failed: .*config\.yml: cannot read config") as err:
            hub.init("dirconf")  # a failed init is an error, not an entry that looks like an answer
        assert str(err.value).endswith("(Is a directory); make it a readable file (check its directory's "
                                       "permissions too), then run again")  # one fix
        assert hub.repo("dirconf").status.value == "init_error"
    saved = {r["id"]: r for r in json.loads(HubLayout(root).hub_state.read_text())["repos"]}
    assert saved["dirconf"]["status"] == "init_error" and saved["file"]["status"] == "idle"
    assert HubSupervisor(config).inspect().get("dirconf").status.value == "init_error"  # read back


def test_a_rescan_of_an_unchanged_tree_writes_nothing(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    git_repos(root, "alpha", "beta")
    agent_repos(root, "gamma")
    with started(config):  # discovers and initializes alpha and beta
        pass
    manifest = stamp(config.manifest_path)
    with started(config) as hub:  # an unchanged tree: not even the manifest's mtime moves
        hub.scan()
    assert stamp(config.manifest_path) == manifest
    backdate(root)
    with started(config):  # may store, once, the reads that are now old enough to trust
        pass
    watched = [config.manifest_path, HubLayout(root).hub_state, HubLayout(root).hub_cache] + [
        p for name in ("alpha", "beta", "gamma") for p in sorted((root / name / ".codex-autorunner").iterdir())]
    before = {p: stamp(p) for p in watched}
    listing = {p.name for p in (root / ".codex-autorunner").iterdir()}
    with started(config) as hub:  # a fresh process's view: caches come from hub_cache.bin
        for _ in range(3):
            hub.scan()
            hub.snapshot()
    assert {p: stamp(p) for p in watched} == before
    assert {p.name for p in (root / ".codex-autorunner").iterdir()} == listing


def test_a_fresh_hub_sees_what_changed_behind_its_cached_reads(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", "beta", "gamma")
    with started(config):
        pass
    backdate(root)
    with started(config):  # stores the reads, now old enough to trust, in hub_cache.bin
        pass
    write_todo(root / "alpha", ["a"], done=["b", "c"])
    save_state(RepoLayout(root / "beta").state, RepoState(status="error", last_run_id=7))
    dead = subprocess.Popen(["true"])
    dead.wait()
    RepoLayout(root / "gamma").lock.write_text(json.dumps({"pid": dead.pid, "pid_started": "1"}))
    subprocess.run(["git", "init", "-q", str(root / "delta")], check=True, timeout=30)
    with started(config) as hub:
        by_id = {r.id: r for r in hub.last_scan.repos}
    assert (by_id["alpha"].todo_done, by_id["alpha"].todo_total) == (2, 3)
    assert (by_id["beta"].status.value, by_id["beta"].last_run_id) == ("error", 7)
    assert (by_id["gamma"].status.value, by_id["gamma"].lock_status.value) == ("locked", "locked_stale")
    assert by_id["delta"].status.value == "idle"


def test_a_new_repo_on_rescan_gets_a_fresh_unique_id(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    git_repos(root, "alpha")
    with started(config) as hub:
        (root / "alpha").rename(root / "renamed")
        git_repos(root, "alpha")  # a new repo under the old name: the old entry keeps its id
        ids = [(r.id, r.path, r.status.value) for r in hub.scan().repos]
    assert ids == [("alpha", "alpha", "idle"), ("renamed", "renamed", "idle")]


def test_a_crashed_run_is_closed_at_scan(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    save_state(RepoLayout(root / "alpha").state, RepoState(status="running", last_run_id=4))
    with started(config) as hub:
        entry = hub.repo("alpha")
    assert entry.status.value == "error" and entry.stop_reason == "interrupted"


def test_unknown_ids_and_disabled_entries(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    git_repos(root, "beta")
    config.manifest_path.write_text("version: 1\nrepos:\n- {id: alpha, path: alpha}\n"
                                    "- {id: beta, path: beta, enabled: false}\n")
    with started(config) as hub:
        with pytest.raises(NotFound):
            hub.repo("nope")
        with pytest.raises(NotFound):
            hub.run("nope")
        assert hub.repo("beta").status.value == "uninitialized"  # disabled: not initialized by a scan
        with pytest.raises(Conflict, match="disabled"):
            hub.run("beta")


# running repos ---------------------------------------------------------------------------
def test_three_repos_run_at_the_same_moment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    slow_agent(monkeypatch)
    root = tmp_path / "hub"
    config = make_hub(root)
    names = ("alpha", "beta", "gamma")
    agent_repos(root, *names)
    with started(config) as hub:
        for name in names:
            assert hub.run(name).status.value == "running"

        def all_agents_alive() -> list:
            infos = [inspect_lock(RepoLayout(root / n).lock) for n in names]
            ok = all(i.status is LockStatus.LOCKED_ALIVE and i.agent_pgid and pid_alive(i.agent_pgid)
                     for i in infos)
            return infos if ok else []

        infos = wait_until(all_agents_alive, 20, "three agents alive at once")
        assert len({i.agent_pgid for i in infos}) == 3 and {i.pid for i in infos} == {os.getpid()}
        assert [r.status.value for r in hub.snapshot().repos] == ["running"] * 3
    assert not any(pid_alive(i.agent_pgid) for i in infos)
    assert not any(RepoLayout(root / n).lock.exists() for n in names)


def test_a_loop_runs_to_the_end_and_publishes_its_changes(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    with started(config) as hub:
        seq = hub.events.seq
        hub.run("alpha")
        entry = wait_status(hub, "alpha", "idle")
        assert entry.stop_reason == "todo_done" and entry.todo_done == entry.todo_total == 2
        assert entry.last_run_id == 2 and entry.last_exit_code == 0
        _, items = hub.events.read_since(seq, timeout=0)
        statuses = [data.status for kind, data in items if kind == "repo" and data.id == "alpha"]
        assert statuses[0] == "running" and statuses[-1] == "idle"
        seq = hub.events.seq
        hub.scan()
        _, items = hub.events.read_since(seq, timeout=5)
        assert ("repos", hub.snapshot()) in items
    state = json.loads(HubLayout(root).hub_state.read_text())
    assert state["repos"] == [{"id": "alpha", "path": "alpha", "display_name": "alpha", "status": "idle",
                               "error": None}]


def test_stop_ends_the_loop_after_the_current_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    slow_agent(monkeypatch, 0.05, 10)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", items=("a", "b", "c", "d"))
    with started(config) as hub:
        hub.run("alpha")
        wait_until(lambda: hub.repo("alpha").current_run_id, 10, "the first run to start")
        hub.stop("alpha")
        entry = wait_status(hub, "alpha", "idle")
        assert entry.stop_reason == "stopped" and entry.last_run_id == 1 and entry.last_exit_code == 0
        with pytest.raises(Conflict, match="nothing to stop"):
            hub.stop("alpha")


@contextmanager
def hung_alpha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               *others: str) -> Iterator[Tuple[HubSupervisor, Path, list]]:
    """A started hub at tmp_path/hub running `alpha` (and holding `others`, idle) with a hang agent and
    its child up: (hub, its root, the agent's and child's pids)."""
    pidfile = hang_agent(monkeypatch, tmp_path)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", *others)
    with started(config) as hub:
        hub.run("alpha")
        yield hub, root, agent_and_child(pidfile)


def test_kill_ends_the_agent_and_its_child_and_spares_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with hung_alpha(tmp_path, monkeypatch) as (hub, root, pids):
        assert inspect_lock(RepoLayout(root / "alpha").lock).pid == os.getpid()  # the hub holds the lock
        hub.kill("alpha")
        wait_until(lambda: not any(pid_alive(p) for p in pids), 15, "agent and child gone")
        entry = wait_status(hub, "alpha", "idle", "error")
        assert entry.stop_reason == "killed" and entry.lock_status.value == "unlocked"
        assert pid_alive(os.getpid())
        assert hub.run("alpha", once=True).status.value == "running"  # the hub goes on


def test_a_repo_moved_out_of_the_hub_while_it_runs_has_its_run_ended(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    """QA: the moved repo's agent went on working where the directory went, with nobody watching."""
    with hung_alpha(tmp_path, monkeypatch, "beta") as (hub, root, pids):
        (root / "alpha").rename(tmp_path / "elsewhere")
        wait_until(lambda: not any(pid_alive(p) for p in pids), 20, "the moved repo's agent and child gone")
        wait_until(lambda: hub.repo("alpha").status.value == "missing", 10, "listed missing")
        assert hub.repo("beta").status.value == "idle"  # the others are untouched
    assert not (root / "alpha").exists()  # nothing of it is made again where it was
    log = hub.config.log_path.read_text()
    assert f"alpha: {root / 'alpha'} is gone (moved or deleted) while it ran; ending its run" in log
    assert f"{root / 'alpha'} is gone (moved or deleted) while its loop ran; the loop stops" in log
    assert "Traceback" not in log


def loop_ended(hub: HubSupervisor, repo_id: str) -> bool:
    try:
        return not hub.runner(repo_id).active
    except Conflict:  # a missing repo's runner is handed out only while its loop runs
        return True


@pytest.mark.parametrize("back", [False, True], ids=["renamed", "moved-away-and-back"])
def test_a_repo_moved_while_it_runs_is_not_shown_running_once_its_run_ended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, back: bool):
    """QA: the moved repo kept the hub's live lock and showed "running" or "locked" for as long as the hub
    lived: under its new name, or under its old one once moved back."""
    with hung_alpha(tmp_path, monkeypatch) as (hub, root, pids):
        (root / "alpha").rename(tmp_path / "away" if back else root / "gamma")
        wait_until(lambda: not any(pid_alive(p) for p in pids), 20, "the moved repo's agent and child gone")
        wait_until(lambda: hub.repo("alpha").status.value == "missing", 10, "alpha listed missing")
        if back:  # once its loop has ended (sooner: the next test)
            wait_until(lambda: loop_ended(hub, "alpha"), 20, "alpha's loop to end")
            (tmp_path / "away").rename(root / "alpha")
        name = "alpha" if back else "gamma"
        hub.scan()
        entry = wait_status(hub, name, "locked")  # a lock nothing runs under: stale, as after a crash
        assert entry.lock_status.value == "locked_stale" and entry.stop_reason == "interrupted"
        monkeypatch.setenv("FAKE_AGENT_MODE", "ok")
        hub.resume(name, once=True)
        entry = wait_status(hub, name, "idle")
        assert entry.todo_done == 1 and not RepoLayout(root / name).lock.exists()


def test_a_repo_moved_back_while_its_loop_ends_tells_how_that_loop_ended(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    """Moved back as soon as its run is ended (by the hub, or by the loop seeing the repo gone), the
    repo may be back before its loop's last writes. The loop then closes its state there and lets go
    of its lock: killed, or interrupted when it saw the repo gone. If the repo came back only after the
    loop ended, its lock is stale, as after a crash, and the scan closes the run. Either way nothing
    says running once the loop is over."""
    with hung_alpha(tmp_path, monkeypatch) as (hub, root, pids):
        (root / "alpha").rename(tmp_path / "away")
        wait_until(lambda: not any(pid_alive(p) for p in pids), 20, "the moved repo's agent and child gone")
        (tmp_path / "away").rename(root / "alpha")
        wait_until(lambda: loop_ended(hub, "alpha"), 20, "alpha's loop to end")
        hub.scan()
        entry = wait_status(hub, "alpha", "idle", "error", "locked")
        state = load_state(RepoLayout(root / "alpha").state)
        assert state.status != "running" and state.runner_pid is None and state.last_run_finished_at
        hub_log = hub.config.log_path.read_text()
        closed_by_the_hub = "alpha: the last run's owner died; closed it as interrupted" in hub_log
        if RepoLayout(root / "alpha").lock.exists():
            assert entry.lock_status.value == "locked_stale" and entry.stop_reason == "interrupted"
        elif closed_by_the_hub:  # seen once in CI: the repo came back between the loop's last try at
            # closing its state (the directory away) and its letting go of the lock; the scan closed the run
            assert entry.stop_reason == "interrupted"
        else:  # the loop closed its own state
            assert entry.stop_reason in ("killed", "interrupted")


def test_resume_clears_a_stale_lock_and_never_a_live_one(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    lock = RepoLayout(root / "alpha").lock
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "pid_started": "1", "started_at": "then"}))
    with started(config) as hub:
        entry = hub.repo("alpha")
        assert entry.status.value == "locked" and entry.lock_status.value == "locked_stale"
        with pytest.raises(LockError, match="stale"):
            hub.run("alpha")
        assert lock.exists()
        hub.resume("alpha", once=True)
        entry = wait_status(hub, "alpha", "idle")
        assert entry.last_run_id == 1 and not lock.exists()


def test_a_loop_of_another_car_process_shows_locked_and_stop_reaches_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    slow_agent(monkeypatch, 0.1, 20)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", items=("a", "b", "c", "d"))
    layout = RepoLayout(root / "alpha")
    with started(config) as hub:
        proc = subprocess.Popen(car_cmd("run"), cwd=root / "alpha", env=car_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # its first run under way: a stop that comes sooner ends the loop before any run
            wait_until(lambda: inspect_lock(layout.lock).agent_pgid, 20, "car run's first agent in its lock")
            entry = wait_status(hub, "alpha", "locked")
            assert entry.lock_status.value == "locked_alive"
            with pytest.raises(LockError):
                hub.run("alpha")
            hub.stop("alpha")
            assert layout.stop.read_text().strip() == "stop"
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        entry = wait_status(hub, "alpha", "idle")
        assert entry.stop_reason == "stopped" and entry.last_run_id == 1


def test_a_loop_sleeping_between_runs_is_still_running(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", sleep_seconds=30)
    with started(config) as hub:
        hub.run("alpha")
        entry = wait_until(lambda: (lambda e: e if e.last_run_finished_at else None)(hub.repo("alpha")), 15,
                           "the first run to end")
        assert entry.status.value == "running" and entry.current_run_id is None  # asleep, loop alive
        assert entry.lock_status.value == "locked_alive"
        hub.stop("alpha")  # wakes the sleep: no need to wait the 30 s
        entry = wait_status(hub, "alpha", "idle", timeout=10)
        assert entry.stop_reason == "stopped" and entry.last_run_id == 1


def test_kill_of_another_process_run_ends_its_agent_never_that_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pidfile = hang_agent(monkeypatch, tmp_path)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha")
    with started(config) as hub:
        proc = subprocess.Popen(car_cmd("run"), cwd=root / "alpha", env=car_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            pids = agent_and_child(pidfile)
            assert inspect_lock(RepoLayout(root / "alpha").lock).pid == proc.pid
            hub.kill("alpha")
            wait_until(lambda: not any(pid_alive(p) for p in pids), 15, "agent and child gone")
            assert proc.wait(timeout=30) == 0  # it ended its loop itself: nobody signalled it
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        entry = wait_status(hub, "alpha", "idle", "error")
        assert entry.stop_reason == "killed"


def test_auto_run_entries_start_with_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    slow_agent(monkeypatch)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", "beta")
    config.manifest_path.write_text("version: 1\nrepos:\n- {id: alpha, path: alpha, auto_run: true}\n"
                                    "- {id: beta, path: beta}\n")
    with started(config) as hub:
        assert [r.status.value for r in hub.snapshot().repos] == ["running", "idle"]


# hub lock, log, shutdown -----------------------------------------------------------------
def test_one_hub_per_root_and_a_dead_hubs_lock_is_taken_over(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    with started(config):
        with pytest.raises(LockError, match=f"pid {os.getpid()}"):
            HubSupervisor(hub_config(root)).start()
    dead = subprocess.Popen(["true"])
    dead.wait()
    HubLayout(root).lock.write_text(json.dumps({"pid": dead.pid, "pid_started": "1"}))
    with started(config):
        assert inspect_lock(HubLayout(root).lock).pid == os.getpid()
    assert not HubLayout(root).lock.exists()


def test_the_hub_log_rotates_at_max_bytes(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root, log={"max_bytes": 2000, "backup_count": 2})
    with started(config) as hub:
        for i in range(200):
            hub.log.info("access line %d %s", i, "x" * 40)
    log = config.log_path
    assert log.name == "codex-autorunner-hub.log"
    files = [log, Path(f"{log}.1"), Path(f"{log}.2")]
    assert all(f.exists() and f.stat().st_size <= 2000 for f in files)
    assert not Path(f"{log}.3").exists()
    assert "hub stopped" in log.read_text()


def test_shutdown_ends_every_agent_and_releases_every_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pidfile = hang_agent(monkeypatch, tmp_path)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", "beta")
    hub = HubSupervisor(config)
    hub.start()
    hub.run("alpha")
    hub.run("beta")
    pids = wait_until(lambda: len(read_pids(pidfile)) == 4 and read_pids(pidfile), 15, "two agents, two children")
    hub.shutdown()
    hub.shutdown()  # idempotent
    assert not any(pid_alive(p) for p in pids)
    assert not any(RepoLayout(root / n).lock.exists() for n in ("alpha", "beta"))
    assert not HubLayout(root).lock.exists()
    state = json.loads(HubLayout(root).hub_state.read_text())
    assert [r["status"] for r in state["repos"]] == ["idle", "idle"]
    assert [json.loads(RepoLayout(root / n).state.read_text())["stop_reason"] for n in ("alpha", "beta")] == [
        "killed", "killed"]
    with pytest.raises(Conflict, match="shutting down"):
        hub.run("alpha")
