"""QA: two manifest entries swap their paths while the hub runs one of them. Each row must tell the truth
about the directory it now names, and each control must reach the loop in that directory."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest

from car.errors import CarError, Conflict
from car.hub import HubSupervisor
from car.layout import RepoLayout
from car.lock import inspect_lock
from car.status import LockStatus
from car.web.api_hub import hub_routes
from car.web.server import start_in_thread

from hub_fixtures import agent_repos, make_hub, started, wait_status
from support import agent_and_child, hang_agent, pid_alive, wait_until

MANIFEST = "version: 1\nrepos:\n- {{id: alpha, path: {a}}}\n- {{id: beta, path: {b}}}\n"


def swap_paths(hub: HubSupervisor) -> None:
    """The user's edit: alpha's entry now names beta's directory and beta's names alpha's."""
    hub.config.manifest_path.write_text(MANIFEST.format(a="beta", b="alpha"))


def rows(hub: HubSupervisor) -> dict:
    return {r.id: (r.path, r.status.value, r.lock_status.value) for r in hub.snapshot().repos}


@contextmanager
def alpha_hung_then_swapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            **hub_options: Any) -> Iterator[Tuple[HubSupervisor, Path, list]]:
    """A hub running alpha's directory (a hang agent and its child up), beta's idle, and the manifest's
    paths swapped and scanned: (hub, its root, the agent's and child's pids)."""
    pidfile = hang_agent(monkeypatch, tmp_path)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", "beta")
    config.manifest_path.write_text(MANIFEST.format(a="alpha", b="beta"))
    with started(config, **hub_options) as hub:
        hub.run("alpha")
        pids = agent_and_child(pidfile)
        swap_paths(hub)
        hub.scan()
        yield hub, root, pids


def test_swapped_paths_list_the_loop_under_the_id_that_now_names_its_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with alpha_hung_then_swapped(tmp_path, monkeypatch) as (hub, _, pids):
        assert rows(hub) == {"alpha": ("beta", "idle", "unlocked"), "beta": ("alpha", "running", "locked_alive")}
        beta = hub.repo("beta")
        assert beta.current_run_id == 1 and hub.repo("alpha").current_run_id is None
        assert hub.runner("beta").view().running  # the per-repo routes see the same loop
        assert all(pid_alive(p) for p in pids)  # the scan ended nothing


def test_controls_through_a_swapped_id_reach_the_loop_in_its_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # no polling: each row changes only when the loop says so, so its touches must name the right id
    with alpha_hung_then_swapped(tmp_path, monkeypatch, poll_seconds=600) as (hub, root, pids):
        with pytest.raises(Conflict, match=f"no loop is running in {root / 'beta'}; nothing to stop"):
            hub.stop("alpha")  # alpha names beta's idle directory: never the loop in alpha's
        with pytest.raises(Conflict, match=f"no loop is running in {root / 'beta'}; nothing to kill"):
            hub.kill("alpha")
        with pytest.raises(Conflict, match=r"^beta is already running$"):  # the id asked, not "alpha"
            hub.run("beta")  # a second loop in the directory that has one: refused, as here before
        with pytest.raises(Conflict, match=r"^beta is already running$"):
            hub.resume("beta")
        assert all(pid_alive(p) for p in pids) and not RepoLayout(root / "alpha").stop.exists()
        assert not RepoLayout(root / "beta").lock.exists()
        seq = hub.events.seq
        hub.kill("beta")
        wait_until(lambda: not any(pid_alive(p) for p in pids), 15, "alpha's directory's agent and child gone")

        def beta_published_ended() -> bool:
            _, items = hub.events.read_since(seq, timeout=0.5)
            return any(kind == "repo" and e.id == "beta" and e.stop_reason == "killed" and e.status.value != "running"
                       for kind, e in items)

        wait_until(beta_published_ended, 20, "the killed loop's end published under beta")
        assert rows(hub)["beta"][1] in ("idle", "error") and rows(hub)["alpha"][1] == "idle"
        monkeypatch.setenv("FAKE_AGENT_MODE", "ok")
        assert hub.run("alpha", once=True).status.value == "running"  # in beta's directory, its path now
        entry = wait_status(hub, "alpha", "idle")
        assert entry.last_run_id == 1 and entry.todo_done == 1
        assert hub.repo("beta").todo_done == 0  # alpha's directory untouched by that run


