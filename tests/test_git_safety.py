"""git.auto_commit and car's other git calls leave a user's repository as they found it (QA)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

from car import git as car_git
from car.bootstrap import init_repo
from car.cli import main
from car.config import load_config
from car.engine import Engine
from car.runner import kill_elsewhere
from car.status import StopReason

from support import (
    FAKE_AGENT,
    FAST_RUNNER,
    git,
    make_git_repo,
    make_repo,
    pid_alive,
    update_config,
    wait_until,
    write_todo,
)

ME = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]


def engine(root: Path) -> Engine:
    return Engine(load_config(root / ".codex-autorunner" / "config.yml"))


def log_text(root: Path) -> str:
    return (root / ".codex-autorunner" / "codex-autorunner.log").read_text()


def try_git(root: Path, *args: str) -> subprocess.CompletedProcess:
    """A git command that is meant to stop on a conflict (check=False)."""
    return subprocess.run(["git", *ME, *args], cwd=root, capture_output=True, text=True, timeout=30)


def commit_readme(root: Path, text: str) -> str:
    (root / "README").write_text(text + "\n")
    git(root, *ME, "commit", "-q", "-am", text)
    return git(root, "rev-parse", "HEAD").strip()


def committing_repo(root: Path) -> Path:
    """A repo (make_repo) with auto_commit on, its README and car's .gitignore committed."""
    make_repo(root)
    update_config(root, git={"auto_commit": True})
    (root / "README").write_text("base\n")
    git(root, "add", "-A")
    git(root, *ME, "commit", "-q", "-m", "base")
    return root


def start_operation(root: Path, operation: str) -> str:
    """Leave `operation` stopped on a conflict in README; returns the git-dir entry that says so."""
    git(root, "checkout", "-q", "-b", "side")
    side = commit_readme(root, "side")
    git(root, "checkout", "-q", "-")
    first = commit_readme(root, "main")
    commit_readme(root, "main again")
    command = {"merge": ["merge", "side"], "rebase": ["rebase", "side"], "cherry-pick": ["cherry-pick", side],
               "revert": ["revert", "--no-edit", first]}[operation]
    assert "CONFLICT" in try_git(root, *command).stdout
    return {"merge": "MERGE_HEAD", "rebase": "rebase-merge", "cherry-pick": "CHERRY_PICK_HEAD",
            "revert": "REVERT_HEAD"}[operation]


def pre_commit_hook(root: Path, body: str) -> None:
    hook = root / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\n" + body + "\n")
    hook.chmod(0o755)


def loop_in_thread(eng: Engine) -> tuple:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("reason", eng.run_loop(once=True)), daemon=True)
    thread.start()
    return thread, result


def committed_files(root: Path) -> List[str]:
    return sorted(git(root, "show", "--name-only", "--format=", "HEAD").split())


# 1. an operation in progress -----------------------------------------------------------------------------
@pytest.mark.parametrize("operation", ["merge", "rebase", "cherry-pick", "revert"])
def test_auto_commit_leaves_an_operation_in_progress_alone(tmp_path: Path, operation: str) -> None:
    """QA: `git add -A` marked the conflict resolved and `git commit` ended the user's merge as
    `[codex] run #1`, conflict markers and all; mid-rebase, car committed in the middle of it."""
    root = committing_repo(tmp_path / "r")
    marker = start_operation(root, operation)
    head = git(root, "rev-parse", "HEAD")
    assert engine(root).run_loop(once=True) is StopReason.STOP_AFTER_RUNS
    assert git(root, "rev-parse", "HEAD") == head
    assert git(root, "ls-files", "--unmerged", "README")  # still a conflict: nothing marked it resolved
    assert (root / ".git" / marker).exists()
    skipped = [line for line in log_text(root).splitlines() if "auto-commit" in line]
    assert len(skipped) == 1 and f"car: auto-commit skipped: a {operation}" in skipped[0]
    assert f"in progress in {root} ({marker}); end it first: " in skipped[0]
    assert f"`git {operation} --abort`" in skipped[0]
    assert skipped[0].endswith("the agent's changes are left uncommitted")


