"""The little git car needs: a change fingerprint, auto-commit, init. Never fails a run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

from car.layout import CAR_DIR

_IDENTITY = ["-c", "user.name=codex-autorunner", "-c", "user.email=car@localhost"]


def _git(root: Path, *args: str, timeout: float = 60) -> Tuple[int, str]:
    try:
        proc = subprocess.run(["git", *args], cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, proc.stdout.decode("utf-8", errors="replace")


def has_git() -> bool:
    import shutil  # here, as hashlib below: a run without git features never loads them (start time)

    return shutil.which("git") is not None


def is_work_tree(root: Path) -> bool:
    return (root / ".git").exists() and has_git()


def fingerprint(root: Path) -> str:
    """A digest that changes when the repo's files change (git status + HEAD, else mtimes)."""
    import hashlib

    h = hashlib.sha256()
    if is_work_tree(root):
        # one call: v2 --branch carries HEAD's oid ("# branch.oid") next to the changes
        h.update(_git(root, "status", "--porcelain=v2", "--branch", "--untracked-files=all")[1].encode())
        return h.hexdigest()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".git", CAR_DIR)]
        for name in filenames:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            h.update(f"{dirpath}/{name}:{st.st_mtime_ns}:{st.st_size}".encode())
    return h.hexdigest()


def auto_commit(root: Path, message: str) -> Optional[str]:
    """Stage the agent's changes (git add -A) and commit; a line for the log, None if nothing."""
    if not is_work_tree(root):
        return None
    code, out = _git(root, "status", "--porcelain")
    if code != 0 or not out.strip():
        return None
    code, out = _git(root, "add", "-A")
    if code != 0:
        return f"auto-commit: git add failed: {out.strip()[:300]}"
    identity: List[str] = [] if _git(root, "config", "user.email")[1].strip() else _IDENTITY
    code, out = _git(root, *identity, "commit", "-q", "-m", message)
    if code != 0:
        return f"auto-commit: git commit failed: {out.strip()[:300]}"
    head = _git(root, "rev-parse", "--short", "HEAD")[1].strip()
    return f"auto-commit: {head} {message}"


def git_init(root: Path) -> str:
    code, out = _git(root, "init", "-q")
    return out.strip() if code else ""
