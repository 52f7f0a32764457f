"""hub_cache.bin: a new hub process starts from it, and any doubt about it costs only a slower start."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest

from car.hub import HubSupervisor
from car.hub_cache import MAGIC, read_hub_cache
from car.layout import HubLayout

from hub_fixtures import agent_repos, git_repos, make_hub, stamp, started
from support import backdate

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