def test_auto_commit_leaves_unmerged_paths_alone(tmp_path: Path) -> None:
    """Conflicts with no operation to name (a `git stash pop` that clashed): still not car's to resolve."""
    root = committing_repo(tmp_path / "r")
    (root / "README").write_text("stashed\n")
    git(root, "stash", "-q")
    commit_readme(root, "main")
    assert "CONFLICT" in try_git(root, "stash", "pop").stdout
    head = git(root, "rev-parse", "HEAD")
    engine(root).run_loop(once=True)
    assert git(root, "rev-parse", "HEAD") == head and git(root, "ls-files", "--unmerged", "README")
    assert f"car: auto-commit skipped: 1 path(s) in {root} have unresolved conflicts (README)" in log_text(root)


def test_auto_commit_in_a_linked_worktree_finds_its_merge(tmp_path: Path) -> None:
    """A worktree keeps its MERGE_HEAD in the main repo's .git/worktrees/<name>/ (git rev-parse --git-path)."""
    main_repo = make_git_repo(tmp_path / "main")
    git(main_repo, *ME, "commit", "-q", "--allow-empty", "-m", "base")
    root = tmp_path / "wt"
    git(main_repo, "worktree", "add", "-q", str(root))
    init_repo(root)
    update_config(root, codex={"binary": sys.executable, "args": [str(FAKE_AGENT)]}, runner=FAST_RUNNER,
                  git={"auto_commit": True})
    (root / "README").write_text("base\n")
    git(root, "add", "-A")
    git(root, *ME, "commit", "-q", "-m", "readme")
    start_operation(root, "merge")
    head = git(root, "rev-parse", "HEAD")
    engine(root).run_loop(once=True)
    assert git(root, "rev-parse", "HEAD") == head
    assert "car: auto-commit skipped: a merge is in progress" in log_text(root)


def test_doctor_warns_about_a_merge_in_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root = committing_repo(tmp_path / "r")
    start_operation(root, "merge")
    monkeypatch.chdir(root)
    assert main(["doctor"]) == 0  # a warning, not a failure
    out = capsys.readouterr().out
    assert (f"warn  a merge is in progress in {root} (MERGE_HEAD); end it first: resolve the conflicts and "
            "`git commit`, or `git merge --abort`; until then git.auto_commit commits nothing") in out
    assert "all checks passed" in out


# 2. a git call that runs long ------------------------------------------------------------------------------
@pytest.mark.parametrize("step", ["git add", "git commit"])
def test_a_git_step_that_overruns_is_ended_and_leaves_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              step: str) -> None:
    """QA: git ran under a fixed 60 s and was SIGKILLed: .git/index.lock stayed and broke the user's repo,
    and the log line was a dump of the argv list. Now SIGTERM first (git removes its locks), to what git
    started too, and one plain line. A slow clean filter stands in for `git add -A` on a large tree."""
    root = committing_repo(tmp_path / "r")
    pids = tmp_path / "slow.pid"
    slow = f"echo $$ > {pids}; exec sleep 120"
    if step == "git add":
        git(root, "config", "filter.slow.clean", slow)
        (root / ".git" / "info" / "attributes").write_text("work.txt filter=slow\n")
    else:
        pre_commit_hook(root, slow)
    monkeypatch.setattr(car_git, "WRITE_SECONDS", 2, raising=False)
    head = git(root, "rev-parse", "HEAD")
    started = time.monotonic()
    assert engine(root).run_loop(once=True) is StopReason.STOP_AFTER_RUNS
    assert not (root / ".git" / "index.lock").exists()
    assert (f"car: auto-commit: {step} did not finish within 2 s; ended it; the agent's changes are left "
            "uncommitted\n") in log_text(root)
    assert time.monotonic() - started < 30
    assert git(root, "rev-parse", "HEAD") == head and "work.txt" in git(root, "status", "--porcelain")
    slow_pid = int(pids.read_text())
    wait_until(lambda: not pid_alive(slow_pid), 5, f"what {step} started to be ended with it")


