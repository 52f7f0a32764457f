"""Finding a hub's repos: the immediate children of repos_root that hold a .git (dir or file)."""

from __future__ import annotations

import os
import stat
from operator import attrgetter
from pathlib import Path
from typing import Collection, Dict, List, NamedTuple, Optional, Tuple

from car.layout import CAR_DIR
from car.manifest import Manifest, escaping


class FoundRepo(NamedTuple):
    """One repo found on disk (a NamedTuple: a scan makes one per repo, so they must be cheap)."""

    name: str  # the directory's name: the display name
    rel_path: str  # relative to the hub root, POSIX separators
    real_path: str  # absolute, symlinks resolved (tells a link from the dir it points at)
    is_link: bool


_NAME = attrgetter("name")


def has_git(path: str) -> bool:
    """A .git directory, or a .git file (worktrees, submodules)."""
    try:
        mode = os.stat(path + "/.git").st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) or stat.S_ISREG(mode)


def is_inside(real: str, root: str) -> bool:
    """Strictly below `root` (both resolved): the root itself is not inside."""
    return real.startswith(root.rstrip(os.sep) + os.sep)


def repo_holding(repos_root: Path, path: Path) -> Optional[Path]:
    """The hub repo (a child of repos_root with a .git) that is `path` or holds it, or None; both resolved."""
    try:
        first = path.relative_to(repos_root).parts[:1]
    except ValueError:
        return None
    if not first or first[0].startswith(".") or not has_git(str(repos_root / first[0])):
        return None
    return repos_root / first[0]


def find_repos(repos_root: Path, hub_root: Path, known: Collection[str] = ()) -> List[FoundRepo]:
    """One level down, sorted by name; hidden dirs, CAR_DIR and symlinks leaving the hub root are skipped.

    Both roots must be resolved. A symlink to a repo found here too is the same repo: only the
    real directory is reported. A plain directory at a `known` path (the manifest's) is reported
    without looking for its .git: it is listed anyway, so that stat would tell nothing.
    """
    base, root = str(repos_root), str(hub_root)
    prefix = os.path.relpath(base, root).replace(os.sep, "/")
    prefix = "" if prefix == "." else prefix + "/"
    found: Dict[str, FoundRepo] = {}
    links: List[FoundRepo] = []
    with os.scandir(base) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name == CAR_DIR:
                continue
            try:
                if not entry.is_dir():  # follows symlinks
                    continue
                link = entry.is_symlink()
            except OSError:
                continue
            path, rel = entry.path, prefix + name
            if not link:
                if rel in known or has_git(path):
                    found[path] = FoundRepo(name, rel, path, False)
                continue
            real = os.path.realpath(path)
            if is_inside(real, root) and has_git(path):
                links.append(FoundRepo(name, rel, real, True))
    for repo in sorted(links, key=_NAME):
        found.setdefault(repo.real_path, repo)
    return sorted(found.values(), key=_NAME)


def new_repos(found: List[FoundRepo], manifest: Manifest, hub_root: Path) -> Tuple[List[FoundRepo], Dict[str, str]]:
    """The found repos no manifest entry points at (through a symlink or not), and the entries whose
    path leaves the hub root through a symlink (manifest.escaping). Only the entries that are not
    plain found directories need a realpath for either."""
    plain = {f.rel_path: f.real_path for f in found if not f.is_link}
    escapes = escaping([e for e in manifest.repos if e.path not in plain], hub_root)
    known = {plain.get(e.path) or os.path.realpath(hub_root / e.path) for e in manifest.repos}
    return [f for f in found if f.real_path not in known], escapes
