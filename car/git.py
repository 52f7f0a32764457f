"""The little git car needs: a change fingerprint, auto-commit, init. Never fails a run."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Set, Tuple

from car.layout import CAR_DIR

_IDENTITY = ["-c", "user.name=codex-autorunner", "-c", "user.email=car@localhost"]
QUICK_SECONDS = 60  # status, rev-parse, config: a few seconds even on a large tree
# add and commit: `git add -A` hashes every new file of a large tree, and a pre-commit hook may run a
# test suite for many minutes. An hour is far above any sane hook and still ends a hung one the same
# day. Not runner.run_timeout_seconds: a user who bounds quick agent runs at minutes would see slow
# hooks killed, and a run bound turned off (null) would let a hung hook hold the loop for ever.
WRITE_SECONDS = 3600
GRACE_SECONDS = 5  # from SIGTERM (git removes its lock files on it) to SIGKILL, unless the caller says
POLL_SECONDS = 0.25  # how often a git call that may be cancelled looks whether it is
# what an operation in progress keeps in the git dir (per worktree: found by --git-path), what it is,
# and how to end it; a rebase first: its steps leave CHERRY_PICK_HEAD-like files too
_IN_PROGRESS: Tuple[Tuple[str, str, str], ...] = (
    ("rebase-merge", "a rebase", "`git rebase --continue` or `git rebase --abort`"),
    ("rebase-apply", "a rebase (or `git am`)", "`git rebase --continue` / `git am --continue`, or `--abort`"),
    ("MERGE_HEAD", "a merge", "resolve the conflicts and `git commit`, or `git merge --abort`"),
    ("CHERRY_PICK_HEAD", "a cherry-pick", "`git cherry-pick --continue` or `git cherry-pick --abort`"),
    ("REVERT_HEAD", "a revert", "`git revert --continue` or `git revert --abort`"),
    ("sequencer", "a cherry-pick or revert of several commits", "`git cherry-pick --continue` (or "
     "`git revert --continue`), or `--abort`"),
    ("BISECT_LOG", "a bisect", "`git bisect reset`"),
)
KEPT_LINES = 12  # of git's output in the log: its fatal:/error: lines, else its last lines
KEPT_LINE_CHARS = 500


@dataclass(frozen=True)
class GitResult:
    code: int
    out: str  # stdout and stderr as one text
    ended: Optional[str] = None  # set when car ended git: what happened, said after "git <command>"


@dataclass(frozen=True)
class GitFacts:
    """Where a directory stands in git (inspect_git)."""

    top: Optional[Path]  # the work tree's top (the directory itself, or one above: a monorepo); None if none
    problem: str = ""  # why there is no work tree, in git's words
    busy: str = ""  # an operation in progress, or conflicts, and how to end it: no commit should happen now
    index_lock: Optional[Path] = None


@dataclass(frozen=True)
class CommitNote:
    """What auto_commit did: `text` for the log; `verdict` when the changes were left uncommitted."""

    text: str
    verdict: Optional[str] = None  # "failed" or "skipped"
    reason: str = ""  # why, in one short line (the end-of-loop warning)
    per_loop: bool = False  # the same every run (no work tree): worth saying once per loop


def _git(root: Path, *args: str, timeout_seconds: float = QUICK_SECONDS, grace_seconds: float = GRACE_SECONDS,
         cancel: Optional[Callable[[], bool]] = None) -> GitResult:
    # its own session: ending it reaches what it started too (a hook and its test suite), which would
    # otherwise hold the output pipe open after git is gone
    try:
        proc = subprocess.Popen(["git", *args], cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return GitResult(127, str(exc))
    deadline = time.monotonic() + timeout_seconds
    while True:
        left = max(0.0, deadline - time.monotonic())
        try:
            out = proc.communicate(timeout=min(left, POLL_SECONDS) if cancel else left)[0]
            return GitResult(proc.returncode, out.decode("utf-8", errors="replace"))
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel():
                why = "was ended: the run was killed"
            elif time.monotonic() >= deadline:
                why = f"did not finish within {timeout_seconds:g} s; ended it"
            else:
                continue
        _end(proc, grace_seconds)
        return GitResult(proc.returncode if proc.returncode is not None else -signal.SIGKILL, "", why)


def _end(proc: subprocess.Popen, grace_seconds: float) -> None:
    """SIGTERM git's group (git removes its lock files on it), SIGKILL what is left after the grace."""
    from car.agent import signal_group  # here: only a git call that overruns needs it

    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.communicate(timeout=grace_seconds)
        return
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:  # one that left the group (setsid) holds the pipe: car waits no more
        proc.stdout.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(GRACE_SECONDS)