def test_an_index_lock_left_behind_is_named_with_its_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = committing_repo(tmp_path / "r")
    lock = root / ".git" / "index.lock"
    # stands in for a git that could not clean up: once git is gone, the lock is there again
    pre_commit_hook(root, f"trap 'sleep 1; : > {lock}; exit 1' TERM\nsleep 120 &\nwait $!")
    monkeypatch.setattr(car_git, "WRITE_SECONDS", 2, raising=False)
    engine(root).run_loop(once=True)
    assert (f"did not finish within 2 s; ended it; the agent's changes are left uncommitted; {lock} is left "
            f"behind: once no other git command runs in this repo, delete it (rm '{lock}')") in log_text(root)


@pytest.mark.parametrize("how", ["engine.kill", "car kill"])
def test_a_kill_ends_a_long_commit_hook_within_the_grace(tmp_path: Path, how: str) -> None:
    """`car kill` (or Ctrl-C on `car run`) while a pre-commit hook runs: the loop ends now, not when git does."""
    root = committing_repo(tmp_path / "r")
    pids = tmp_path / "hook.pid"
    pre_commit_hook(root, f"echo $$ > {pids}\nexec sleep 120")
    eng = engine(root)
    thread, result = loop_in_thread(eng)
    wait_until(lambda: pids.exists() and pids.read_text().strip(), 20, "the pre-commit hook to start")
    if how == "engine.kill":
        eng.kill(StopReason.KILLED)
    else:
        kill_elsewhere(eng.config)  # what `car kill` in another process does: the stop file says kill
    thread.join(timeout=15)  # kill_grace_seconds is 2
    assert not thread.is_alive(), "the loop still waits for git after the kill"
    assert result["reason"] is StopReason.KILLED
    assert "car: auto-commit: git commit was ended: the run was killed; the agent's changes are left " \
           "uncommitted" in log_text(root)
    assert not (root / ".git" / "index.lock").exists()
    assert not pid_alive(int(pids.read_text()))


# 3. why a commit failed, in the log and at the end of `car run` ----------------------------------------------
def test_a_failed_commit_logs_gits_fatal_line_and_car_says_so_at_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """QA: the failure was cut at 300 characters, before git's one useful line, and `car run` ended with
    exit code 0 and not a word about it."""
    for var, value in {"HOME": tmp_path / "home", "XDG_CONFIG_HOME": tmp_path / "home", "GIT_CONFIG_NOSYSTEM": "1"
                       }.items():
        monkeypatch.setenv(var, str(value))
    root = committing_repo(tmp_path / "r")
    git(root, "config", "user.useConfigOnly", "true")
    git(root, "config", "--unset", "user.name")  # an email, so car adds no identity of its own
    monkeypatch.chdir(root)
    assert main(["once"]) == 0
    fatal = "fatal: no name was given and auto-detection is disabled"
    assert f"car:   {fatal}\n" in log_text(root)
    assert "car: auto-commit: git commit failed (exit code 128); the agent's changes are left uncommitted:\n" \
        in log_text(root)
    err = capsys.readouterr().err
    assert err == (f"car: warning: auto-commit failed in run 1 (git commit: {fatal}); its changes are left "
                   f"uncommitted\n")
    git(root, "config", "user.name", "test")
    assert main(["once"]) == 0
    assert capsys.readouterr().err == ""  # run 2 committed run 1's changes with its own
    assert git(root, "log", "-1", "--format=%s").strip() == "[codex] run #2"
    assert git(root, "status", "--porcelain") == ""


