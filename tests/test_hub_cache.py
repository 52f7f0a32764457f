"""hub_cache.bin: a new hub process starts from it, and any doubt about it costs only a slower start."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List

import pytest

from car.config import HubConfig
from car.hub import HubSupervisor
from car.hub_cache import MAGIC, read_hub_cache
from car.hub_state import RepoEntry
from car.layout import CAR_DIR, HubLayout, RepoLayout
from car.lock import acquire_lock
from car.probe import RepoProbe

from hub_fixtures import agent_repos, git_repos, make_hub, stamp, started
from support import backdate, update_config, wait_until, write_todo

STATE_KEYS = {"version", "last_scan_at", "repos"}


def warm_hub(root: Path):
    """A hub whose cache holds trusted reads of every repo: alpha and beta idle, `broken` an init_error."""
    config = make_hub(root)
    agent_repos(root, "alpha", "beta")
    git_repos(root, "broken")
    (root / "broken" / ".codex-autorunner").write_text("a file where car wants a directory")
    with started(config):
        pass
    backdate(root)
    with started(config):  # the reads are now old enough to be stored
        pass
    return config


def statuses(hub: HubSupervisor) -> dict:
    return {r.id: r.status.value for r in hub.snapshot().repos}


EXPECTED = {"alpha": "idle", "beta": "idle", "broken": "init_error"}


def test_a_new_hub_process_starts_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = warm_hub(tmp_path / "hub")

    def no_yaml(*_):
        raise AssertionError("the manifest's YAML was parsed although the cache holds it")

    monkeypatch.setattr("car.manifest.parse_yaml", no_yaml)
    with started(config) as hub:
        assert statuses(hub) == EXPECTED
        reads = {repo_id: slot.probe.rereads for repo_id, slot in hub._listing.slots.items()}
        assert reads["alpha"] == reads["beta"] == 0  # no file read: their stats matched the cache
        # (the scan tried to init `broken` again, as scans do)
    assert HubSupervisor(config).inspect().get("broken").status.value == "init_error"  # `hub status`


def damage_flip(raw: bytes) -> bytes:
    """One bit of a repo id flipped: still well-formed marshal data, and wrong."""
    at = raw.index(b"alpha", len(MAGIC))
    return raw[:at] + b"Alpha" + raw[at + 5:]


@pytest.mark.parametrize("damage", [
    lambda raw: raw[:len(raw) // 2],  # cut short
    damage_flip,  # one bit flipped
    lambda raw: raw.replace(MAGIC, MAGIC.replace(b"cpython-", b"cpython-9")),  # another Python wrote it
    lambda raw: b"",
    lambda raw: os.urandom(len(raw)),
], ids=["truncated", "bit-flip", "other-python", "empty", "noise"])
def test_a_damaged_or_foreign_cache_reads_as_empty(tmp_path: Path, damage):
    root = tmp_path / "hub"
    config = warm_hub(root)
    cache = HubLayout(root).hub_cache
    cache.write_bytes(damage(cache.read_bytes()))
    assert read_hub_cache(cache) is None
    assert HubSupervisor(config).inspect().get("broken").status.value == "init_error"  # from hub_state.json
    with started(config) as hub:
        assert statuses(hub) == EXPECTED
    assert read_hub_cache(cache) is not None  # written anew


def test_hub_state_json_is_rewritten_when_removed_or_edited(tmp_path: Path):
    root = tmp_path / "hub"
    config = warm_hub(root)
    layout = HubLayout(root)
    expected = json.loads(layout.hub_state.read_text())["repos"]
    for spoil in (layout.hub_state.unlink, lambda: layout.hub_state.write_text("{}\n")):
        spoil()
        with started(config):
            pass
        assert json.loads(layout.hub_state.read_text())["repos"] == expected


def test_an_older_hub_state_json_with_caches_in_it_is_rewritten_without_them(tmp_path: Path):
    root = tmp_path / "hub"
    config = warm_hub(root)
    layout = HubLayout(root)
    data = json.loads(layout.hub_state.read_text())
    layout.hub_state.write_text(json.dumps({**data, "manifest": {"sha256": "0", "data": {}}, "files": {}}))
    layout.hub_cache.unlink()
    assert HubSupervisor(config).inspect().get("broken").status.value == "init_error"
    with started(config):
        pass
    assert json.loads(layout.hub_state.read_text()).keys() == STATE_KEYS


def test_a_manifest_marshal_cannot_hold_is_parsed_each_start_and_nothing_is_rewritten(tmp_path: Path):
    root = tmp_path / "hub"
    config = warm_hub(root)
    text = config.manifest_path.read_text().replace("id: alpha", "id: alpha\n  added: 2026-11-24", 1)
    config.manifest_path.write_text(text)  # a YAML date: marshal has no type for it
    with started(config) as hub:
        assert statuses(hub) == EXPECTED
        assert hub._listing.manifest.get("alpha").extra == {"added": datetime.date(2026, 11, 24)}
    assert read_hub_cache(HubLayout(root).hub_cache).manifest is None
    layout = HubLayout(root)
    before = [stamp(p) for p in (config.manifest_path, layout.hub_state, layout.hub_cache)]
    with started(config) as hub:
        hub.scan()
    assert [stamp(p) for p in (config.manifest_path, layout.hub_state, layout.hub_cache)] == before


# the memo: a new process's first scan of an unchanged tree ------------------------------------
def memo_hub(root: Path) -> HubConfig:
    """Idle repos whose reads are all trusted: the cache holds a memo of the listing."""
    config = make_hub(root)
    agent_repos(root, "alpha", "beta", "gamma")
    with started(config):
        pass
    backdate(root)
    with started(config):
        pass
    assert read_hub_cache(HubLayout(root).hub_cache).memo is not None
    return config


def count_probes(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """The roots of the probes made from now on."""
    made: List[str] = []
    original = RepoProbe.__init__

    def init(self: RepoProbe, root: str, *args: object) -> None:
        made.append(root)
        original(self, root, *args)

    monkeypatch.setattr(RepoProbe, "__init__", init)
    return made


def test_a_new_process_scans_an_unchanged_tree_from_the_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "hub"
    config = memo_hub(root)
    layout = HubLayout(root)
    files = (config.manifest_path, layout.hub_state, layout.hub_cache)
    before = [stamp(p) for p in files]
    made = count_probes(monkeypatch)
    hub = HubSupervisor(config)
    hub.start(auto_run=False, watch=False)
    try:
        assert made == []  # four stats a repo, and the entries came from the memo
        assert [r.status.value for r in hub.last_scan.repos] == ["idle"] * 3
        assert hub.last_scan.repos == hub.snapshot().repos  # what judging each repo's files gives
        assert len(made) == 3
    finally:
        hub.shutdown()
    assert [stamp(p) for p in files] == before  # the memo made again from the probes is the same


def by_id(entries: tuple) -> Dict[str, RepoEntry]:
    return {e.id: e for e in entries}


def write_state(repo: Path, **state: object) -> None:
    (RepoLayout(repo).state).write_text(json.dumps({"status": "idle", **state}))


def edit_manifest(root: Path, old: str, new: str) -> None:
    manifest = root / CAR_DIR / "manifest.yml"
    text = manifest.read_text()
    assert old in text
    manifest.write_text(text.replace(old, new))


def move_todo(repo: Path) -> None:
    update_config(repo, docs={"todo": "TASKS.md"})
    (repo / "TASKS.md").write_text("- [x] one\n- [ ] two\n- [ ] three\n")


CHANGES: Dict[str, tuple] = {  # what changed since the memo was written -> what the scan must show
    "todo ticked": (lambda root: write_todo(root / "alpha", ["second"], done=["first"]),
                    lambda e: e["alpha"].todo_done == 1),
    "run failed elsewhere": (lambda root: write_state(root / "beta", status="error", last_run_id=4),
                             lambda e: e["beta"].status == "error" and e["beta"].last_run_id == 4),
    "a live lock": (lambda root: acquire_lock(RepoLayout(root / "alpha").lock),
                    lambda e: e["alpha"].status == "locked" and e["alpha"].lock_status == "locked_alive"),
    "a dead lock": (lambda root: RepoLayout(root / "alpha").lock.write_text(json.dumps({"pid": 2 ** 22 + 7})),
                    lambda e: e["alpha"].lock_status == "locked_stale"),
    "repo removed": (lambda root: shutil.rmtree(root / "gamma"), lambda e: e["gamma"].status == "missing"),
    "manifest edited": (lambda root: edit_manifest(root, "path: beta\n  enabled: true", "path: beta\n  enabled: false"),
                        lambda e: e["beta"].enabled is False),
    "repo added": (lambda root: agent_repos(root, "delta"), lambda e: e["delta"].status == "idle"),
    "todo moved": (lambda root: move_todo(root / "alpha"),
                   lambda e: (e["alpha"].todo_done, e["alpha"].todo_total) == (1, 3)),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_any_change_since_the_memo_makes_the_scan_judge_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  change: tuple):
    make_change, shows = change
    root = tmp_path / "hub"
    config = memo_hub(root)
    make_change(root)
    made = count_probes(monkeypatch)
    hub = HubSupervisor(config)
    hub.start(auto_run=False, watch=False)
    try:
        assert made  # not from the memo
        assert shows(by_id(hub.last_scan.repos))
        assert hub.last_scan.repos == hub.snapshot().repos
    finally:
        hub.shutdown()


def test_no_memo_while_a_repo_says_more_than_its_files(tmp_path: Path):
    root = tmp_path / "hub"
    warm_hub(root)  # `broken` failed to init: a hub fact that a new process learns from hub_state.json
    assert read_hub_cache(HubLayout(root).hub_cache).memo is None
    config = memo_hub(tmp_path / "other")
    acquire_lock(RepoLayout(tmp_path / "other" / "alpha").lock)
    with started(config):
        pass
    assert read_hub_cache(HubLayout(tmp_path / "other").hub_cache).memo is None


def test_after_a_start_from_the_memo_only_changed_repos_are_published(tmp_path: Path):
    config = memo_hub(tmp_path / "hub")
    with started(config) as hub:
        seq = hub.events.seq
        write_todo(tmp_path / "hub" / "alpha", ["second"], done=["first"])

        def published() -> list:
            return [data for kind, data in hub.events.read_since(seq, timeout=0)[1] if kind == "repo"]

        wait_until(published, 10, "alpha's change published")
        hub.scan()  # a full round: every repo read again
        assert [(e.id, e.todo_done) for e in published()] == [("alpha", 1)]