def has_git() -> bool:
    import shutil  # here, as hashlib below: a run without git features never loads them (start time)

    return shutil.which("git") is not None


def _key_lines(out: str) -> List[str]:
    """What says why git failed: its fatal:/error: lines, else its last lines; bounded."""
    lines = [line.strip()[:KEPT_LINE_CHARS] for line in out.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return (said or lines)[-KEPT_LINES:]


def inspect_git(root: Path) -> GitFacts:
    """The work tree `root` is in (it may be a subdirectory of one), and what is going on in it."""
    if not has_git():
        return GitFacts(None, "git is not installed: not on PATH")
    names = [name for name, _, _ in _IN_PROGRESS]
    paths = [arg for name in ["index.lock", *names] for arg in ("--git-path", name)]
    res = _git(root, "rev-parse", "--show-toplevel", *paths)
    lines = res.out.splitlines()
    if res.code != 0 or len(lines) != 2 + len(names):
        return GitFacts(None, f"git rev-parse {res.ended}" if res.ended
                        else (_key_lines(res.out) or [f"git exit code {res.code}"])[-1])
    top = Path(lines[0])
    busy = next((f"{what} is in progress in {top} ({name}); end it first: {fix}"
                 for (name, what, fix), path in zip(_IN_PROGRESS, lines[2:]) if (root / path).exists()), "")
    if not busy:  # `git add -A` would mark conflicts resolved, markers and all
        unmerged = _git(root, "ls-files", "--unmerged", "--", ".")
        conflicted = sorted({line.split("\t", 1)[1] for line in unmerged.out.splitlines() if "\t" in line})
        if unmerged.code == 0 and conflicted:
            shown = ", ".join(conflicted[:3]) + (", ..." if len(conflicted) > 3 else "")
            busy = (f"{len(conflicted)} path(s) in {root} have unresolved conflicts ({shown}); resolve them "
                    f"(edit, then `git add`) or undo what made them")
    return GitFacts(top, busy=busy, index_lock=root / lines[1])


def fingerprint(root: Path, own_files: Iterable[Path] = ()) -> str:
    """A digest that changes when the repo's files change (git status + HEAD + changed files' stats, else
    mtimes); car's own files never change it: those in .codex-autorunner/, and `own_files` (the run log
    and its backups, wherever config puts them)."""
    import hashlib

    h = hashlib.sha256()
    if has_git():
        # one call: v2 --branch carries HEAD's oid ("# branch.oid") next to the changes. Without a .git
        # here, root may be a directory of a larger work tree (a monorepo): only its own files count
        scope = () if (root / ".git").exists() else ("--", ".")
        res = _git(root, "status", "--porcelain=v2", "--branch", "--untracked-files=all", *scope)
        if res.code == 0:
            base = os.fsencode(root) + b"/"
            own = {os.fsencode(p) for p in own_files}
            for line in res.out.split("\n"):  # not splitlines(): with core.quotePath off a path may hold U+2028
                h.update(_status_entry(base, line, own))
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


# fields before the path in each kind of `git status --porcelain=v2` line; a rename ("2 ") adds its origPath
_FIELDS_BEFORE_PATH = {"1 ": 8, "2 ": 9, "u ": 10, "? ": 1, "! ": 1}
_C_ESCAPE = re.compile(rb'\\([0-7]{3}|.)', re.S)
_C_CHARS = {b"a": b"\a", b"b": b"\b", b"t": b"\t", b"n": b"\n", b"v": b"\v", b"f": b"\f", b"r": b"\r"}


def _status_entry(base: bytes, line: str, own: Set[bytes]) -> bytes:
    """A line of `git status --porcelain=v2` as fingerprint bytes: the line and its paths' stats."""
    paths = _status_paths(line)
    # car's own files (state.json, the log: written every run) are never the agent's progress, even
    # where no .gitignore hides them
    if paths and all(_is_car_path(path) or base + path in own for path in paths):
        return b""
    # a path already listed stays listed the same however often it is edited again: its stat tells
    # each further edit
    return line.encode() + b"".join(b"\0" + _stat_key(base + path) for path in paths) + b"\n"


def _status_paths(line: str) -> List[bytes]:
    """The path (a rename: and its source) of a `git status --porcelain=v2` line, as the file system's bytes."""
    # not -z: with it git prints paths from the work tree's top, which a monorepo directory would need
    # another git call to find; without, from root (the cwd: status.relativePaths), C-quoted when odd
    count = _FIELDS_BEFORE_PATH.get(line[:2], 0)
    fields = line.split(" ", count)
    if not count or len(fields) <= count:
        return []  # a header ("# branch.oid ..."), or nothing
    return [_unquote(path) for path in (fields[-1].split("\t") if line[0] == "2" else [fields[-1]])]


def _unquote(path: str) -> bytes:
    """A path as git prints it: C-quoted ("t\\tab", "\\303\\251") when it holds a quote, control or non-ASCII byte."""
    if len(path) < 2 or path[0] != '"' or path[-1] != '"':
        return path.encode()
    return _C_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]) if len(m[1]) == 3 else _C_CHARS.get(m[1], m[1]),
                         path[1:-1].encode())


