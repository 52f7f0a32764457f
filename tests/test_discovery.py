"""discovery.py: one level down; .git as a dir or a file; hidden dirs and escaping symlinks skipped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from car.discovery import find_repos

from support import make_git_repo


def names(root: Path, base: Optional[Path] = None) -> list:
    return [r.rel_path for r in find_repos((base or root).resolve(), root.resolve())]


def test_a_git_dir_and_a_git_file_count_a_plain_dir_does_not(tmp_path: Path):
    make_git_repo(tmp_path / "dir-repo")
    (tmp_path / "worktree").mkdir()
    (tmp_path / "worktree" / ".git").write_text("gitdir: /somewhere/.git/worktrees/x\n")
    (tmp_path / "plain").mkdir()
    (tmp_path / "a-file").write_text("not a dir")
    assert names(tmp_path) == ["dir-repo", "worktree"]


def test_only_one_level_down(tmp_path: Path):
    make_git_repo(tmp_path / "outer" / "inner")
    make_git_repo(tmp_path / "top")
    assert names(tmp_path) == ["top"]


def test_hidden_dirs_and_the_hub_dir_are_not_repos(tmp_path: Path):
    make_git_repo(tmp_path / ".hidden")
    make_git_repo(tmp_path / ".codex-autorunner")
    make_git_repo(tmp_path / "visible")
    assert names(tmp_path) == ["visible"]


def test_symlinks_are_followed_only_inside_the_hub_root(tmp_path: Path):
    hub, outside = tmp_path / "hub", tmp_path / "outside"
    make_git_repo(outside / "far")
    make_git_repo(hub / "store" / "kept")  # two levels down: found only through the link
    os.symlink(outside / "far", hub / "escape")
    os.symlink(hub / "store" / "kept", hub / "inside")
    repos = find_repos(hub.resolve(), hub.resolve())
    assert [(r.rel_path, r.is_link) for r in repos] == [("inside", True)]
    assert repos[0].real_path == str((hub / "store" / "kept").resolve())


def test_a_link_to_a_sibling_repo_is_the_same_repo(tmp_path: Path):
    make_git_repo(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    assert names(tmp_path) == ["real"]


def test_a_link_to_the_hub_root_itself_is_not_a_repo(tmp_path: Path):
    make_git_repo(tmp_path)  # the hub root may be a git repo of its own
    os.symlink(tmp_path, tmp_path / "loop")
    assert names(tmp_path) == []


def test_repos_root_below_the_hub_root_gives_paths_relative_to_the_hub(tmp_path: Path):
    make_git_repo(tmp_path / "repos" / "alpha")
    assert names(tmp_path, tmp_path / "repos") == ["repos/alpha"]


def test_results_are_sorted_by_name(tmp_path: Path):
    for name in ("charlie", "alpha", "bravo"):
        make_git_repo(tmp_path / name)
    assert names(tmp_path) == ["alpha", "bravo", "charlie"]


def test_a_known_plain_dir_is_reported_without_its_git(tmp_path: Path):
    make_git_repo(tmp_path / "new")
    (tmp_path / "known").mkdir()  # a manifest entry whose .git went away: still listed by the hub
    os.symlink(tmp_path / "known", tmp_path / "alias")  # a link is never taken on trust
    root = tmp_path.resolve()
    assert [r.rel_path for r in find_repos(root, root, {"known", "alias"})] == ["known", "new"]
    assert [r.rel_path for r in find_repos(root, root)] == ["new"]
