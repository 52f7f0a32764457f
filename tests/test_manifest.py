"""manifest.py: load/save, stable append-only ids, and the manifests car refuses (and never rewrites)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from car.errors import ManifestError
from car.hub import HubSupervisor
from car.manifest import Manifest, add_repos, load_manifest, make_id, read_manifest, save_manifest

from hub_fixtures import git_repos, make_hub, stamp


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    root.mkdir()
    return root.resolve()


def write(root: Path, text: str) -> Path:
    path = root / "manifest.yml"
    path.write_text(text)
    return path


def test_missing_manifest_is_empty(root: Path):
    assert load_manifest(root / "manifest.yml", root).repos == ()


def test_save_then_load_round_trips(root: Path):
    manifest = add_repos(Manifest(), ["alpha", "beta"])
    path = root / "manifest.yml"
    save_manifest(path, manifest)
    data = yaml.safe_load(path.read_text())
    assert data == {"version": 1, "repos": [
        {"id": "alpha", "path": "alpha", "enabled": True, "auto_run": False},
        {"id": "beta", "path": "beta", "enabled": True, "auto_run": False}]}
    assert load_manifest(path, root).repos == manifest.repos


def test_save_writes_only_when_the_bytes_change(root: Path):
    path = root / "manifest.yml"
    save_manifest(path, add_repos(Manifest(), ["alpha"]))
    before = stamp(path)
    saved = save_manifest(path, load_manifest(path, root))
    assert stamp(path) == before
    assert saved.sha256 == load_manifest(path, root).sha256


def test_ids_are_slugs_made_unique():
    assert make_id("alpha", []) == "alpha"
    assert make_id("my repo!", []) == "my-repo"
    assert make_id("alpha", ["alpha", "alpha-2"]) == "alpha-3"
    assert make_id("...", []) == "repo"
    assert make_id("ünï", []) == "uni"
    assert make_id("日本", []) == "repo"


def test_append_keeps_existing_ids_and_flags(root: Path):
    path = write(root, "version: 1\nrepos:\n- {id: alpha, path: old-alpha, enabled: false, auto_run: true}\n")
    manifest = add_repos(load_manifest(path, root), ["alpha", "beta"])
    assert [(e.id, e.path, e.enabled, e.auto_run) for e in manifest.repos] == [
        ("alpha", "old-alpha", False, True), ("alpha-2", "alpha", True, False), ("beta", "beta", True, False)]


def test_unknown_keys_are_kept_on_rewrite(root: Path):
    path = write(root, "version: 1\nowner: me\nrepos:\n- {id: a, path: a, note: keep me}\n")
    save_manifest(path, add_repos(load_manifest(path, root), ["b"]))
    data = yaml.safe_load(path.read_text())
    assert data["owner"] == "me" and data["repos"][0]["note"] == "keep me"
    assert data["repos"][1]["id"] == "b"


def test_an_absolute_path_inside_the_root_is_stored_relative(root: Path):
    path = write(root, f"version: 1\nrepos:\n- {{id: a, path: '{root}/a/'}}\n")
    assert load_manifest(path, root).repos[0].path == "a"


@pytest.mark.parametrize("text, words", [
    ("version: 1\nrepos: [\n  - id: a\n", ["invalid YAML", ":"]),
    ("version: 1\nrepos:\n- {id: a, path: a}\n- {id: a, path: b}\n", ["repos[1]", "'a'", "repos[0]"]),
    ("version: 1\nrepos:\n- {id: a, path: ../elsewhere}\n", ["repos[0]", "leaves the hub root"]),
    ("version: 1\nrepos:\n- {id: a, path: /etc}\n", ["repos[0]", "leaves the hub root"]),
    ("version: 1\nrepos:\n- {id: a, path: .}\n", ["leaves the hub root"]),
    ("version: 1\nrepos:\n- {id: a, path: .codex-autorunner}\n", ["repos[0]", "goes into a .codex-autorunner"]),
    ("version: 1\nrepos:\n- {id: a, path: r2/.codex-autorunner/x}\n", ["repos[0]", "goes into"]),
    ("version: 1\nrepos:\n- {id: a, path: r2/.git}\n", ["repos[0]", "goes into"]),
    ("version: 1\nrepos:\n- {id: a, path: a, enabled: 'yes'}\n", ["enabled", "true or false"]),
    ("version: 1\nrepos:\n- {id: 'a/b', path: a}\n", ["id"]),
    ("version: 2\nrepos: []\n", ["version"]),
    ("- just a list\n", ["mapping"]),
])
def test_bad_manifests_are_refused_with_file_entry_and_fix(root: Path, text: str, words: list):
    path = write(root, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, root)
    message = str(info.value)
    assert str(path) in message and "by hand" in message
    assert "((" not in message and "))" not in message  # one aside, not one inside another
    for word in words:
        assert word in message


def test_a_symlink_that_leaves_the_root_is_refused(root: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    path = write(root, "version: 1\nrepos:\n- {id: link, path: link}\n")
    assert read_manifest(path, root).repos[0].path == "link"  # lexically fine
    with pytest.raises(ManifestError, match="symlink that leaves the hub root"):
        load_manifest(path, root)


@pytest.mark.parametrize("text", [
    "version: 1\nrepos: [\n",
    "version: 1\nrepos:\n- {id: a, path: alpha}\n- {id: a, path: beta}\n",
    "version: 1\nrepos:\n- {id: a, path: ../../x}\n",
])
def test_a_bad_manifest_is_never_rewritten_by_a_scan(tmp_path: Path, text: str):
    root = tmp_path / "hub"
    config = make_hub(root)
    git_repos(root, "alpha", "beta", "gamma")
    config.manifest_path.write_text(text)
    before = stamp(config.manifest_path)
    hub = HubSupervisor(config)
    with pytest.raises(ManifestError):
        hub.start()
    assert stamp(config.manifest_path) == before
    assert not (root / ".codex-autorunner" / "lock").exists()  # the failed start let go of the hub lock
    assert not (root / "alpha" / ".codex-autorunner").exists()


MANIFEST = ("version: 1\nowner: me\nrepos:\n- {id: alpha, path: alpha, note: keep me}\n"
            "- {id: beta, path: sub/beta, enabled: false, auto_run: true}\n- {id: gamma, path: gamma}\n")
PLAIN = "version: 1\nrepos:\n- {id: alpha, path: alpha}\n- {id: beta, path: beta}\n- {id: gamma, path: gamma}\n"


def test_a_cached_manifest_reads_as_its_file_does(root: Path):
    path = write(root, MANIFEST)
    from_file = read_manifest(path, root)
    cached = from_file.to_cache()
    assert cached is not None and cached[0] == from_file.sha256
    again = read_manifest(path, root, cached)
    assert again == from_file and again.extra == {"owner": "me"} and again.repos[0].extra == {"note": "keep me"}
    plain = write(root, PLAIN)
    assert read_manifest(plain, root, read_manifest(plain, root).to_cache()) == read_manifest(plain, root)


@pytest.mark.parametrize("row", [
    ("alpha", "../outside", True, False, None), ("alpha", "/etc", True, False, None),
    ("a/b", "alpha", True, False, None), ("alpha\n", "alpha", True, False, None),
    ("al\0pha", "alpha", True, False, None), ("alpha", "al\0pha", True, False, None),
    ("alpha", "gamma", True, False, None), ("gamma", "alpha", True, False, None),
    ("alpha", "alpha", "yes", False, None), ("alpha", "alpha", True, False, ["not", "a", "dict"]),
    ("alpha", " ", True, False, None), ("alpha", "..", True, False, None),
    ("alpha", ".codex-autorunner", True, False, None), ("alpha", "beta/.git", True, False, None),
])
@pytest.mark.parametrize("text", [PLAIN, MANIFEST], ids=["plain names", "a nested path"])
def test_a_cached_manifest_that_does_not_check_out_yields_to_the_file(root: Path, row: tuple, text: str):
    """hub_cache.bin is car's own file, but a copy is only trusted as far as it passes the checks."""
    path = write(root, text)
    sha, extra, rows = read_manifest(path, root).to_cache()
    forged = read_manifest(path, root, (sha, extra, [row, *rows[1:]]))
    assert forged == read_manifest(path, root)