def _is_car_path(path: bytes) -> bool:
    """In a .codex-autorunner directory: car's, wherever it is in the listing."""
    return f"/{CAR_DIR}/".encode() in b"/" + path


def _stat_key(path: bytes) -> bytes:
    try:
        st = os.lstat(path)
    except OSError:  # gone (deleted, renamed away): its status line says so already
        return b"-"
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()


def auto_commit(root: Path, message: str, *, grace_seconds: float = GRACE_SECONDS,
                cancel: Optional[Callable[[], bool]] = None) -> Optional[CommitNote]:
    """Stage the agent's changes under `root` (git add -A -- .) and commit only those; None if nothing."""
    facts = inspect_git(root)
    if facts.top is None:
        return CommitNote(f"auto-commit: {root} is not in a git work tree ({facts.problem}); nothing is "
                          f"committed: make it one (`git init`, or fix its .git), or set git.auto_commit: false",
                          "skipped", f"not in a git work tree: {facts.problem}", per_loop=True)
    if facts.busy:
        return CommitNote(f"auto-commit skipped: {facts.busy}; the agent's changes are left uncommitted",
                          "skipped", facts.busy.split(";")[0])
    res = _git(root, "status", "--porcelain", "--", ".", cancel=cancel)
    if res.code != 0 or not res.out.strip():
        return None
    if cancel is not None and cancel():
        return CommitNote("auto-commit skipped: the run was killed; the agent's changes are left uncommitted",
                          "skipped", "the run was killed")
    res = _git(root, "add", "-A", "--", ".", timeout_seconds=WRITE_SECONDS, grace_seconds=grace_seconds,
               cancel=cancel)
    if res.code == 0 and not res.ended:
        identity: List[str] = [] if _git(root, "config", "user.email").out.strip() else _IDENTITY
        # `-- .`: only what is under root, whatever else of a monorepo its user has staged
        res = _git(root, *identity, "commit", "-q", "-m", message, "--", ".", timeout_seconds=WRITE_SECONDS,
                   grace_seconds=grace_seconds, cancel=cancel)
        step = "git commit"
    else:
        step = "git add"
    if res.ended:
        lock = facts.index_lock
        left = (f"; {lock} is left behind: once no other git command runs in this repo, delete it (rm '{lock}')"
                if lock is not None and lock.exists() else "")
        return CommitNote(f"auto-commit: {step} {res.ended}; the agent's changes are left uncommitted{left}",
                          "failed", f"{step} {res.ended}")
    if res.code != 0:
        said = _key_lines(res.out) or [f"exit code {res.code}"]
        short = next((line for line in said if line.startswith(("fatal:", "error:"))), said[-1])
        return CommitNote("\n".join([f"auto-commit: {step} failed (exit code {res.code}); the agent's changes "
                                     f"are left uncommitted:", *(f"  {line}" for line in said)]),
                          "failed", f"{step}: {short}")
    head = _git(root, "rev-parse", "--short", "HEAD").out.strip()
    return CommitNote(f"auto-commit: {head} {message}")


def git_init(root: Path) -> str:
    res = _git(root, "init", "-q")
    return res.out.strip() if res.code else ""