# 4. a directory of a larger work tree (a monorepo), and no work tree at all ------------------------------------
def monorepo(tmp_path: Path) -> tuple:
    """mono/.git with car's repo at mono/sub; returns (mono, sub)."""
    mono = make_git_repo(tmp_path / "mono")
    (mono / ".gitignore").write_text("*.log\n")
    git(mono, "add", "-A")
    git(mono, *ME, "commit", "-q", "-m", "base")
    sub = mono / "sub"
    sub.mkdir()
    init_repo(sub)
    update_config(sub, codex={"binary": sys.executable, "args": [str(FAKE_AGENT)]}, runner=FAST_RUNNER,
                  git={"auto_commit": True})
    write_todo(sub, ["first", "second"])
    return mono, sub


def test_doctor_in_a_monorepo_directory_names_its_work_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys) -> None:
    """QA: doctor said "not a git repository; `car init --git-init` creates one": a nested repo."""
    mono, sub = monorepo(tmp_path)
    monkeypatch.chdir(sub)
    assert main(["doctor"]) == 0
    assert f"ok    git repository (part of the work tree at {mono})\n" in capsys.readouterr().out
    report = init_repo(sub, git_init=True)
    assert not (sub / ".git").exists()  # --git-init makes no nested repo either
    assert f"git init skipped: already in the git work tree at {mono}" in report.actions


def test_auto_commit_in_a_monorepo_commits_only_its_directory(tmp_path: Path) -> None:
    """QA: nothing was committed. Now only sub/ is staged and committed; what the user staged elsewhere
    in the monorepo stays staged, and nothing else of it is added."""
    mono, sub = monorepo(tmp_path)
    (mono / "other").mkdir()
    (mono / "other" / "staged.txt").write_text("the user's\n")
    git(mono, "add", "other/staged.txt")
    (mono / "other" / "loose.txt").write_text("the user's too\n")
    assert engine(sub).run_loop(once=True) is StopReason.STOP_AFTER_RUNS
    assert git(mono, "log", "-1", "--format=%s").strip() == "[codex] run #1"
    assert committed_files(mono) == ["sub/.codex-autorunner/.gitignore", "sub/work.txt"]
    assert git(mono, "status", "--porcelain").splitlines() == ["A  other/staged.txt", "?? other/loose.txt"]


def test_progress_in_a_monorepo_directory_is_its_git_status(tmp_path: Path) -> None:
    """The fingerprint is `git status -- .` + HEAD: an ignored build file is no progress, nor is a change
    elsewhere in the monorepo; a change here is."""
    mono, sub = monorepo(tmp_path)
    before = car_git.fingerprint(sub)
    (sub / "build.log").write_text("ignored by the monorepo's .gitignore\n")
    (mono / "elsewhere.txt").write_text("not this directory's\n")
    assert car_git.fingerprint(sub) == before
    (sub / "work.txt").write_text("work\n")
    assert car_git.fingerprint(sub) != before


@pytest.mark.parametrize("dot_git", ["none", "empty dir", "broken worktree file"])
def test_auto_commit_outside_any_work_tree_says_so_once_per_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 dot_git: str) -> None:
    """QA: auto_commit: true did nothing, silently."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # whatever holds the temp dir is not looked at
    root = tmp_path / "r"
    root.mkdir()
    if dot_git == "empty dir":
        (root / ".git").mkdir()
    elif dot_git == "broken worktree file":
        (root / ".git").write_text(f"gitdir: {tmp_path}/gone/.git/worktrees/r\n")
    init_repo(root)
    update_config(root, codex={"binary": sys.executable, "args": [str(FAKE_AGENT)]}, runner=FAST_RUNNER,
                  git={"auto_commit": True})
    write_todo(root, ["first", "second"])
    eng = engine(root)
    assert eng.run_loop() is StopReason.TODO_DONE  # two runs
    said = [line for line in log_text(root).splitlines() if "auto-commit" in line]
    assert len(said) == 1 and f"car: auto-commit: {root} is not in a git work tree (" in said[0]
    assert said[0].endswith("nothing is committed: make it one (`git init`, or fix its .git), or set "
                            "git.auto_commit: false")
    assert eng.commit_problem and eng.commit_problem.startswith("auto-commit skipped in run 2 (not in a git work tree")