@pytest.mark.parametrize("text, words", [
    ('version: 1\nrepos:\n- {id: "a\\n", path: a}\n', ["id"]),
    ('version: 1\nrepos:\n- {id: a, path: "a\\0b"}\n', ["path", "expected a directory"]),
    ("version: 1\nrepos:\n- {id: a, path: ' '}\n", ["path", "expected a directory"]),
])
def test_ids_and_paths_car_cannot_use_are_refused(root: Path, text: str, words: list):
    with pytest.raises(ManifestError) as info:
        load_manifest(write(root, text), root)
    for word in words:
        assert word in str(info.value)


COMMENTED = """\
# repos I care about; car appends below
version: 1
repos:
- id: alpha
  path: alpha  # the first one
  enabled: true
  auto_run: false
# keep beta off for now
"""
INDENTED = "version: 1\nrepos:\n  # indented, as many people write lists\n  - id: alpha\n    path: alpha\n"
FRESH = "# hub of team X\nversion: 1\nrepos: []\n"


@pytest.mark.parametrize("text", [COMMENTED, INDENTED, FRESH], ids=["commented", "indented", "hub init's"])
def test_new_entries_are_appended_to_the_text_a_person_wrote(root: Path, text: str):
    path = write(root, text)
    before = read_manifest(path, root)
    saved = save_manifest(path, add_repos(before, ["beta", "gamma"]))
    after = path.read_text()
    assert after.startswith(text.replace("repos: []\n", "repos:\n"))  # every comment and line kept
    again = read_manifest(path, root)
    assert [(e.id, e.path, e.enabled, e.auto_run) for e in again.repos] == \
        [(e.id, e.path, e.enabled, e.auto_run) for e in saved.repos]
    assert [e.id for e in again.repos][-2:] == ["beta", "gamma"] and again.sha256 == saved.sha256
    assert not path.with_name("manifest.yml.bak").exists()


def test_a_manifest_that_cannot_be_appended_to_is_rewritten_with_a_copy_kept(root: Path):
    text = "# flow style\nversion: 1\nrepos: [{id: alpha, path: alpha}]\nowner: me\n"
    path = write(root, text)
    save_manifest(path, add_repos(read_manifest(path, root), ["beta"]))
    assert [e.id for e in read_manifest(path, root).repos] == ["alpha", "beta"]
    assert path.with_name("manifest.yml.bak").read_text() == text


def test_a_scan_keeps_the_comments_of_the_manifest(tmp_path: Path):
    root = tmp_path / "hub"
    config = make_hub(root)
    git_repos(root, "alpha")
    hub = HubSupervisor(config)
    hub.start(auto_run=False, watch=False)
    hub.shutdown()
    config.manifest_path.write_text("# mine\n" + config.manifest_path.read_text() + "# the end\n")
    git_repos(root, "beta")
    hub = HubSupervisor(config)
    hub.start(auto_run=False, watch=False)
    hub.shutdown()
    text = config.manifest_path.read_text()
    assert text.startswith("# mine\n") and "# the end\n- id: beta\n" in text