def test_the_hub_api_lists_and_controls_swapped_repos_by_their_directories(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The same through `car hub serve`'s routes: POST run, edit, POST scan, GET the list, stop and kill."""
    pidfile = hang_agent(monkeypatch, tmp_path)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", "beta")
    config.manifest_path.write_text(MANIFEST.format(a="alpha", b="beta"))
    with started(config) as hub:
        running = start_in_thread(hub_routes(hub), log=hub.log)
        try:
            def call(method: str, path: str) -> Tuple[int, Any]:
                data = b"{}" if method == "POST" else None
                request = urllib.request.Request(f"http://127.0.0.1:{running.port}{path}", data=data,
                                                 method=method, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=30) as reply:
                        return reply.status, json.loads(reply.read())
                except urllib.error.HTTPError as exc:
                    return exc.code, json.loads(exc.read())

            assert call("POST", "/hub/repos/alpha/run")[0] == 200
            pids = agent_and_child(pidfile)
            swap_paths(hub)
            assert call("POST", "/hub/repos/scan")[0] == 200
            listed = {r["id"]: (r["path"], r["status"]) for r in call("GET", "/hub/repos")[1]["repos"]}
            assert listed == {"alpha": ("beta", "idle"), "beta": ("alpha", "running")}
            assert call("GET", "/repos/beta/api/state")[1]["running"] is True
            assert call("GET", "/repos/alpha/api/state")[1]["running"] is False
            status, body = call("POST", "/hub/repos/alpha/stop")
            assert (status, body["error"]["code"]) == (409, "conflict")
            assert "nothing to stop" in body["error"]["message"]  # beta's idle directory, not the loop
            assert call("POST", "/hub/repos/beta/run")[0] == 409
            assert inspect_lock(RepoLayout(root / "alpha").lock).pid == os.getpid()
            assert call("POST", "/hub/repos/beta/kill")[0] == 200
            wait_until(lambda: not any(pid_alive(p) for p in pids), 15, "the agent and its child gone")
            wait_until(lambda: inspect_lock(RepoLayout(root / "alpha").lock).status is LockStatus.UNLOCKED, 20,
                       "alpha's directory's lock released")

            def ended() -> dict:
                listed = {r["id"]: r["status"] for r in call("GET", "/hub/repos")[1]["repos"]}
                return listed if listed["beta"] in ("idle", "error") else {}

            assert wait_until(ended, 20, "beta listed as ended")["alpha"] == "idle"
        finally:
            running.close()


def test_a_running_repo_taken_out_of_the_manifest_has_its_run_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """QA: out of the list (a scan does not add back a directory without .git), its loop ran on unseen
    and `kill` answered "no repo 'alpha'"; the hub now ends that run, as for a deleted repo."""
    pidfile = hang_agent(monkeypatch, tmp_path)
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", "beta")
    shutil.rmtree(root / "alpha" / ".git")  # so discovery does not add it back
    config.manifest_path.write_text(MANIFEST.format(a="alpha", b="beta"))
    with started(config) as hub:
        hub.run("alpha")
        pids = agent_and_child(pidfile)
        config.manifest_path.write_text("version: 1\nrepos:\n- {id: beta, path: beta}\n")
        hub.scan()
        assert [r.id for r in hub.snapshot().repos] == ["beta"]
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), 30, "alpha's agent and its child ended")
        state = json.loads(RepoLayout(root / "alpha").state.read_text())
        assert wait_until(lambda: not RepoLayout(root / "alpha").lock.exists(), 30, "alpha's lock released")
    assert json.loads(RepoLayout(root / "alpha").state.read_text())["stop_reason"] == "killed", state


def test_a_run_goes_by_the_manifest_as_it_is_now_not_as_last_scanned(tmp_path: Path) -> None:
    """QA: `enabled: false` written while the hub ran, and no scan since: POST run started it anyway."""
    root = tmp_path / "hub"
    config = make_hub(root)
    agent_repos(root, "alpha", "beta")
    config.manifest_path.write_text(MANIFEST.format(a="alpha", b="beta"))
    with started(config) as hub:
        config.manifest_path.write_text("version: 1\nrepos:\n- {id: alpha, path: alpha, enabled: false}\n"
                                        "- {id: beta, path: beta}\n")
        with pytest.raises(Conflict, match=r"alpha is disabled \(enabled: false in .*manifest.yml\)"):
            hub.run("alpha")
        config.manifest_path.write_text("version: 1\nrepos:\n- {id: beta, path: alpha}\n")
        with pytest.raises(Conflict, match=r"beta has changed in .*manifest.yml since the last scan; scan"):
            hub.run("beta")
        config.manifest_path.write_text("version: 1\nrepos: [\n")
        with pytest.raises(CarError, match=r"manifest.yml:\d+"):
            hub.run("beta")
        assert not RepoLayout(root / "alpha").lock.exists() and not RepoLayout(root / "beta").lock.exists()
